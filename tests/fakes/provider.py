"""The fake phone behind the fake termux-* executables (Python 3 stdlib only).

The state lives in the folder named by FAKE_TERMUX_DIR:
  sms.db       Android's SMS provider as SQLite (table `sms`, `_id INTEGER PRIMARY KEY` without
               AUTOINCREMENT, so ids are reused after a delete like on Android), plus contacts
               and notifications tables
  modes.json   switches that make the phone misbehave (see MODES)
  calls.jsonl  one JSON line per termux-*/pm invocation: name, argv, stdin_len, time, pid
  lock         fcntl lock held around every access

Behaviour follows ../shared/TERMUX.md: termux-sms-list evaluates --message-selection and
--message-sort-order with real SQLite, pages with LIMIT/OFFSET, prints the page reversed
(newest last) and treats `-t failed`/`-t queued` as `all`; termux-sms-send trims stdin like
Java's String.trim(), exits 0 whatever happens and writes a sent (or failed) row.
This module must not import smsgw: it is the phone, not the gateway.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ENV_DIR = "FAKE_TERMUX_DIR"
API_PACKAGE = "com.termux.api"

INBOX, SENT, DRAFT, OUTBOX, FAILED, QUEUED = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {INBOX: "inbox", SENT: "sent", DRAFT: "draft", OUTBOX: "outbox", FAILED: "failed"}
LIST_TYPES = {"all": 0, "inbox": 1, "sent": 2, "draft": 3, "outbox": 4, "failed": 5, "queued": 6}
OLD_LIST_TYPES = ("all", "inbox", "sent", "draft", "outbox")

# Documented switches (values are JSON scalars; absent means off / default).
MODES = {
    "old_version": "termux-sms-list ignores --message-selection/--message-sort-order and "
                   "prints no `_id` nor `address`",
    "permission_error": "termux-sms-list and termux-sms-send print {\"error\": ...}; no row",
    "hang": "1: every termux-* command hangs (child `sleep` waited on); or a comma-separated "
            "list of command names that hang",
    "app_missing": "termux-* commands hang, `pm path com.termux.api` prints nothing, exit 1",
    "latency": "seconds slept by every termux-* call before answering",
    "radio_off": "sends end as failed rows (written as type 2, then updated to 5); "
                 "deviceinfo shows no network operator",
    "fail_next": "the next N sent rows end as failed",
    "fail_delay": "seconds between the sent row and its update to failed (background)",
    "no_row": "sends write no row at all (a stalled phone: outcome unknown)",
    "no_sim": "deviceinfo shows sim_state absent; sends fail",
    "no_operator": "deviceinfo shows an empty network operator; sends fail",
    "sim_slots": "number of SIM slots (default 2); `-s` outside them silently sends nothing",
    "notification_access": "0: termux-notification-list hangs",
    "clock": "ISO 8601 time of the phone's clock (naive means UTC); default: real time",
    "clock_offset": "seconds added to the phone's clock",
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS sms (
    _id INTEGER PRIMARY KEY, thread_id INTEGER, address TEXT, person INTEGER,
    date INTEGER, date_sent INTEGER DEFAULT 0, protocol INTEGER, read INTEGER DEFAULT 0,
    status INTEGER DEFAULT -1, type INTEGER, reply_path_present INTEGER, subject TEXT,
    body TEXT, service_center TEXT, locked INTEGER DEFAULT 0, sub_id INTEGER DEFAULT -1,
    error_code INTEGER DEFAULT 0, creator TEXT, seen INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS contacts (number TEXT, name TEXT);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY, package TEXT, title TEXT, content TEXT, tag TEXT, grp TEXT,
    when_ms INTEGER);
"""


def java_trim(text: str) -> str:
    """Java's String.trim(): strip every char <= U+0020 at both ends (and nothing else)."""
    return text.strip("".join(chr(c) for c in range(33)))


def _digits(number: str | None) -> str:
    return "".join(ch for ch in number or "" if ch.isdigit())


def parse_iso(text: str) -> datetime:
    """An ISO 8601 time (a trailing Z or no zone means UTC), for Python 3.10 too."""
    stamp = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def parse_value(text: str) -> Any:
    """A mode value from the command line: int, float, true/false, or the string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class Provider:
    """The fake phone's state in one folder; every access holds the folder's lock."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "sms.db"
        self.modes_path = self.root / "modes.json"
        self.calls_path = self.root / "calls.jsonl"
        self.lock_path = self.root / "lock"
        self._depth = 0

    # locking and storage -------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock (re-entrant within one Provider)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """A connection to the provider, committed on success, under the lock."""
        with self.locked():
            conn = sqlite3.connect(self.db_path)
            conn.row_factory = sqlite3.Row
            try:
                conn.executescript(SCHEMA)
                yield conn
                conn.commit()
            finally:
                conn.close()

    def modes(self) -> dict[str, Any]:
        try:
            return json.loads(self.modes_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def set_modes(self, changes: dict[str, Any], clear: bool = False) -> dict[str, Any]:
        """Merge `changes` into the modes (a None value removes the key)."""
        with self.locked():
            modes = {} if clear else self.modes()
            for key, value in changes.items():
                if value is None:
                    modes.pop(key, None)
                else:
                    modes[key] = value
            tmp = self.modes_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(modes, indent=1), encoding="utf-8")
            os.replace(tmp, self.modes_path)
            return modes

    def log_call(self, name: str, argv: list[str], stdin_len: int | None) -> None:
        line = json.dumps({"name": name, "argv": argv, "stdin_len": stdin_len,
                           "time": time.time(), "pid": os.getpid()})
        with self.locked(), open(self.calls_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def calls(self, name: str | None = None) -> list[dict[str, Any]]:
        with self.locked():
            try:
                lines = self.calls_path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                return []
        calls = [json.loads(line) for line in lines if line.strip()]
        return [c for c in calls if name is None or c["name"] == name]

    # the phone's clock ----------------------------------------------------------
    def now_ms(self) -> int:
        modes = self.modes()
        clock = modes.get("clock")
        base = parse_iso(str(clock)).timestamp() if clock else time.time()
        return int((base + float(modes.get("clock_offset", 0))) * 1000)

    # rows -----------------------------------------------------------------------
    def add_row(self, kind: int, address: str, body: str, date_ms: int | None = None,
                creator: str = "com.android.phone", read: int = 0) -> int:
        """Insert one row as Android would; returns its `_id`."""
        with self.db() as conn:
            return self._insert(conn, kind, address, body,
                                self.now_ms() if date_ms is None else date_ms, creator, read)

    def add_rows(self, rows: list[tuple[int, str, str, int | None]]) -> list[int]:
        """Insert many (type, address, body, date_ms or None) rows in one transaction."""
        with self.db() as conn:
            now = self.now_ms()
            return [self._insert(conn, kind, address, body, now if date is None else date,
                                 "com.android.phone", 0) for kind, address, body, date in rows]

    @staticmethod
    def _insert(conn: sqlite3.Connection, kind: int, address: str, body: str, date_ms: int,
                creator: str, read: int) -> int:
        found = conn.execute("SELECT thread_id FROM sms WHERE address = ? LIMIT 1",
                             (address,)).fetchone()
        if found is not None:
            thread = found[0]
        else:
            thread = conn.execute("SELECT COALESCE(MAX(thread_id), 0) + 1 FROM sms").fetchone()[0]
        cur = conn.execute(
            "INSERT INTO sms (thread_id, address, date, date_sent, read, status, type, body,"
            " creator, seen) VALUES (?, ?, ?, ?, ?, -1, ?, ?, ?, ?)",
            (thread, address, date_ms, date_ms if kind == INBOX else 0, read, kind, body,
             creator, read))
        return int(cur.lastrowid or 0)

    def set_type(self, row_id: int, kind: int, error_code: int = 0) -> None:
        with self.db() as conn:
            conn.execute("UPDATE sms SET type = ?, error_code = ? WHERE _id = ?",
                         (kind, error_code, row_id))

    def delete(self, row_id: int) -> bool:
        with self.db() as conn:
            return conn.execute("DELETE FROM sms WHERE _id = ?", (row_id,)).rowcount > 0

    def rows(self, kind: int | None = None) -> list[dict[str, Any]]:
        with self.db() as conn:
            sql = "SELECT * FROM sms" + ("" if kind is None else " WHERE type = ?")
            found = conn.execute(sql + " ORDER BY _id", () if kind is None else (kind,))
            return [dict(r) for r in found]

    def add_contact(self, number: str, name: str) -> None:
        with self.db() as conn:
            conn.execute("INSERT INTO contacts (number, name) VALUES (?, ?)", (number, name))

    def contact_name(self, conn: sqlite3.Connection, address: str | None) -> str | None:
        wanted = _digits(address)[-9:]
        if not wanted:
            return None
        for number, name in conn.execute("SELECT number, name FROM contacts"):
            if _digits(number)[-9:] == wanted:
                return str(name)
        return None

    def notify(self, package: str, title: str, content: str = "") -> int:
        with self.db() as conn:
            cur = conn.execute(
                "INSERT INTO notifications (package, title, content, tag, grp, when_ms)"
                " VALUES (?, ?, ?, '', '', ?)", (package, title, content, self.now_ms()))
            return int(cur.lastrowid or 0)


# output helpers ---------------------------------------------------------------------
def _print(text: str) -> None:
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()


def _print_json(data: Any) -> None:
    # Termux:API's JsonWriter indents with two spaces.
    _print(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _local(ms: int) -> str:
    # Java's SimpleDateFormat in the phone's zone, truncated to the second.
    return datetime.fromtimestamp(ms // 1000).strftime("%Y-%m-%d %H:%M:%S")


def _permission_error(*permissions: str) -> dict[str, str]:
    plural = "s" if len(permissions) > 1 else ""
    names = " ,".join(f"android.permission.{p}" for p in permissions)
    return {"error": f"Please grant the following permission{plural} to use this command: "
                     f"{names}"}


def _hang() -> int:
    # Like `am broadcast` waiting for an app that never answers.
    child = subprocess.Popen(["sleep", "3600"])
    child.wait()
    return 0


def _hangs(name: str, modes: dict[str, Any]) -> bool:
    hang = modes.get("hang")
    if hang is True or hang == 1 or (isinstance(hang, str) and name in hang.split(",")):
        return True
    if modes.get("app_missing") and name != "termux-wake-lock":
        return True
    return name == "termux-notification-list" and modes.get("notification_access", 1) in (0, False)


# commands ---------------------------------------------------------------------------
def sms_list(p: Provider, argv: list[str], modes: dict[str, Any]) -> int:
    old = bool(modes.get("old_version"))
    opts: dict[str, Any] = {"limit": 10, "offset": 0, "type": "all", "from": None,
                            "selection": None, "sort": None, "no_reverse": False,
                            "conversations": False, "verbose": 0}
    long_values = {"message-limit": "limit", "message-offset": "offset", "message-type": "type",
                   "message-address": "from", "message-selection": "selection",
                   "message-sort-order": "sort", "conversation-limit": None,
                   "conversation-offset": None, "conversation-selection": None,
                   "conversation-sort-order": None}
    long_flags = {"message-return-no-order-reverse": "no_reverse",
                  "conversation-list": "conversations", "quiet": None, "help": None,
                  "conversation-return-multiple-messages": None,
                  "conversation-return-nested-view": None,
                  "conversation-return-no-order-reverse": None}
    short_values = {"l": "limit", "o": "offset", "t": "type", "f": "from"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            if name in long_values:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        _print(f"termux-sms-list: option --{name} needs a value\n")
                        return 1
                    value = argv[i]
                key = long_values[name]
                # An old Termux:API app ignores the extras it does not know.
                if key and not (old and key in ("selection", "sort")):
                    opts[key] = value
            elif name in long_flags:
                key = long_flags[name]
                if key:
                    opts[key] = True
            else:
                _print(f"termux-sms-list: illegal option --{name}\n")
                return 1
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                ch = arg[j]
                if ch in short_values:
                    value = arg[j + 1:]
                    if not value:
                        i += 1
                        if i >= len(argv):
                            _print(f"termux-sms-list: option requires an argument -{ch}\n")
                            return 1
                        value = argv[i]
                    opts[short_values[ch]] = value
                    break
                if ch == "v":
                    opts["verbose"] += 1
                elif ch == "c":
                    opts["conversations"] = True
                elif ch not in "dnhq":
                    _print(f"termux-sms-list: illegal option -{ch}\n")
                    return 1
                j += 1
        else:
            _print("termux-sms-list: too many arguments\n")
            return 1
        i += 1
    if opts["type"] not in (OLD_LIST_TYPES if old else LIST_TYPES):
        supported = "|".join(OLD_LIST_TYPES if old else LIST_TYPES)
        _print(f"termux-sms-list: Unsupported type '{opts['type']}'. Use one of: {supported}\n")
        return 1
    try:
        limit, offset = int(opts["limit"]), int(opts["offset"])
    except ValueError:
        _print("termux-sms-list: limit and offset must be integers\n")
        return 1
    if opts["verbose"]:
        # The real one prints its log lines on stdout, before the JSON.
        _print(f"[DEBUG] termux-api SmsInbox: limit={limit} offset={offset}\n")
    if modes.get("permission_error"):
        _print_json(_permission_error("READ_SMS", "READ_CONTACTS"))
        return 0
    if opts["conversations"]:
        _print_json([])  # conversation mode is not modelled
        return 0

    where: list[str] = []
    params: list[Any] = []
    kind = LIST_TYPES[opts["type"]] if opts["from"] is None else 0
    if kind in (INBOX, SENT, DRAFT, OUTBOX):  # failed/queued have no URI: all rows (the bug)
        where.append(f"type = {kind}")
    if opts["selection"]:
        where.append(f"({opts['selection']})")
    elif opts["from"]:
        where.append("address LIKE ?")
        params.append(opts["from"])
    sql = "SELECT * FROM sms"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {opts['sort'] or 'date DESC'} LIMIT {limit} OFFSET {offset}"
    try:
        with p.db() as conn:
            found = conn.execute(sql, params).fetchall()
            items = [_list_item(p, conn, row, old) for row in found]
    except sqlite3.Error as exc:
        # The app fails inside the query and answers nothing.
        sys.stderr.write(f"fake termux-api: {exc}\n")
        return 0
    if not opts["no_reverse"]:
        items.reverse()
    _print_json(items)
    return 0


def _list_item(p: Provider, conn: sqlite3.Connection, row: sqlite3.Row,
               old: bool) -> dict[str, Any]:
    kind = TYPE_NAMES.get(row["type"], "")
    item: dict[str, Any] = {"threadid": row["thread_id"], "type": kind,
                            "read": bool(row["read"])}
    name = p.contact_name(conn, row["address"])
    if name is not None:
        item["sender"] = name if kind == "inbox" else "You"
    if not old:
        item["address"] = row["address"]
    item["number"] = row["address"]
    item["received"] = _local(row["date"])
    item["body"] = row["body"]
    if not old:
        item["_id"] = row["_id"]
    return item


def sms_send(p: Provider, argv: list[str], text: str, modes: dict[str, Any]) -> int:
    recipients: list[str] = []
    slot: int | None = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest = argv[i + 1:]
            break
        if not arg.startswith("-") or arg == "-":
            rest = argv[i:]
            break
        ch, value = arg[1], arg[2:]
        if ch == "h":
            _print("Usage: termux-sms-send -n number[,number2,number3,...] [-s slot] [text]\n")
            return 0
        if ch not in "ns":
            _print(f"termux-sms-send: illegal option -{ch}\n")
            return 1
        if not value:
            i += 1
            if i >= len(argv):
                _print(f"termux-sms-send: option requires an argument -{ch}\n")
                return 1
            value = argv[i]
        if ch == "n":
            recipients = value.split(",")
        else:
            try:
                slot = int(value)
            except ValueError:
                slot = -2  # `am` refuses it; nothing is sent
        i += 1
    if not recipients:
        _print("termux-sms-send: no recipient number given\n")
        return 1
    if rest:
        text = " ".join(rest) + "\n"  # echo "$@" | termux-api SmsSend
    if modes.get("permission_error"):
        _print_json(_permission_error("SEND_SMS"))
        return 0
    body = java_trim(text)
    if not body or modes.get("no_row"):
        return 0
    if slot is not None and not 0 <= slot < int(modes.get("sim_slots", 2)):
        return 0  # "silently fails if slot number is invalid"
    flips: list[int] = []
    with p.locked():
        modes = p.modes()
        fail_next = int(modes.get("fail_next", 0))
        for number in recipients:
            failing = bool(modes.get("radio_off") or modes.get("no_sim")
                           or modes.get("no_operator") or fail_next > 0)
            if fail_next > 0:
                fail_next -= 1
            # Android writes the row as sent, then updates it to failed.
            row_id = p.add_row(SENT, number, body, creator=API_PACKAGE, read=1)
            if failing:
                flips.append(row_id)
        if "fail_next" in modes:
            p.set_modes({"fail_next": fail_next or None})
    delay = float(modes.get("fail_delay", 0))
    for row_id in flips:
        if delay > 0:
            subprocess.Popen([sys.executable, str(Path(__file__).parent / "bin" / "fake-termux"),
                              "_flip", str(row_id), str(delay)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True,
                             env=dict(os.environ, **{ENV_DIR: str(p.root)}))
        else:
            p.set_type(row_id, FAILED, error_code=1)
    return 0


def deviceinfo(modes: dict[str, Any]) -> dict[str, Any]:
    no_sim = bool(modes.get("no_sim"))
    # With the radio off (airplane mode) the phone is registered on no network.
    no_operator = no_sim or bool(modes.get("no_operator") or modes.get("radio_off"))
    return {
        "data_enabled": "true",
        "data_activity": "none",
        "data_state": "disconnected" if no_operator else "connected",
        "device_id": None,
        "device_software_version": "01",
        "phone_count": int(modes.get("sim_slots", 2)),
        "phone_type": "gsm",
        "network_operator": "" if no_operator else "63902",
        "network_operator_name": "" if no_operator else "Safaricom",
        "network_country_iso": "" if no_operator else "ke",
        "network_type": "unknown" if no_operator else "lte",
        "network_roaming": False,
        "sim_country_iso": "" if no_sim else "ke",
        "sim_operator": "" if no_sim else "63902",
        "sim_operator_name": "" if no_sim else "Safaricom",
        "sim_serial_number": None,
        "sim_subscriber_id": None,
        "sim_state": "absent" if no_sim else "ready",
    }


def notification_list(p: Provider) -> list[dict[str, Any]]:
    with p.db() as conn:
        found = conn.execute("SELECT * FROM notifications ORDER BY id").fetchall()
    return [{"id": n["id"], "tag": n["tag"], "key": f"0|{n['package']}|{n['id']}|null|10123",
             "group": n["grp"], "packageName": n["package"], "title": n["title"],
             "content": n["content"], "when": _local(n["when_ms"])} for n in found]


def pm(argv: list[str], modes: dict[str, Any]) -> int:
    if len(argv) == 2 and argv[0] == "path":
        if argv[1] == "com.termux" or (argv[1] == API_PACKAGE and not modes.get("app_missing")):
            _print(f"package:/data/app/~~fake==/{argv[1]}-fake==/base.apk\n")
            return 0
        return 1
    sys.stderr.write("fake pm: only `pm path PACKAGE` is modelled\n")
    return 1


def control(p: Provider, argv: list[str]) -> int:
    """`fake-termux`: drive the fake phone from a shell."""
    usage = ("usage: fake-termux mode [--clear] [KEY=VALUE ...] | receive ADDRESS BODY [--at ISO]"
             " | add TYPE ADDRESS BODY [--at ISO] | rows [TYPE] | calls [--count] [NAME]"
             " | delete ID | notify PACKAGE TITLE [CONTENT] | contact NUMBER NAME\n")
    if not argv:
        sys.stderr.write(usage)
        return 2
    cmd, args = argv[0], argv[1:]
    at: int | None = None
    if "--at" in args:
        k = args.index("--at")
        at = int(parse_iso(args[k + 1]).timestamp() * 1000)
        del args[k:k + 2]
    if cmd == "mode":
        clear = "--clear" in args
        changes = {}
        for item in args:
            if item == "--clear":
                continue
            key, _, value = item.partition("=")
            changes[key] = parse_value(value) if value else None
        _print_json(p.set_modes(changes, clear=clear))
    elif cmd == "receive" and len(args) == 2:
        _print(f"{p.add_row(INBOX, args[0], args[1], at)}\n")
    elif cmd == "add" and len(args) == 3:
        kind = int(args[0]) if args[0].isdigit() else LIST_TYPES[args[0]]
        _print(f"{p.add_row(kind, args[1], args[2], at, creator=API_PACKAGE, read=1)}\n")
    elif cmd == "rows":
        kind = None if not args else (int(args[0]) if args[0].isdigit() else LIST_TYPES[args[0]])
        _print_json(p.rows(kind))
    elif cmd == "calls":
        count = "--count" in args
        names = [a for a in args if a != "--count"]
        calls = p.calls(names[0] if names else None)
        if count:
            _print(f"{len(calls)}\n")
        else:
            _print("".join(json.dumps(c) + "\n" for c in calls))
    elif cmd == "delete" and len(args) == 1:
        return 0 if p.delete(int(args[0])) else 1
    elif cmd == "notify" and len(args) in (2, 3):
        _print(f"{p.notify(*args)}\n")
    elif cmd == "contact" and len(args) == 2:
        p.add_contact(args[0], args[1])
    elif cmd == "_flip" and len(args) == 2:
        time.sleep(float(args[1]))
        p.set_type(int(args[0]), FAILED, error_code=1)
    else:
        sys.stderr.write(usage)
        return 2
    return 0


def android_settings(argv: list[str], modes: dict[str, Any]) -> int:
    """`settings get global NAME`: the value from mode `setting_NAME`, else "null" (unset)."""
    if len(argv) != 3 or argv[0] != "get":
        sys.stderr.write("usage: settings get NAMESPACE NAME\n")
        return 1
    value = modes.get(f"setting_{argv[2]}")
    _print(f"{'null' if value is None else value}\n")
    return 0


def main(name: str, argv: list[str]) -> int:
    """Run the fake command `name` (the executable's basename) with `argv`."""
    root = os.environ.get(ENV_DIR)
    if not root:
        sys.stderr.write(f"{name}: {ENV_DIR} is not set (fake termux-api)\n")
        return 2
    p = Provider(root)
    if name == "fake-termux":
        return control(p, argv)
    text = ""
    stdin_len = None
    if name == "termux-sms-send" and not sys.stdin.isatty():
        text = sys.stdin.buffer.read().decode("utf-8", "replace")
        stdin_len = len(text)
    p.log_call(name, argv, stdin_len)
    modes = p.modes()
    if name.startswith("termux-"):
        if _hangs(name, modes):
            return _hang()
        if modes.get("latency"):
            time.sleep(float(modes["latency"]))
    if name == "termux-sms-list":
        return sms_list(p, argv, modes)
    if name == "termux-sms-send":
        return sms_send(p, argv, text, modes)
    if name == "termux-telephony-deviceinfo":
        _print_json(deviceinfo(modes))
        return 0
    if name == "termux-notification-list":
        _print_json(notification_list(p))
        return 0
    if name == "termux-wake-lock":
        return 0
    if name == "pm":
        return pm(argv, modes)
    if name == "settings":
        return android_settings(argv, modes)
    sys.stderr.write(f"fake termux: unknown command {name}\n")
    return 127
