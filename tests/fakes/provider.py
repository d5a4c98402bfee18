"""The fake phone behind the fake termux-* executables (Python 3 stdlib only).

The state lives in the folder named by FAKE_TERMUX_DIR:
  sms.db       Android's SMS provider as SQLite (table `sms`, `_id INTEGER PRIMARY KEY` without
               AUTOINCREMENT, so ids are reused after a delete like on Android), plus contacts
               and notifications tables
  modes.json   switches that make the phone misbehave (see MODES)
  calls.jsonl  one JSON line per termux-*/pm invocation: name, argv, stdin_len, time, pid
  lock         fcntl lock held around every access

Each command is modelled in two layers, because a phone can pair any version of each:
  the script   (termux-api package, mode `script_version`): how the arguments are parsed and
               what an argument error prints and exits with; termux-sms-list 0.59 is a bash
               script with `--opt=value` long options, 0.58 a dash/getopts one without them;
  the app      (Termux:API, mode `app_version`): what the broadcast does; before 0.51 it
               ignores --message-selection/--message-sort-order, before 0.50 it prints no
               `_id` and `-t inbox` lists every row, before 0.51 no `address`.
Between the two sits `am broadcast`: an `--ei` value Java's Integer.decode refuses, or a word
split where the script pastes a value unquoted, makes am fail, nothing connects back, and the
command hangs. The facts and their sources are in README.md here.
This module must not import smsgw: it is the phone, not the gateway.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import struct
import subprocess
import sys
import time
import unicodedata
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
    "script_version": "termux-api package (the scripts): 0.59 (default: bash, long options "
                      "only as --opt=value, argument errors exit 64) or 0.58 (dash getopts: "
                      "no long options, `illegal option --`, exit 1; no -t failed/queued, no -v)",
    "app_version": "Termux:API app: 0.53 (default), 0.52 (termux-battery-status prints "
                   "nulls and crashes without a current), 0.51 (selection, sort order, "
                   "`address`; the battery temperature a locale string), "
                   "0.50 (`_id`, but selection ignored), 0.49 (no `_id`, `-t inbox` = all)",
    "old_version": "alias for the oldest pair: script_version=0.58 app_version=0.49 (an explicit "
                   "script_version/app_version wins)",
    "permission_error": "1: every permission a command needs is missing; or a comma-separated "
                        "list of the missing ones (READ_SMS,SEND_SMS,...): the app prints "
                        "{\"error\": ...} (indented), exit 0, reads no stdin, writes no row",
    "hang": "1: every termux-* command hangs (child `sleep` waited on); or a comma-separated "
            "list of command names that hang",
    "app_missing": "termux-* commands hang, `pm path com.termux.api` prints nothing, exit 1",
    "latency": "seconds slept by every termux-* call before answering",
    "radio_off": "sends end as failed rows (written as type 2, then updated to 5); "
                 "deviceinfo shows no network operator",
    "fail_next": "the next N sent rows end as failed",
    "fail_delay": "seconds between the sent row and its update to failed (background)",
    "no_row": "sends write no row at all (a stalled phone: outcome unknown)",
    "no_sim": "deviceinfo shows sim_state absent; sends fail (with -s SLOT: nothing is sent)",
    "no_operator": "deviceinfo shows an empty network operator; sends fail",
    "sim_slots": "number of SIM slots (default 2); `-s` outside them silently sends nothing",
    "notification_access": "0: termux-notification-list hangs",
    "clock": "ISO 8601 time of the phone's clock (naive means UTC); default: real time",
    "clock_offset": "seconds added to the phone's clock",
    "battery": "termux-battery-status: the battery's percentage (default 85)",
    "plugged": "termux-battery-status: PLUGGED_AC (default), PLUGGED_USB, PLUGGED_WIRELESS, "
               "PLUGGED_DOCK (PLUGGED_8 before app 0.51), UNPLUGGED, ...; its `status` follows "
               "(CHARGING, FULL at 100, or DISCHARGING)",
    "battery_status": "termux-battery-status: this `status` instead (NOT_CHARGING: plugged in "
                      "at a charge limit or too hot; UNKNOWN)",
    "temperature": "termux-battery-status: the battery's temperature in °C (default 29.5)",
    "locale_decimal": "the decimal separator of the phone's locale (default \".\"; \",\" for "
                      "de, fr, ru...; \"\u066b\" for arabic): app 0.51 prints `temperature` "
                      "as a string in the locale (with locale_digits' digits)",
    "battery_unsupported": "termux-battery-status: comma-separated BatteryManager properties "
                           "the phone does not give (current, current_average, percentage, "
                           "charge_counter, energy; default energy): app 0.53 leaves them "
                           "out, 0.51/0.52 print null and crash on a missing current (nothing "
                           "printed, exit 0, a \"Termux:API Error\" notification), before "
                           "0.51 current is Long.MIN_VALUE",
    "battery_broadcast": "0: Android gives no battery broadcast: app 0.53 prints its "
                         "defaults (plugged PLUGGED_-1, health -1, status UNKNOWN, level and "
                         "scale -1, temperature -214748364.8); older apps crash (nothing "
                         "printed, exit 0; 0.51+ post an error notification)",
    "sim_state": "deviceinfo: this `sim_state` (unknown, pin_required, puk_required, "
                 "network_locked, or a number: 6 not ready, 7, 8, 9)",
    "network_type": "deviceinfo: this `network_type` (the mobile data network's: hdspa, "
                    "umts, nr, ...)",
    "mobile_data": "0: mobile data off: deviceinfo shows network_type unknown, data_state "
                   "disconnected, data_enabled false; SMS still work",
    "locale_digits": "the phone's locale prints its own digits in `received` (SimpleDateFormat "
                     "with the default locale): arabic (٠١٢...), persian (۰۱۲...), devanagari "
                     "(०१२..., Nepali, Marathi), bengali (০১২...); default ASCII",
}

# The digit zero of each locale numbering system `locale_digits` can name.
LOCALE_DIGITS = {"ascii": "0", "latn": "0", "arabic": "\u0660", "arab": "\u0660",
                 "persian": "\u06f0", "arabext": "\u06f0", "devanagari": "\u0966",
                 "deva": "\u0966", "bengali": "\u09e6", "beng": "\u09e6"}

SCRIPT_VERSIONS = ("0.58", "0.59")
APP_VERSIONS = ("0.49", "0.50", "0.51", "0.52", "0.53")
DEFAULT_SCRIPT, DEFAULT_APP = (0, 59), (0, 53)
OLDEST_SCRIPT, OLDEST_APP = (0, 58), (0, 49)

# The permissions each broadcast checks first (TermuxApiReceiver), in the app's order.
PERMISSIONS = {
    "termux-sms-list": ("READ_SMS", "READ_CONTACTS"),
    "termux-sms-send": ("READ_PHONE_STATE", "SEND_SMS"),  # app 0.51+; before: SEND_SMS only
    "termux-telephony-deviceinfo": ("READ_PHONE_STATE",),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS sms (
    _id INTEGER PRIMARY KEY, thread_id INTEGER, address TEXT, person INTEGER,
    date INTEGER, date_sent INTEGER DEFAULT 0, protocol INTEGER, read INTEGER DEFAULT 0,
    status INTEGER DEFAULT -1, type INTEGER, reply_path_present INTEGER, subject TEXT,
    body TEXT, service_center TEXT, locked INTEGER DEFAULT 0, sub_id INTEGER DEFAULT -1,
    error_code INTEGER DEFAULT 0, creator TEXT, seen INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS contacts (number TEXT, name TEXT);
CREATE TABLE IF NOT EXISTS printed (row_id INTEGER PRIMARY KEY, how TEXT);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY, package TEXT, title TEXT, content TEXT, tag TEXT, grp TEXT,
    when_ms INTEGER);
CREATE TABLE IF NOT EXISTS screens (id INTEGER PRIMARY KEY, name TEXT, extra TEXT,
    when_ms INTEGER);
"""


def java_trim(text: str) -> str:
    """Java's String.trim(): strip every char <= U+0020 at both ends (and nothing else)."""
    return text.strip("".join(chr(c) for c in range(33)))


def stored_text(text: str) -> str | bytes:
    """A text as the fake's SQLite can hold it: a lone surrogate (half an emoji; a Java string
    can hold one) cannot be UTF-8, so such a text is kept as its surrogatepass bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
    return text


def loaded_text(value: Any) -> Any:
    """The text stored_text() kept."""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


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

    def log_call(self, name: str, argv: list[str], stdin_len: int | None,
                 start: float | None = None) -> None:
        line = json.dumps({"name": name, "argv": argv, "stdin_len": stdin_len,
                           "time": time.time() if start is None else start,
                           "pid": os.getpid()})
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
            (thread, address, date_ms, date_ms if kind == INBOX else 0, read, kind,
             stored_text(body), creator, read))
        return int(cur.lastrowid or 0)

    def set_printed(self, row_id: int, how: dict[str, Any]) -> None:
        """Make termux-sms-list print row `row_id` oddly: `how` has `drop` (fields left out),
        `fields` (fields set to these JSON values) and/or `entry` (printed instead of the
        whole object)."""
        with self.db() as conn:
            conn.execute("INSERT OR REPLACE INTO printed (row_id, how) VALUES (?, ?)",
                         (row_id, json.dumps(how)))

    def set_type(self, row_id: int, kind: int, error_code: int = 0) -> None:
        with self.db() as conn:
            conn.execute("UPDATE sms SET type = ?, error_code = ? WHERE _id = ?",
                         (kind, error_code, row_id))

    def delete(self, row_id: int) -> bool:
        with self.db() as conn:
            conn.execute("DELETE FROM printed WHERE row_id = ?", (row_id,))
            return conn.execute("DELETE FROM sms WHERE _id = ?", (row_id,)).rowcount > 0

    def rows(self, kind: int | None = None) -> list[dict[str, Any]]:
        with self.db() as conn:
            sql = "SELECT * FROM sms" + ("" if kind is None else " WHERE type = ?")
            found = conn.execute(sql + " ORDER BY _id", () if kind is None else (kind,))
            return [{**dict(r), "body": loaded_text(r["body"])} for r in found]

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

    def open_screen(self, name: str, extra: str = "") -> None:
        """The app started an activity on the phone's screen (e.g. the permission dialog)."""
        with self.db() as conn:
            conn.execute("INSERT INTO screens (name, extra, when_ms) VALUES (?, ?, ?)",
                         (name, extra, self.now_ms()))

    def screens(self) -> list[dict[str, Any]]:
        """The screens the app opened, oldest first: `name`, `extra`, `when_ms`."""
        with self.db() as conn:
            return [dict(r) for r in conn.execute(
                "SELECT name, extra, when_ms FROM screens ORDER BY id")]


# output helpers ---------------------------------------------------------------------
def _print(text: str) -> None:
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()


def _error(text: str) -> None:
    sys.stderr.buffer.write(text.encode("utf-8"))
    sys.stderr.buffer.flush()


_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _print_json(data: Any) -> None:
    # Termux:API's JsonWriter indents with two spaces and the app adds a newline. A lone
    # surrogate (half an emoji) is printed as its \uXXXX escape: it has no UTF-8 form.
    text = json.dumps(data, indent=2, ensure_ascii=False)
    _print(_LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")


def _local(ms: int, digits: Any = None) -> str:
    # Java's SimpleDateFormat in the phone's zone, truncated to the second, with the digits of
    # the phone's locale (mode locale_digits).
    text = datetime.fromtimestamp(ms // 1000).strftime("%Y-%m-%d %H:%M:%S")
    if digits in (None, "", 0, False):
        return text
    zero = LOCALE_DIGITS.get(str(digits).lower())
    if zero is None:
        raise SystemExit(f"fake termux: unknown locale_digits {digits!r} "
                         f"(one of {', '.join(LOCALE_DIGITS)})")
    return text.translate({ord("0") + k: ord(zero) + k for k in range(10)})


def _hang() -> int:
    # Like termux-api waiting in accept() for an app that never connects back.
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


# versions -----------------------------------------------------------------------------
def parse_version(value: Any) -> tuple[int, ...]:
    """`0.50.1`, "0.59" or 0.5 (a float from the command line: two decimals) as a tuple."""
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    try:
        parts = tuple(int(part) for part in text.split("."))
    except ValueError:
        raise SystemExit(f"fake termux: not a version: {value!r}") from None
    return parts


def versions(modes: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(script version, app version) of the fake phone."""
    old = bool(modes.get("old_version"))
    script = modes.get("script_version")
    app = modes.get("app_version")
    return (parse_version(script) if script is not None else OLDEST_SCRIPT if old
            else DEFAULT_SCRIPT,
            parse_version(app) if app is not None else OLDEST_APP if old else DEFAULT_APP)


def missing_permissions(name: str, modes: dict[str, Any],
                        app: tuple[int, ...] = DEFAULT_APP) -> list[str]:
    """The permissions `name`'s broadcast needs that mode `permission_error` takes away."""
    needed = PERMISSIONS.get(name, ())
    if name == "termux-sms-send" and app < (0, 51):
        needed = ("SEND_SMS",)
    denied = modes.get("permission_error")
    if denied in (None, False, 0, "", "0"):
        return []
    if denied is True or denied == 1 or denied == "1":
        return list(needed)
    names = {item.strip().rsplit(".", 1)[-1] for item in str(denied).split(",")}
    return [n for n in needed if n in names]


def _permission_error(permissions: list[str]) -> dict[str, str]:
    # TermuxApiPermissionActivity: one entry per missing permission, joined by " ,".
    plural = "s" if len(permissions) > 1 else ""
    names = " ,".join(f"android.permission.{p}" for p in permissions)
    return {"error": f"Please grant the following permission{plural} to use this command: "
                     f"{names}"}


# the shell and `am` between a script and the app --------------------------------------------
def getopts(argv: list[str], optstring: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    """POSIX `getopts` in silent mode (`optstring` starts with ":"), as bash and dash run it.

    Returns the (option, value) events in order and the arguments left after the options:
    an unknown option is ("?", char), a missing value (":", char). Options end at `--`
    (consumed), `-` or the first word not starting with "-".
    """
    events: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if len(arg) < 2 or arg[0] != "-":
            break
        j = 1
        while j < len(arg):
            ch = arg[j]
            k = optstring.find(ch, 1)
            if ch == ":" or k < 0:
                events.append(("?", ch))
                j += 1
                continue
            if optstring[k + 1:k + 2] == ":":
                if j + 1 < len(arg):
                    events.append((ch, arg[j + 1:]))
                elif i + 1 < len(argv):
                    i += 1
                    events.append((ch, argv[i]))
                else:
                    events.append((":", ch))
                break
            events.append((ch, None))
            j += 1
        i += 1
    return events, argv[i:]


def java_decode(text: str) -> int | None:
    """Java's Integer.decode (what `am` applies to an `--ei` value), or None if it throws."""
    sign, rest = (-1, text[1:]) if text[:1] == "-" else (1, text[1:] if text[:1] == "+" else text)
    if rest[:2] in ("0x", "0X"):
        radix, digits = 16, rest[2:]
    elif rest[:1] == "#":
        radix, digits = 16, rest[1:]
    elif rest[:1] == "0" and len(rest) > 1:
        radix, digits = 8, rest[1:]
    else:
        radix, digits = 10, rest
    if not digits:
        return None
    value = 0
    for ch in digits:  # Character.digit: any Unicode decimal digit, Latin letters for hex
        digit = (unicodedata.decimal(ch, -1) if radix != 16 or not ch.isascii()
                 or not ch.isalpha() else int(ch, 16) if ch in "abcdefABCDEF" else -1)
        if not 0 <= digit < radix:
            return None
        value = value * radix + digit
    value *= sign
    return value if -2**31 <= value < 2**31 else None


def _am_fails(reason: str) -> None:
    """`am broadcast` rejects its arguments: it complains on stderr, nothing connects back,
    and termux-api waits for ever."""
    _error(f"Exception occurred while executing 'broadcast':\n{reason}\n")


def _int_extra(words: list[str], name: str) -> int | str:
    """The int `am` makes of the words a script put after `--ei NAME`, or why it fails."""
    if len(words) != 1:
        return f"java.lang.IllegalArgumentException: bad value for --ei {name}: {words!r}"
    value = java_decode(words[0])
    if value is None:
        return f'java.lang.NumberFormatException: For input string: "{words[0]}"'
    return value


def dash_echo(args: list[str]) -> str:
    """What `echo "$@"` prints under dash (Termux's sh): a first `-n` drops the newline,
    backslash escapes are interpreted and `\\c` stops everything."""
    newline = True
    if args and args[0] == "-n":
        newline, args = False, args[1:]
    text = " ".join(args)
    escapes = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
               "\\": "\\"}
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "c":
                return "".join(out)
            if nxt in escapes:
                out.append(escapes[nxt])
                i += 2
                continue
            if nxt == "0":
                j = i + 2
                while j < len(text) and j < i + 5 and text[j] in "01234567":
                    j += 1
                out.append(chr(int(text[i + 2:j] or "0", 8) & 0xFF))
                i = j
                continue
        out.append(ch)
        i += 1
    return "".join(out) + ("\n" if newline else "")


class Call:
    """One invocation: logged once (before any side effect), and its way to the app."""

    def __init__(self, p: Provider, name: str, argv: list[str]) -> None:
        self.p, self.name, self.argv = p, name, argv
        self.start = time.time()
        self.logged = False

    def log(self, stdin_len: int | None = None) -> None:
        if not self.logged:
            self.logged = True
            self.p.log_call(self.name, self.argv, stdin_len, self.start)

    def broadcast(self, modes: dict[str, Any], am_error: str | None = None) -> None:
        """termux-api runs `am broadcast` and waits for the app: hang (mode, or `am`
        refusing its arguments) or wait the mode's latency."""
        if am_error is not None or _hangs(self.name, modes):
            self.log()
            if am_error is not None:
                _am_fails(am_error)
            _hang()
            raise SystemExit(0)
        if modes.get("latency"):
            time.sleep(float(modes["latency"]))


# termux-sms-list ----------------------------------------------------------------------------
LIST_NAME = "termux-sms-list"
LOG_LEVEL_ENV = "TERMUX_API__LOG_LEVEL"
HELP_059 = """termux-sms-list command lists SMS conversations and messages.

Usage:
    termux-sms-list [command_options]

Available command_options:
    [ -h | --help ]  [ -q | --quiet ]  [ -v | -vv ... ]  [ -c | --conversation-list ]
    [ --conversation-limit=<limit> ]  [ --conversation-offset=<offset> ]
    [ --conversation-return-multiple-messages ]  [ --conversation-return-nested-view ]
    [ --conversation-return-no-order-reverse ]  [ --conversation-selection=<selection> ]
    [ --conversation-sort-order=<order> ]  [ -f address | --message-address=<address> ]
    [ -l limit | --message-limit=<limit> ]  [ -o offset | --message-offset=<offset> ]
    [ --message-return-no-order-reverse ]  [ --message-selection=<selection> ]
    [ --message-sort-order=<order> ]  [ -t type | --message-type=<type> ]
    (fake termux-api: the real help is longer)
"""
HELP_058 = """Usage: termux-sms-list [-d] [-l limit] [-n] [-o offset] [-t type] [-c] [-f number]
List SMS messages.
  -l limit   limit in retrieved sms list (default: 10)
  -o offset  offset in sms list (default: 0)
  -t type    the type of messages to list (default: all):
             all|inbox|sent|draft|outbox
  -c         conversation list (unique item per conversation)
  -f number  the number for locate messages
  -n         (obsolete) show phone numbers
  -d         (obsolete) show dates when messages were created
"""
# Long options of the 0.59 script: flags, and options that take `=value`.
LONG_FLAGS_059 = {"quiet": None, "conversation-list": "conversation-list",
                  "conversation-return-multiple-messages": None,
                  "conversation-return-nested-view": None,
                  "conversation-return-no-order-reverse": None,
                  "message-return-no-order-reverse": "message-return-no-order-reverse"}
LONG_VALUES_059 = {"conversation-limit": None, "conversation-offset": None,
                   "conversation-selection": None, "conversation-sort-order": None,
                   "message-address": "f", "message-limit": "l", "message-offset": "o",
                   "message-selection": "message-selection",
                   "message-sort-order": "message-sort-order", "message-type": "t"}


def _list_script_059(argv: list[str]) -> tuple[dict[str, Any], int] | int:
    """The bash script of package 0.59: the extras for the app and the log level, or the
    exit status of an argument error (already printed)."""
    level_text = os.environ.get(LOG_LEVEL_ENV, "")
    level = int(level_text) if level_text.isdigit() and int(level_text) <= 5 else 1
    values: dict[str, Any] = {"l": "10", "o": "0", "t": "all"}

    def usage_error(text: str) -> int:
        _error(f"{LIST_NAME}: {text}\n")
        _print(HELP_059)
        return 64

    events, rest = getopts(argv, ":hqvcdf:l:no:t:-:")
    for opt, arg in events:
        if opt == "-":
            assert arg is not None
            name, eq, value = arg.partition("=")
            if arg == "help":
                _print(HELP_059)
                return 0
            if arg in LONG_FLAGS_059:
                if arg == "quiet":
                    level = 0
                elif LONG_FLAGS_059[arg]:
                    values[LONG_FLAGS_059[arg]] = True
            elif name in LONG_VALUES_059 and not (eq and value):
                _error(f"{LIST_NAME}: No argument set for arg option '--{name}'.\n")
                return 64
            elif name in LONG_VALUES_059:
                key = LONG_VALUES_059[name]
                if key:
                    values[key] = value
            else:
                return usage_error(f"Unknown option: '--{arg}'.")
        elif opt == "h":
            _print(HELP_059)
            return 0
        elif opt == "q":
            level = 0
        elif opt == "v":
            if level >= 5:
                _error(f"{LIST_NAME}: Invalid option, max log level is 5.\n")
                return 64
            level += 1
        elif opt == "c":
            values["conversation-list"] = True
        elif opt in "flot" and arg is not None:
            values[opt] = arg
        elif opt == ":":
            return usage_error(f"No argument passed for arg option '-{arg}'.")
        elif opt == "?":
            return usage_error(f"Unknown option: '-{arg}'.")
        # -d and -n: obsolete extras the app no longer reads
    if rest:
        # The script calls a function it never defined.
        _error(f"/data/data/com.termux/files/usr/bin/{LIST_NAME}: line 377: "
               "logger__log_error: command not found\n")
        return 64
    kind = values["t"]
    if kind not in LIST_TYPES:
        _error(f"{LIST_NAME}: Unsupported message type '{kind}'. It must one of following: "
               f"{'|'.join(LIST_TYPES)}\n")
        return 1
    extras: dict[str, Any] = {"limit": [values["l"]], "offset": [values["o"]],
                              "type": [str(LIST_TYPES[kind])]}
    for key, extra in (("message-selection", "message-selection"), ("f", "from"),
                       ("message-sort-order", "message-sort-order")):
        if values.get(key):
            extras[extra] = values[key]
    for flag in ("conversation-list", "message-return-no-order-reverse"):
        if values.get(flag):
            extras[flag] = True
    return extras, level


def _list_script_058(argv: list[str]) -> tuple[dict[str, Any], int] | int:
    """The dash script of package 0.58 (getopts, no long options, errors on stdout, exit 1)."""
    values: dict[str, Any] = {"l": "10", "o": "0", "t": "all"}
    conversation = False
    events, rest = getopts(argv, ":hdl:t:f:cno:")
    for opt, arg in events:
        if opt == "h":
            _print(HELP_058)
            return 0
        if opt in "?:":
            # `?)` in the script's case also catches getopts' ":" (a missing value).
            _print(f"{LIST_NAME}: illegal option -{arg}\n")
            return 1
        if opt == "c":
            conversation = True
        elif opt in "lotf" and arg is not None:
            values[opt] = arg
    if rest:
        _print(f"{LIST_NAME}: too many arguments\n")
        return 1
    kind = values["t"]
    if kind not in OLD_LIST_TYPES:
        _print(f"{LIST_NAME}: Unsupported type '{kind}'. Use one of: "
               f"{'|'.join(OLD_LIST_TYPES)}\n")
        return 1
    # PARAMS is pasted unquoted: every value is split into words.
    extras: dict[str, Any] = {"offset": values["o"].split(), "limit": values["l"].split(),
                              "type": [str(LIST_TYPES[kind])]}
    if "f" in values:
        words = values["f"].split()
        extras["from"] = words[0] if len(words) == 1 else words
    if conversation:
        extras["conversation-list"] = True
    return extras, 1


def sms_list(p: Provider, call: Call, argv: list[str], modes: dict[str, Any]) -> int:
    script, app = versions(modes)
    call.log()
    parsed = (_list_script_059 if script >= (0, 59) else _list_script_058)(argv)
    if isinstance(parsed, int):
        return parsed
    extras, level = parsed
    if level >= 2:
        # The 0.59 script's log lines go to stdout, around the JSON.
        args: list[str] = []
        for key, value in extras.items():
            if isinstance(value, list):
                args += ["--ei", key, *value]
            else:
                args += ["--ez", key, "true"] if value is True else ["--es", key, str(value)]
        words = " ".join(f"`{w}`" for w in args)
        _print(f"{LIST_NAME}: Running command\n{LIST_NAME}: termux-api SmsInbox {words}\n")
    # `am` turns the words into extras.
    am_error = None
    for key in ("limit", "offset", "type"):
        value = _int_extra(extras[key], key)
        if isinstance(value, str):
            am_error = am_error or value
        else:
            extras[key] = value
    if isinstance(extras.get("from"), list):
        am_error = am_error or f"java.lang.IllegalArgumentException: bad --es from {extras['from']}"
    call.broadcast(modes, am_error)
    status = sms_inbox_app(p, extras, modes, app)
    if level >= 2:
        _print(f"{LIST_NAME}: Command successful\n")
    return status


def sms_inbox_app(p: Provider, extras: dict[str, Any], modes: dict[str, Any],
                  app: tuple[int, ...]) -> int:
    """SmsInboxAPI of the Termux:API app `app` answering the broadcast `extras`."""
    missing = missing_permissions(LIST_NAME, modes, app)
    if missing:
        _print_json(_permission_error(missing))
        return 0
    if extras.get("conversation-list"):
        _print_json([])  # conversation mode is not modelled
        return 0
    limit, offset, kind = extras["limit"], extras["offset"], extras["type"]
    params: list[Any] = []
    if app >= (0, 51):
        address = extras.get("from") or None
        selection = extras.get("message-selection") or None
        if selection is None and address is not None:
            selection, params = "address LIKE ?", [address]  # exact: no wildcards added
        sort = extras.get("message-sort-order") or "date DESC"
        sort += (f" LIMIT {limit}" if limit >= 0 else "") + (
            f" OFFSET {offset}" if offset >= 0 else "")
        reverse = not extras.get("message-return-no-order-reverse")
    else:
        # Before 0.51: no selection, sort order nor order switch; `from` is pasted into a
        # LIKE '%...%' (always, empty or not).
        address = extras.get("from") or None
        selection = f"address LIKE '%{address or ''}%'"
        sort = f"date DESC LIMIT + {limit} OFFSET {offset}"
        reverse = True
    uri = kind if address is None else 0
    if uri == INBOX and app < (0, 50):
        uri = 0  # no inbox URI before 0.50: `-t inbox` lists every row
    where = [f"type = {uri}"] if uri in (INBOX, SENT, DRAFT, OUTBOX) else []  # failed/queued: all
    if selection:
        where.append(f"({selection})")
    sql = "SELECT * FROM sms" + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY {sort}"
    try:
        with p.db() as conn:
            found = conn.execute(sql, params).fetchall()
            printed = {r[0]: json.loads(r[1])
                       for r in conn.execute("SELECT row_id, how FROM printed")}
            items = [_list_item(p, conn, row, app, modes, printed.get(row["_id"]))
                     for row in found]
    except sqlite3.Error as exc:
        # The query throws inside the app: it is logged there and nothing is answered.
        _error(f"fake termux-api: {exc}\n")
        return 0
    if reverse:
        items.reverse()  # Cursor.moveToLast()/moveToPrevious(), whatever the sort order
    _print_json(items)
    return 0


def _list_item(p: Provider, conn: sqlite3.Connection, row: sqlite3.Row,
               app: tuple[int, ...], modes: dict[str, Any],
               how: dict[str, Any] | None = None) -> Any:
    kind = TYPE_NAMES.get(row["type"], "")
    item: dict[str, Any] = {"threadid": row["thread_id"], "type": kind,
                            "read": bool(row["read"])}
    name = p.contact_name(conn, row["address"])
    if name is not None:
        item["sender"] = name if kind == "inbox" or app < (0, 50) else "You"
    if app >= (0, 51):
        item["address"] = row["address"]
    item["number"] = row["address"]
    item["received"] = _local(row["date"], modes.get("locale_digits"))
    item["body"] = loaded_text(row["body"])
    if app >= (0, 50):
        item["_id"] = row["_id"]
    if how:  # a row printed oddly (FakeTermux.add_raw_row)
        if "entry" in how:
            return how["entry"]
        for name in how.get("drop", ()):
            item.pop(name, None)
        item.update(how.get("fields", {}))
    return item


# termux-sms-send ----------------------------------------------------------------------------
SEND_NAME = "termux-sms-send"
SEND_USAGE = """Usage: termux-sms-send -n number[,number2,number3,...] [-s slot] [text]
Send a SMS message to the specified recipient number(s). The text to send is either \
supplied as arguments or read from stdin if no arguments are given.
  -n number(s)  recipient number(s) - separate multiple numbers by commas
  -s slot       sim slot to use - silently fails if slot number is invalid or if missing \
READ_PHONE_STATE permission
"""


def sms_send(p: Provider, call: Call, argv: list[str], modes: dict[str, Any]) -> int:
    """The dash script (the same in 0.58 and 0.59), `am`, then SmsSendAPI."""
    _, app = versions(modes)
    recipients: str | None = None
    slot: str | None = None
    events, rest = getopts(argv, ":hn:s:")
    for opt, arg in events:
        if opt == "h":
            call.log()
            _print(SEND_USAGE)
            return 0
        if opt == "n":
            recipients = arg
        elif opt == "s":
            slot = arg
        else:
            call.log()
            _print(f"{SEND_NAME}: illegal option -{arg}\n")
            return 1
    if recipients is None:
        call.log()
        _print(f"{SEND_NAME}: no recipient number given\n")
        return 1
    # `--esa recipients $OPTARG` and `--ei slot $OPTARG` are pasted unquoted.
    am_error = None
    words = recipients.split()
    if len(words) != 1:
        am_error = f"java.lang.IllegalArgumentException: bad --esa recipients {words!r}"
    slot_number = -1
    if slot is not None:
        value = _int_extra(slot.split(), "slot")
        if isinstance(value, str):
            am_error = am_error or value
        else:
            slot_number = value
    call.broadcast(modes, am_error)
    missing = missing_permissions(SEND_NAME, modes, app)
    if missing:
        call.log()  # the app answers without ever connecting to read stdin
        _print_json(_permission_error(missing))
        return 0
    if rest:
        text = dash_echo(rest)  # echo "$@" | termux-api SmsSend: our stdin is never read
        call.log()
    else:
        text = "" if sys.stdin is None or sys.stdin.isatty() else \
            sys.stdin.buffer.read().decode("utf-8", "replace")
        call.log(len(text))
    return _send_app(p, words[0].split(","), slot_number, java_trim(text), modes, app)


def _send_app(p: Provider, recipients: list[str], slot: int, body: str,
              modes: dict[str, Any], app: tuple[int, ...]) -> int:
    if slot != -1:  # getSmsManager(): the active subscription in that slot, or nothing
        if app < (0, 51) and "READ_PHONE_STATE" in missing_permissions(
                "termux-telephony-deviceinfo", modes):
            return 0  # SecurityException from getActiveSubscriptionInfoList()
        if modes.get("no_sim") or not 0 <= slot < int(modes.get("sim_slots", 2)):
            return 0  # "Sim slot N not found": silently nothing
    if not body or modes.get("no_row"):
        return 0  # divideMessage("") throws "Invalid message body"; the app swallows it
    flips: list[int] = []
    with p.locked():
        modes = p.modes()
        fail_next = int(modes.get("fail_next", 0))
        for number in recipients:
            if not number:
                break  # "Invalid destinationAddress" ends the loop
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


# other commands -----------------------------------------------------------------------------
BATTERY_NAME, DEVICEINFO_NAME = "termux-battery-status", "termux-telephony-deviceinfo"
PLAIN_USAGE = {BATTERY_NAME: "Get the status of the device battery.",
               DEVICEINFO_NAME: "Get information about the telephony device."}


def plain_script(name: str, argv: list[str]) -> int | None:
    """The scripts that take no argument (`getopts :h`, the same in 0.58 and 0.59): the
    exit status of an argument error or `-h`, None when the broadcast goes on."""
    events, rest = getopts(argv, ":h")
    for option, value in events:
        if option == "h":
            _print(f"Usage: {name}\n{PLAIN_USAGE[name]}\n")
            return 0
        _print(f"{name}: illegal option -{value}\n")
        return 1
    if rest:
        _print(f"{name}: too many arguments\n")
        return 1
    return None


def _off(modes: dict[str, Any], key: str) -> bool:
    return modes.get(key, 1) in (0, False, "0")


def deviceinfo(modes: dict[str, Any]) -> dict[str, Any]:
    # TelephonyAPI.java: the default TelephonyManager, so the phone's default SIM whatever
    # slot a send uses; `network_type` is the data network's (unknown with mobile data off).
    no_sim = bool(modes.get("no_sim"))
    # With the radio off (airplane mode) the phone is registered on no network.
    no_operator = no_sim or bool(modes.get("no_operator") or modes.get("radio_off"))
    data = not no_operator and not _off(modes, "mobile_data")
    return {
        "data_enabled": "false" if _off(modes, "mobile_data") else "true",
        "data_activity": "none",
        "data_state": "connected" if data else "disconnected",
        "device_id": None,
        "device_software_version": "01",
        "phone_count": int(modes.get("sim_slots", 2)),
        "phone_type": "gsm",
        "network_operator": "" if no_operator else "63902",
        "network_operator_name": "" if no_operator else "Safaricom",
        "network_country_iso": "" if no_operator else "ke",
        "network_type": str(modes.get("network_type") or "lte") if data else "unknown",
        "network_roaming": False,
        "sim_country_iso": "" if no_sim else "ke",
        "sim_operator": "" if no_sim else "63902",
        "sim_operator_name": "" if no_sim else "Safaricom",
        "sim_serial_number": None,
        "sim_subscriber_id": None,
        "sim_state": "absent" if no_sim else str(modes.get("sim_state") or "ready"),
    }


BATTERY_PROPERTIES = ("current", "current_average", "percentage", "charge_counter", "energy")
INT_MIN, LONG_MIN = -(2 ** 31), -(2 ** 63)


def _locale_number(text: str, modes: dict[str, Any]) -> str:
    # Java's String.format("%.1f") with the phone's default locale: its separator and digits.
    text = text.replace(".", str(modes.get("locale_decimal") or "."))
    zero = LOCALE_DIGITS.get(str(modes.get("locale_digits") or "ascii").lower(), "0")
    return text.translate({ord("0") + k: ord(zero) + k for k in range(10)})


def battery_status(modes: dict[str, Any], app: tuple[int, ...]) -> dict[str, Any] | None:
    """BatteryStatusAPI.java's answer at app version `app`, or None when the app throws
    while writing it (nothing is printed, exit 0)."""
    percent = int(modes.get("battery", 85))
    plugged = str(modes.get("plugged", "PLUGGED_AC"))
    status = str(modes.get("battery_status") or ("DISCHARGING" if plugged == "UNPLUGGED"
                                                 else "FULL" if percent >= 100 else "CHARGING"))
    missing = {x.strip() for x in str(modes.get("battery_unsupported", "energy")).split(",")}
    tenths = round(float(modes.get("temperature", 29.5)) * 10)
    health, level, scale, present, voltage = "GOOD", percent, 100, True, 4012
    if _off(modes, "battery_broadcast"):
        if app < (0, 53):
            return None  # registerReceiver gave null: a NullPointerException
        # An empty Intent: every getIntExtra gives its default.
        plugged, status, health, level, scale, present = "PLUGGED_-1", "UNKNOWN", "-1", -1, -1, \
            False
        tenths, voltage = INT_MIN, -1000  # -1 < 100: "fixed" from V to mV
    if plugged == "PLUGGED_DOCK" and app < (0, 51):
        plugged = "PLUGGED_8"  # no case for BATTERY_PLUGGED_DOCK yet
    current = -254000 if plugged == "UNPLUGGED" else 612000
    if app < (0, 51):
        # Termux:API 0.50.1 and older: an int percentage from level/scale, the temperature a
        # float widened to double (unrounded), `current` a long.
        return {"health": health, "percentage": level * 100 // scale, "plugged": plugged,
                "status": status,
                "temperature": struct.unpack("f", struct.pack("f", tenths / 10))[0],
                "current": LONG_MIN if "current" in missing else current}
    if "current" in missing and app < (0, 53):
        return None  # `int batteryCurrentNow = null`: a NullPointerException (fixed in 0.53)
    properties = {"current": current,
                  "current_average": -198000 if plugged == "UNPLUGGED" else 540000,
                  "percentage": percent, "charge_counter": 2871000, "energy": 10650000000}
    props = {k: None if k in missing else v for k, v in properties.items()}
    temperature: Any = round(tenths) / 10
    if app < (0, 52):
        temperature = _locale_number(f"{struct.unpack('f', struct.pack('f', tenths / 10))[0]:.1f}",
                                     modes)
    answer = {
        "present": present, "technology": "Li-ion" if present else None, "health": health,
        "plugged": plugged, "status": status, "temperature": temperature, "voltage": voltage,
        "current": props["current"], "current_average": props["current_average"],
        "percentage": props["percentage"], "level": level, "scale": scale,
        "charge_counter": props["charge_counter"], "energy": props["energy"],
        "cycle": 211,  # Android 14+
    }
    if app >= (0, 53):  # 27a7599: putXIfSet, no null values
        answer = {k: v for k, v in answer.items() if v is not None}
    return answer


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
             " | add TYPE ADDRESS BODY [--at ISO] | raw TYPE ADDRESS BODY [--at ISO]"
             " [--drop FIELD]... [--set FIELD=JSON]... [--entry JSON] | rows [TYPE]"
             " | calls [--count] [NAME] | delete ID | notify PACKAGE TITLE [CONTENT]"
             " | contact NUMBER NAME\n")
    if not argv:
        sys.stderr.write(usage)
        return 2
    cmd, args = argv[0], argv[1:]
    at: int | None = None
    if "--at" in args:
        k = args.index("--at")
        at = int(parse_iso(args[k + 1]).timestamp() * 1000)
        del args[k:k + 2]
    how: dict[str, Any] = {}
    if cmd == "raw":
        rest: list[str] = []
        k = 0
        while k < len(args):
            if args[k] in ("--drop", "--set", "--entry") and k + 1 < len(args):
                value = args[k + 1]
                if args[k] == "--drop":
                    how.setdefault("drop", []).append(value)
                elif args[k] == "--set":
                    name, _, text = value.partition("=")
                    how.setdefault("fields", {})[name] = json.loads(text)
                else:
                    how["entry"] = json.loads(value)
                k += 2
            else:
                rest.append(args[k])
                k += 1
        args = rest
    if cmd == "mode":
        clear = "--clear" in args
        changes = {}
        for item in args:
            if item == "--clear":
                continue
            key, _, value = item.partition("=")
            # A version stays a string: 0.50 is not 0.5.
            changes[key] = (value if key.endswith("_version") else parse_value(value)) \
                if value else None
        _print_json(p.set_modes(changes, clear=clear))
    elif cmd == "receive" and len(args) == 2:
        _print(f"{p.add_row(INBOX, args[0], args[1], at)}\n")
    elif cmd == "add" and len(args) == 3:
        kind = int(args[0]) if args[0].isdigit() else LIST_TYPES[args[0]]
        _print(f"{p.add_row(kind, args[1], args[2], at, creator=API_PACKAGE, read=1)}\n")
    elif cmd == "raw" and len(args) == 3:
        kind = int(args[0]) if args[0].isdigit() else LIST_TYPES[args[0]]
        row_id = p.add_row(kind, args[1], args[2], at, creator=API_PACKAGE if kind != INBOX
                           else "com.android.phone", read=int(kind != INBOX))
        p.set_printed(row_id, how)
        _print(f"{row_id}\n")
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
    call = Call(p, name, argv)
    try:
        modes = p.modes()
        if name == LIST_NAME:
            return sms_list(p, call, argv, modes)
        if name == SEND_NAME:
            return sms_send(p, call, argv, modes)
        if name == "termux-job-scheduler":
            from jobscheduler import main as job_scheduler

            return job_scheduler(p, call, argv, modes)
        call.log()
        if name == "pm":
            return pm(argv, modes)
        if name == "settings":
            return android_settings(argv, modes)
        if not name.startswith("termux-"):
            sys.stderr.write(f"fake termux: unknown command {name}\n")
            return 127
        if name in PLAIN_USAGE:
            status = plain_script(name, argv)
            if status is not None:
                return status
        call.broadcast(modes)
        _, app = versions(modes)
        missing = missing_permissions(name, modes, app)
        if missing:
            _print_json(_permission_error(missing))
            # TermuxApiPermissionActivity: the app also opens the permission screen.
            p.open_screen("TermuxApiPermissionActivity",
                          ",".join(f"android.permission.{m}" for m in missing))
            return 0
        if name == DEVICEINFO_NAME:
            _print_json(deviceinfo(modes))
        elif name == "termux-notification-list":
            _print_json(notification_list(p))
        elif name == BATTERY_NAME:
            answer = battery_status(modes, app)
            if answer is not None:
                _print_json(answer)
            elif app >= (0, 51):  # ResultReturner catches it and posts a notification
                p.notify(API_PACKAGE, "Termux:API Error", "Error in ResultReturner")
        elif name != "termux-wake-lock":
            sys.stderr.write(f"fake termux: unknown command {name}\n")
            return 127
        return 0
    finally:
        call.log()
