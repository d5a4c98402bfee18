"""Termux:API as the phone; the only module of smsgw that runs processes.

Every command goes through run_command(): an argument tuple (never a shell), its own
process group, a timeout that kills the whole group (termux-api commands wait for the app
with no timeout of their own), the SMS text only on stdin. The facts this is built on, and
their sources, are in tests/fakes/README.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, NamedTuple

from ..errors import PhoneError, PhoneTimeout
from ..health import PhoneHealth
from ..models import json_type
from .base import FAILED, INBOX, SENT, BadRow, Phone, SmsRow, normalize_number

logger = logging.getLogger(__name__)

SMS_SEND = "termux-sms-send"
SMS_LIST = "termux-sms-list"
DEVICE_INFO = "termux-telephony-deviceinfo"
BATTERY_STATUS = "termux-battery-status"
WAKE_LOCK = "termux-wake-lock"
JOB_SCHEDULER = "termux-job-scheduler"
API_PACKAGE = "com.termux.api"

RECEIVED_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_SIM_SLOT = 9
# termux-api 0.59's scripts print their log lines on stdout when this asks for DEBUG or more,
# which breaks the JSON: never pass it on.
LOG_LEVEL_ENV = "TERMUX_API__LOG_LEVEL"
_KINDS = {"inbox": INBOX, "sent": SENT, "failed": FAILED}
_WORDS = 300  # characters of a tool's output kept in an error text
MAX_BAD_ROWS = 1000  # bad rows kept for take_bad_rows(), and keys remembered as logged
HEALTH_TIMEOUT = 10.0  # seconds for each health read (at most list_timeout): they are small
# termux-battery-status prints nothing (exit 0) when the app throws while answering: 0.51 and
# 0.52 on a phone that gives no battery current (fixed in 0.53), and every version before
# 0.53 when Android gives no battery broadcast. The app then posts an error notification.
NO_BATTERY_ANSWER = (f"{BATTERY_STATUS} gave no answer (Termux:API before 0.53 fails on some "
                     "phones, with an error notification each time): update Termux:API to 0.53 "
                     "or later")


class CommandFailed(PhoneError):
    """A command exited with a non-zero status (`returncode`; negative: killed by a signal)."""

    def __init__(self, text: str, output: str, returncode: int) -> None:
        super().__init__(text, output)
        self.returncode = returncode


class ToolError(PhoneError):
    """Termux:API answered `{"error": ...}`: it refused the command; `words` is its text."""

    def __init__(self, text: str, output: str, words: str) -> None:
        super().__init__(text, output)
        self.words = words


class CallAborted(PhoneError):
    """The call was ended (or not started) because smsgw is stopping now; a send it carried
    may have reached the phone (`maybe_sent`)."""


class CallAbort:
    """Ends the termux call in progress from a signal handler, and refuses new calls.

    `__call__` only sets a flag and kills the running call's process group (one kill(2)):
    no lock, no logging, so it is safe in a handler that interrupts run_command itself.
    """

    def __init__(self) -> None:
        self.requested = False
        self.running: subprocess.Popen[bytes] | None = None

    def __call__(self) -> None:
        self.requested = True
        proc = self.running
        if proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)


def _words(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _WORDS else text[:_WORDS] + "..."


def run_command(args: tuple[str, ...], *, stdin: str | None = None, timeout: float,
                abort: CallAbort | None = None) -> str:
    """Run `args` (no shell) in its own process group and return its stdout.

    Raises PhoneTimeout after `timeout` seconds, once the whole group is killed and reaped;
    CommandFailed on a non-zero exit status; PhoneError when the command cannot start;
    CallAborted when `abort` was called before or during the call.
    """
    if abort is not None and abort.requested:
        raise CallAborted(f"{args[0]} not run: smsgw is stopping now")
    logger.debug("running %s (timeout %g s)", shlex.join(args), timeout)
    data = None
    if stdin is not None:
        try:
            data = stdin.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PhoneError(f"text for {args[0]} is not valid Unicode: {exc.reason}") from None
    env = {k: v for k, v in os.environ.items() if k != LOG_LEVEL_ENV}
    try:
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    except OSError as exc:
        raise PhoneError(f"cannot run {args[0]}: {exc.strerror or exc}") from None
    if abort is not None:
        abort.running = proc
        if abort.requested:  # the signal came between the check above and now
            abort()
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise PhoneTimeout(f"{args[0]} did not answer within {timeout:g} s and was stopped "
                           "(is the Termux:API app installed, allowed and not frozen?)") from None
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        if abort is not None:
            abort.running = None
    if abort is not None and abort.requested and proc.returncode < 0:
        raise CallAborted(f"{args[0]} was ended: smsgw is stopping now", maybe_sent=True)
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    if proc.returncode != 0:
        words = _words(stderr) or _words(stdout)
        raise CommandFailed(
            f"{args[0]} failed (exit status {proc.returncode})" + (f": {words}" if words else ""),
            "\n".join(s for s in (stdout.strip(), stderr.strip()) if s), proc.returncode)
    if stderr.strip():
        logger.debug("%s wrote on stderr: %s", args[0], _words(stderr))
    return stdout


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group led by `proc` and reap `proc`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        # Something that left the group still holds our pipes: stop reading them.
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        proc.wait()


def parse_json(command: str, stdout: str) -> Any:
    """The JSON a termux-api command printed; `{"error": ...}` raises ToolError."""
    text = stdout.strip()
    if not text:
        raise PhoneError(f"{command} gave no answer")
    try:
        data = json.loads(text)
    except ValueError:
        raise PhoneError(f"{command} printed something that is not JSON: {_words(text)!r}",
                         text) from None
    if isinstance(data, dict) and "error" in data:
        words = str(data["error"])
        raise ToolError(f"{command}: {words}", text, words)
    return data


def termux_api_installed() -> bool:
    """Whether the termux-api package's SMS commands are on PATH."""
    return all(shutil.which(name) for name in (SMS_SEND, SMS_LIST))


# Helpers for `smsgw doctor`: they never raise.
def app_installed(timeout: float = 10.0) -> bool | None:
    """Whether the Termux:API app is installed (`pm path`), None when it cannot be told."""
    try:
        out = run_command(("pm", "path", API_PACKAGE), timeout=timeout)
    except CommandFailed as exc:
        return False if exc.returncode == 1 and not exc.output.strip() else None
    except PhoneError as exc:
        logger.debug("pm path %s: %s", API_PACKAGE, exc)
        return None
    return True if "package:" in out else None


def sms_permission_problem(timeout: float = 10.0) -> str | None:
    """What stops termux-sms-list (the app's own words, or a hang), or None if it answers."""
    try:
        parse_json(SMS_LIST, run_command((SMS_LIST, "-t", "inbox", "-l", "1"), timeout=timeout))
    except PhoneTimeout:
        return (f"Termux:API did not answer within {timeout:g} s: install the Termux:API app, "
                "open it once, allow its SMS, contacts and phone permissions, and exempt it "
                "from battery optimisation")
    except ToolError as exc:
        return exc.words
    except PhoneError as exc:
        return str(exc)
    return None


def wake_lock(timeout: float = 10.0) -> str | None:
    """Ask Termux to keep the CPU awake (`termux-wake-lock`). Never raises: returns what
    went wrong, or None."""
    try:
        run_command((WAKE_LOCK,), timeout=timeout)
    except PhoneError as exc:
        logger.warning("termux-wake-lock failed: %s", exc)
        return str(exc)
    return None


def pending_jobs(timeout: float = 10.0) -> str:
    """What `termux-job-scheduler --pending` prints (one `Pending Job ID: PATH ...` line per
    job, or `No jobs found`). Raises PhoneError."""
    return run_command((JOB_SCHEDULER, "--pending"), timeout=timeout)


def android_setting(name: str, timeout: float = 10.0) -> str | None:
    """A global Android setting (`settings get global NAME`), None when unset or unreadable."""
    try:
        out = run_command(("settings", "get", "global", name), timeout=timeout).strip()
    except PhoneError as exc:
        logger.debug("settings get global %s: %s", name, exc)
        return None
    return None if out in ("", "null") else out


# rows and positions --------------------------------------------------------------------
class _Item(NamedTuple):
    """A listed row, and the latest UTC second its local `received` time can stand for."""

    row: SmsRow
    hi: int

    @property
    def lo(self) -> int:
        return int(self.row.date.timestamp())

    @property
    def row_id(self) -> int | None:
        return self.row.row_id


class _Bad(NamedTuple):
    """A listed entry that is not a readable row; its `_id` and kind when those are readable
    (they still serve for paging and for telling whether a selection was applied)."""

    bad: BadRow
    row_id: int | None
    kind: str | None


_Entry = _Item | _Bad


class _SelectionIgnored(Exception):
    """termux-sms-list answered rows its --message-selection excludes, or refused the option."""


def check_sim_slot(slot: object) -> int | None:
    """`slot` if it is None or a SIM slot termux-sms-send can be given (0..MAX_SIM_SLOT).

    The script pastes `-s SLOT` unquoted into an `am` command line: anything but a small
    integer makes `am` fail and the call hang, so nothing else may ever reach it.
    """
    if slot is None:
        return None
    if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot <= MAX_SIM_SLOT:
        raise ValueError(f"not a SIM slot (0 to {MAX_SIM_SLOT}): {slot!r}")
    return slot


def _refuses_selection(exc: CommandFailed) -> bool:
    """termux-sms-list before package 0.59 (dash getopts) has no long options: it prints
    `termux-sms-list: illegal option --` and exits 1. (0.59 exits 64 on an argument error: that
    is a real error, not an old script.)"""
    return exc.returncode == 1 and "illegal option --" in exc.output


def ascii_digits(text: str) -> str:
    """`text` with every Unicode decimal digit as its ASCII digit, and without invisible
    format characters (e.g. a right-to-left mark).

    Termux:API formats `received` with SimpleDateFormat in the phone's default locale: on a
    phone set to Arabic, Persian, Nepali, Bengali... the digits are the locale's own
    (`٢٠٢٦-١٢-٠١ ٠٩:١٥:٤٢`)."""
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
        elif ch.isdecimal():
            out.append(str(unicodedata.decimal(ch, ch)))
        elif unicodedata.category(ch) != "Cf":
            out.append(ch)
    return "".join(out)


def _to_utc(received: str) -> tuple[datetime, int]:
    """`received` (the phone's local time) as aware UTC, and the latest second it may mean.

    A local time in the hour repeated when DST ends has two meanings; the row gets the
    earlier one and comparisons with positions use the later one, so no row is lost.
    """
    naive = datetime.strptime(ascii_digits(received), RECEIVED_FORMAT)
    a = naive.replace(fold=0).astimezone(timezone.utc)
    b = naive.replace(fold=1).astimezone(timezone.utc)
    return min(a, b), int(max(a, b).timestamp())


class _Unreadable(Exception):
    """Why a listed entry is not a readable row."""


def _int_field(entry: Any, name: str) -> int | None:
    value = entry.get(name) if isinstance(entry, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _kind_field(entry: Any) -> str | None:
    kind = entry.get("type") if isinstance(entry, dict) else None
    return _KINDS.get(kind, kind) if isinstance(kind, str) else None


def _parse_row(entry: Any) -> _Item:
    """One listed entry as a row; raises _Unreadable (never with the body's text)."""
    if not isinstance(entry, dict):
        raise _Unreadable(f"the entry is {json_type(entry)}, not an object")
    if "received" not in entry:
        raise _Unreadable("no `received` date")
    received = entry["received"]
    if not isinstance(received, str):
        raise _Unreadable(f"`received` is {json_type(received)}, not a text")
    try:
        date, hi = _to_utc(received)
    except (ValueError, OverflowError, OSError):
        raise _Unreadable(f"unreadable `received` date {_words(received)[:60]!r}") from None
    if "body" not in entry:
        raise _Unreadable("no `body`")
    body = entry["body"]
    if not isinstance(body, str):
        raise _Unreadable(f"`body` is {json_type(body)}, not a text")
    address = entry.get("address")
    if address is None:
        address = entry.get("number")  # Termux:API before 0.51
    return _Item(SmsRow(
        kind=_kind_field(entry) or "",
        address=address if isinstance(address, str) else "",
        body=body,
        date=date,
        row_id=_int_field(entry, "_id"),  # Termux:API 0.50+
    ), hi)


def _parse_rows(data: Any) -> list[_Entry]:
    """The listed entries in the order printed: rows, and the unreadable ones set aside (one
    bad entry never fails the whole answer; an answer that is not a list does)."""
    if not isinstance(data, list):
        raise PhoneError(f"{SMS_LIST} did not answer a list: {_words(json.dumps(data))!r}")
    entries: list[_Entry] = []
    for entry in data:
        try:
            entries.append(_parse_row(entry))
        except _Unreadable as exc:
            entries.append(_Bad(BadRow.of(entry, str(exc)), _int_field(entry, "_id"),
                                _kind_field(entry)))
    return entries


def _good(entries: Iterable[_Entry]) -> list[_Item]:
    return [e for e in entries if isinstance(e, _Item)]


def _unique_bad(entries: Iterable[_Entry]) -> list[_Bad]:
    """The bad entries, each key once (the first), in order."""
    found: dict[str, _Bad] = {}
    for e in entries:
        if isinstance(e, _Bad):
            found.setdefault(e.bad.key, e)
    return list(found.values())


def _ids(entries: Iterable[_Entry]) -> list[int]:
    return [e.row_id for e in entries if e.row_id is not None]


def _ident(row: SmsRow) -> str:
    """The row's key without its `_id`, so positions survive an app with or without `_id`."""
    return replace(row, row_id=None).key


@dataclass
class _Position:
    """Where the inbox was read up to: the highest `_id` (None without `--message-selection`
    or before any inbox row), the UTC second from which rows are compared with `seen`, how
    many rows of each identity were seen from there on, and the keys of the bad rows already
    set aside that the next read may list again."""

    id: int | None
    since: int | None
    seen: dict[str, int] = field(default_factory=dict)
    bad: frozenset[str] = frozenset()

    @classmethod
    def load(cls, raw: Any) -> _Position | None:
        if raw is None:
            return None
        if not isinstance(raw, dict) or ("id" not in raw and "since" not in raw):
            logger.warning("unknown inbox position %r: starting after the newest SMS", raw)
            return None

        def integer(value: Any) -> int | None:
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        seen = raw.get("seen")
        bad = raw.get("bad")
        return cls(integer(raw.get("id")), integer(raw.get("since")),
                   {str(k): v for k, v in seen.items() if integer(v) and v > 0}
                   if isinstance(seen, dict) else {},
                   frozenset(k for k in bad if isinstance(k, str))
                   if isinstance(bad, list) else frozenset())

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": 1, "id": self.id, "since": self.since,
                               "seen": dict(sorted(self.seen.items()))}
        if self.bad:
            out["bad"] = sorted(self.bad)
        return out


def _floor_second(at: datetime) -> int:
    """`at` (aware; naive means UTC) as the UTC second it falls in."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return math.floor(at.timestamp())


def _new_rows(items: Iterable[_Item], seen: dict[str, int]) -> list[SmsRow]:
    """Rows of `items` (oldest first) beyond the counts already seen of their identity."""
    remaining = Counter(seen)
    new = []
    for item in items:
        ident = _ident(item.row)
        if remaining[ident] > 0:
            remaining[ident] -= 1
        else:
            new.append(item.row)
    return new


def _count(items: Iterable[_Item], keep: Callable[[_Item], bool]) -> dict[str, int]:
    return dict(Counter(_ident(i.row) for i in items if keep(i)))


def _in_window(newer: int | None, bound: int | None) -> bool:
    """Whether a bad row listed by date can be from `bound` on: `newer` is the earliest
    second any row listed after it (newer) can stand for, None when none is."""
    return bound is None or newer is None or newer >= bound


def _dedupe(items: list[_Item]) -> list[_Item]:
    """Drop rows listed twice because offsets moved between pages (only rows with `_id`)."""
    keys: set[str] = set()
    kept = []
    for item in items:
        if item.row.row_id is not None:
            if item.row.key in keys:
                continue
            keys.add(item.row.key)
        kept.append(item)
    return kept


# health ------------------------------------------------------------------------------------
def _text_field(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = " ".join(str(value).split())
    return text[:40] if text else None


def _temperature(value: Any) -> float | None:
    """°C from termux-battery-status's `temperature`, None when unknown or absurd."""
    if isinstance(value, str):
        # App 0.51 prints String.format("%.1f") in the phone's locale: "29,5", "٢٩٫٥".
        text = ascii_digits(value).strip().replace(",", ".").replace("\u066b", ".")
        try:
            value = float(text.replace("\u2212", "-"))
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not -60 <= value <= 150:  # the app prints MIN_VALUE/10 when unknown
        return None
    return round(float(value), 1)  # app 0.50 prints a float's widening: 29.399999618530273


def parse_battery(data: Any) -> dict[str, Any]:
    """PhoneHealth fields from termux-battery-status's JSON object (BatteryStatusAPI.java:
    `percentage` from BATTERY_PROPERTY_CAPACITY, else `level`/`scale`; `plugged`
    PLUGGED_AC/USB/WIRELESS/DOCK or UNPLUGGED; `status`, `health`, `temperature` in °C,
    a number, or a string in the phone's locale from app 0.51).
    A field that is missing, null or of the wrong type is None; so are the app's words for
    "Android gave no battery broadcast" (`plugged` PLUGGED_-1, `health` -1)."""
    if not isinstance(data, dict):
        raise PhoneError(f"{BATTERY_STATUS} did not answer an object: "
                         f"{_words(json.dumps(data))!r}")
    percent = _int_field(data, "percentage")
    if percent is None:
        level, scale = _int_field(data, "level"), _int_field(data, "scale")
        if level is not None and scale and level >= 0 and scale > 0:
            percent = round(level * 100 / scale)
    if percent is not None and not 0 <= percent <= 100:
        percent = None
    plugged = _text_field(data, "plugged")
    health = _text_field(data, "health")
    return {"battery_percent": percent, "plugged": None if plugged == "PLUGGED_-1" else plugged,
            "battery_status": _text_field(data, "status"),
            "battery_health": None if health == "-1" else health,
            "temperature": _temperature(data.get("temperature"))}


# TelephonyManager.SIM_STATE_* that TelephonyAPI has no word for: it prints the number.
_SIM_STATES = {"6": "not_ready", "7": "perm_disabled", "8": "card_io_error",
               "9": "card_restricted"}
_NETWORK_TYPES = {"hdspa": "hsdpa"}  # the app's spelling of NETWORK_TYPE_HSDPA


def parse_deviceinfo(data: Any) -> dict[str, Any]:
    """PhoneHealth fields from termux-telephony-deviceinfo's JSON object (TelephonyAPI.java:
    `sim_state` ready/absent/pin_required/unknown/..., `network_operator_name`,
    `network_type` lte/nr/umts/..., `data_state` connected/disconnected/...).

    They describe the phone's default SIM (the default TelephonyManager), whatever SIM
    slot smsgw sends with. `network_type` is the mobile DATA network's: `unknown` (here
    None) with mobile data off, while SMS still work. A SIM state the app prints as a
    number gets Android's name (6 not_ready, 7 perm_disabled, ...)."""
    if not isinstance(data, dict):
        raise PhoneError(f"{DEVICE_INFO} did not answer an object: {_words(json.dumps(data))!r}")
    state = _text_field(data, "sim_state")
    network = _text_field(data, "network_type")
    return {"sim_state": _SIM_STATES.get(state, state) if state is not None else None,
            "network_operator": _text_field(data, "network_operator_name")
            or _text_field(data, "network_operator"),
            "network_type": None if network == "unknown"
            else _NETWORK_TYPES.get(network, network) if network is not None else None,
            "data_state": _text_field(data, "data_state")}


# the phone ---------------------------------------------------------------------------------
class TermuxPhone(Phone):
    """The Android phone through Termux:API commands.

    `calls` counts the termux-api commands this instance ran: they are the gateway's main
    cost. Reading the inbox or the sent rows is one command while fewer than `page_size`
    rows are new; whether the app supports --message-selection is probed once.

    A listed entry that is not a readable row never fails a read: read_inbox moves past it
    and keeps it for take_bad_rows() (logged once as a warning); read_outgoing skips it.
    """

    name = "termux"

    def __init__(self, *, sim_slot: int | None = None, send_timeout: float = 60.0,
                 list_timeout: float = 30.0, page_size: int = 500) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.sim_slot = sim_slot
        self.send_timeout = send_timeout
        self.list_timeout = list_timeout
        self.page_size = page_size
        self.calls = 0
        self._selection: bool | None = None
        self._abort = CallAbort()
        self._bad_lock = threading.Lock()
        self._bad_rows: dict[str, BadRow] = {}  # set aside, not yet taken
        self._logged: dict[str, None] = {}  # keys already logged (the newest MAX_BAD_ROWS)
        self._refused: ToolError | None = None  # deviceinfo's permission refusal, see _deviceinfo

    @property
    def sim_slot(self) -> int | None:
        """The 0-based SIM slot passed as `-s`, or None for the phone's default SIM."""
        return self._sim_slot

    @sim_slot.setter
    def sim_slot(self, slot: int | None) -> None:
        self._sim_slot = check_sim_slot(slot)

    def _run(self, args: tuple[str, ...], *, stdin: str | None = None,
             timeout: float) -> str:
        self.calls += 1
        return run_command(args, stdin=stdin, timeout=timeout, abort=self._abort)

    def abort(self) -> None:
        """End the termux call in progress (its process group is killed) and refuse new
        ones: smsgw is stopping now. Signal-safe."""
        self._abort()

    @property
    def call_abort(self) -> CallAbort:
        """What abort() pulls, for other termux calls of the daemon (the watcher's)."""
        return self._abort

    def _list(self, *options: str) -> list[_Entry]:
        try:
            out = self._run((SMS_LIST, *options), timeout=self.list_timeout)
        except CommandFailed as exc:
            if any(o.startswith("--message-") for o in options) and _refuses_selection(exc):
                # An old script (or one that was downgraded since the probe).
                logger.warning("termux-sms-list does not know --message-selection (%s); "
                               "reading by date: update termux-api (pkg upgrade termux-api)",
                               exc)
                raise _SelectionIgnored from None
            raise
        return _parse_rows(parse_json(SMS_LIST, out))

    # --message-selection support ------------------------------------------------------
    @property
    def supports_selection(self) -> bool:
        """Whether termux-sms-list applies --message-selection (probed once, then cached)."""
        if self._selection is None:
            self._selection = self._probe()
        return self._selection

    def _probe(self) -> bool:
        try:
            rows = self._list("-t", "all", "-l", "1", "--message-selection=_id < 0")
        except _SelectionIgnored:
            return False
        if rows:
            logger.warning("Termux:API ignores --message-selection (app older than 0.51); "
                           "reading by date: update the Termux:API app")
        return not rows

    def _selection_ignored(self) -> None:
        logger.warning("termux-sms-list does not apply --message-selection (any more); "
                       "reading by date from now on: update termux-api and the Termux:API app")
        self._selection = False

    def _pages_by_id(self, type_option: str, selection: str, check: Callable[[_Item], bool],
                     kinds: tuple[str, ...]) -> tuple[list[_Item], list[_Bad]]:
        """All rows matching `selection`, paged on `_id` (not offsets, which move when rows
        come or go between pages); every row must pass `check`, else the app ignored it. Bad
        entries are returned apart; their `_id`, when readable, pages too."""
        entries: list[_Entry] = []
        after: int | None = None
        while True:
            where = selection if after is None else f"{selection} AND _id > {after}"
            page = self._list("-t", type_option, "-l", str(self.page_size),
                              f"--message-selection={where}", "--message-sort-order=_id ASC")
            for entry in page:
                if after is not None and entry.row_id is not None and entry.row_id <= after:
                    raise _SelectionIgnored
                if isinstance(entry, _Bad):
                    if entry.kind is not None and entry.kind not in kinds:
                        raise _SelectionIgnored
                elif entry.row_id is None or not check(entry):
                    raise _SelectionIgnored
            entries.extend(page)
            if len(page) < self.page_size:
                items = sorted(_good(entries), key=lambda i: i.row.row_id or 0)
                return items, _unique_bad(entries)
            ids = _ids(page)
            if not ids:
                raise _SelectionIgnored  # a full page of entries without `_id`: page by date
            after = max(ids)

    def _pages_by_date(self, type_option: str, enough: Callable[[list[_Item]], bool],
                       kinds: tuple[str, ...] | None = None
                       ) -> tuple[list[_Item], list[tuple[_Bad, int | None]]]:
        """Rows of `kinds` (None: every kind) newest-first page by page until a short page or
        one that is `enough` (it is given the page's readable rows); returned oldest first.

        Bad entries of `kinds` (or of no readable kind) are returned apart, each with the
        earliest second any row listed after it can stand for (None: none is), which places
        it in time: the rows are listed by date."""
        pages: list[list[_Entry]] = []
        offset = 0
        while True:
            raw = self._list("-t", type_option, "-l", str(self.page_size), "-o", str(offset))
            offset += len(raw)
            pages.append(raw)
            if len(raw) < self.page_size or enough(_good(raw)):
                break
        # Each page is printed oldest first; the pages themselves go back in time.
        listed = [entry for page in reversed(pages) for entry in page]
        bads: dict[str, tuple[_Bad, int | None]] = {}
        newer: int | None = None
        for entry in reversed(listed):
            if isinstance(entry, _Item):
                newer = entry.hi if newer is None else min(newer, entry.hi)
            elif kinds is None or entry.kind is None or entry.kind in kinds:
                bads[entry.bad.key] = (entry, newer)  # the oldest listing of it wins
        items = [i for i in _good(listed) if kinds is None or i.row.kind in kinds]
        return _dedupe(sorted(items, key=lambda i: i.lo)), list(reversed(bads.values()))

    # sending -------------------------------------------------------------------------
    def send(self, number: str, text: str) -> None:
        number = normalize_number(number)
        args: tuple[str, ...] = (SMS_SEND, "-n", number)
        if self.sim_slot is not None:
            args += ("-s", str(self.sim_slot))
        try:
            out = self._run(args, stdin=text, timeout=self.send_timeout)
        except CommandFailed as exc:
            exc.maybe_sent = exc.returncode < 0  # argument errors stop it before any send
            raise
        if not out.strip():
            return  # handed over: PENDING, nothing more is known
        try:
            data = parse_json(SMS_SEND, out)
        except ToolError:
            raise  # refused (e.g. no SEND_SMS permission): not sent
        except PhoneError as exc:
            exc.maybe_sent = True
            raise
        raise PhoneError(f"{SMS_SEND} answered something unexpected: "
                         f"{_words(json.dumps(data))!r}", out.strip(), maybe_sent=True)

    # inbox ---------------------------------------------------------------------------
    def read_inbox(self, position: dict[str, Any] | None,
                   since: datetime | None = None) -> tuple[list[SmsRow], dict[str, Any]]:
        pos = _Position.load(position)
        # On the first read, the UTC second from which rows are new (None: none is).
        floor = _floor_second(since) if position is None and since is not None else None
        if self.supports_selection:
            try:
                rows, new_pos, bad = self._inbox_by_id(pos, floor)
                self._set_aside(bad)
                return rows, new_pos
            except _SelectionIgnored:
                self._selection_ignored()
        rows, new_pos, bad = self._inbox_by_date(pos, floor)
        self._set_aside(bad)
        return rows, new_pos

    def take_bad_rows(self) -> list[BadRow]:
        with self._bad_lock:
            rows = list(self._bad_rows.values())
            self._bad_rows.clear()
        return rows

    def _set_aside(self, bad: list[BadRow]) -> None:
        with self._bad_lock:
            for row in bad:
                if row.key not in self._logged:
                    # Never the body: only why, and the row's key.
                    logger.warning("%s listed an inbox row that cannot be read (%s): set aside "
                                   "as %s", SMS_LIST, row.reason, row.key)
                    self._logged[row.key] = None
                    if len(self._logged) > MAX_BAD_ROWS:
                        del self._logged[next(iter(self._logged))]
                self._bad_rows.pop(row.key, None)
                self._bad_rows[row.key] = row
                if len(self._bad_rows) > MAX_BAD_ROWS:
                    lost = self._bad_rows.pop(next(iter(self._bad_rows)))
                    logger.warning("too many unreadable inbox rows waiting: %s dropped", lost.key)

    def _inbox_by_id(self, pos: _Position | None, floor: int | None
                     ) -> tuple[list[SmsRow], dict[str, Any], list[BadRow]]:
        if pos is None:
            return self._first_inbox_by_id(floor)

        # `_id >= id` finds rows stored since, including one that reuses the last _id after
        # a delete; `date >= since` (the second after the newest row seen) also finds rows
        # that reuse lower ids.
        clauses = []
        if pos.id is not None:
            clauses.append(f"_id >= {pos.id}")
        if pos.since is not None:
            clauses.append(f"date >= {pos.since * 1000}")
        selection = "type = 1" + (f" AND ({' OR '.join(clauses)})" if clauses else "")

        def check(item: _Item) -> bool:
            row_id = item.row.row_id or 0
            return item.row.kind == INBOX and (not clauses or (
                (pos.id is not None and row_id >= pos.id)
                or (pos.since is not None and item.hi >= pos.since)))

        items, bads = self._pages_by_id("inbox", selection, check, (INBOX,))
        new = _new_rows(items, pos.seen)
        # A bad row's `_id` counts: the next read starts at it, not before.
        top = max(_ids(items) + _ids(bads) + ([pos.id] if pos.id is not None else []),
                  default=None)
        since = max([i.lo + 1 for i in items] + ([pos.since] if pos.since is not None else []),
                    default=None)
        seen = _count(items, lambda i: i.row.row_id == top or (
            since is not None and i.hi >= since))
        # `top` and `since` only grow, so a bad row not listed now is never listed again:
        # the keys of the ones listed now are enough to set each aside once.
        fresh = [b.bad for b in bads if b.bad.key not in pos.bad]
        return new, _Position(top, since, seen, frozenset(b.bad.key for b in bads)).dump(), fresh

    def _first_inbox_by_id(self, floor: int | None
                           ) -> tuple[list[SmsRow], dict[str, Any], list[BadRow]]:
        """The first position: after the newest inbox row by `_id` (so a row stored later is
        found whatever its date). Rows that may be dated from `floor` on are new: while a
        full page holds only such rows, older pages are read too. A bad row is new when it
        is stored after every row dated before `floor`."""
        entries: list[_Entry] = []
        low: int | None = None
        while True:
            selection = "type = 1" + ("" if low is None else f" AND _id < {low}")
            page = self._list("-t", "inbox", "-l", str(self.page_size),
                              f"--message-selection={selection}", "--message-sort-order=_id DESC")
            for entry in page:
                if low is not None and entry.row_id is not None and entry.row_id >= low:
                    raise _SelectionIgnored
                if isinstance(entry, _Bad):
                    if entry.kind is not None and entry.kind != INBOX:
                        raise _SelectionIgnored
                elif entry.row.row_id is None or entry.row.kind != INBOX:
                    raise _SelectionIgnored
            entries.extend(page)
            if len(page) < self.page_size or floor is None or any(
                    i.hi < floor for i in _good(page)) or not _ids(page):
                break
            low = min(_ids(page))
        items, bads = _good(entries), _unique_bad(entries)
        top = max(_ids(entries), default=None)
        if not items:
            fresh = [b.bad for b in bads] if floor is not None else []
            return [], _Position(top, None, {}, frozenset(b.bad.key for b in bads)).dump(), fresh
        since = max(i.lo for i in items) + 1
        new = sorted((i for i in items if floor is not None and i.hi >= floor),
                     key=lambda i: i.row.row_id or 0)
        fresh = []
        if floor is not None:
            old = max((i.row.row_id or 0 for i in items if i.hi < floor), default=None)
            fresh = [b.bad for b in bads if old is None or b.row_id is None or b.row_id > old]
        seen = _count(items, lambda i: i.row.row_id == top or i.hi >= since)
        return [i.row for i in new], _Position(
            top, since, seen, frozenset(b.bad.key for b in bads)).dump(), fresh

    def _inbox_by_date(self, pos: _Position | None, floor: int | None
                       ) -> tuple[list[SmsRow], dict[str, Any], list[BadRow]]:
        if pos is None:
            # The rows of the newest second (the first page holds the newest row), and back
            # to `floor`: rows that may be dated from it on are new.
            newest: list[int] = []

            def enough(page: list[_Item]) -> bool:
                inbox = [i for i in page if i.row.kind == INBOX]
                if not newest and inbox:
                    newest.append(max(i.lo for i in inbox))
                if not newest:
                    return False
                bound = newest[0] if floor is None else min(newest[0], floor)
                return any(i.hi < bound for i in page)

            items, bads = self._pages_by_date("inbox", enough, kinds=(INBOX,))
            fresh = [] if floor is None else [b.bad for b, newer in bads
                                              if _in_window(newer, floor)]
            if not items:
                return [], _Position(None, None, {}, frozenset(
                    b.bad.key for b, _ in bads)).dump(), fresh
            since = max(i.lo for i in items)
            new = [i.row for i in items if floor is not None and i.hi >= floor]
            return new, _Position(None, since, _count(items, lambda i: i.hi >= since), frozenset(
                b.bad.key for b, newer in bads if _in_window(newer, since))).dump(), fresh

        bound = pos.since
        # Filtered on the kind too: before app 0.50 `-t inbox` lists every row.
        items, bads = self._pages_by_date(
            "inbox", lambda page: bound is not None and any(i.hi < bound for i in page),
            kinds=(INBOX,))
        candidates = [i for i in items if bound is None or i.hi >= bound]
        new = _new_rows(candidates, pos.seen)
        # From now on: the newest second, and how many rows of each identity it holds (two
        # identical SMS in one second are two rows when the app shows no _id).
        since = max([i.lo for i in candidates] + ([bound] if bound is not None else []),
                    default=None)
        seen = _count(candidates, lambda i: since is None or i.hi >= since)
        # A bad row has no date of its own: the rows listed after it place it. Once a row
        # dated before `since` is listed after it, it is out of every later window.
        fresh = [b.bad for b, newer in bads
                 if _in_window(newer, bound) and b.bad.key not in pos.bad]
        kept = frozenset(b.bad.key for b, newer in bads if _in_window(newer, since))
        return new, _Position(None, since, seen, kept).dump(), fresh

    # sent and failed rows ------------------------------------------------------------
    def read_outgoing(self, since: datetime) -> list[SmsRow]:
        floor = _floor_second(since)
        if self.supports_selection:
            try:
                items, bads = self._pages_by_id(
                    "all", f"(type = 2 OR type = 5) AND date >= {floor * 1000}",
                    lambda i: i.row.kind in (SENT, FAILED) and i.hi >= floor, (SENT, FAILED))
                self._skip(bads)
                return [i.row for i in sorted(items, key=lambda i: (i.lo, i.row.row_id or 0))]
            except _SelectionIgnored:
                self._selection_ignored()
        # Never `-t failed`: it lists every message. `-t sent` would miss the failed rows.
        items, placed = self._pages_by_date("all", lambda page: any(i.hi < floor for i in page),
                                            kinds=(SENT, FAILED))
        self._skip([b for b, _ in placed])
        return [i.row for i in items if i.hi >= floor]

    @staticmethod
    def _skip(bads: list[_Bad]) -> None:
        for b in bads:
            logger.debug("%s listed a sent or failed row that cannot be read (%s): skipped",
                         SMS_LIST, b.bad.reason)

    # diagnosis -----------------------------------------------------------------------
    def _deviceinfo(self, timeout: float) -> dict[str, Any]:
        """parse_deviceinfo() of a termux-telephony-deviceinfo call; raises PhoneError.

        Without READ_PHONE_STATE the app answers an error AND opens its permission screen
        on the phone, at every call: after one refusal it is not called again (the refusal
        is raised again) until smsgw restarts."""
        refused = self._refused
        if refused is not None:
            raise ToolError(str(refused), refused.output, refused.words)
        try:
            return parse_deviceinfo(parse_json(DEVICE_INFO, self._run((DEVICE_INFO,),
                                                                      timeout=timeout)))
        except ToolError as exc:
            if "permission" in exc.words.lower():
                self._refused = ToolError(f"{exc} (not asked again until smsgw restarts)",
                                          exc.output, exc.words)
                raise ToolError(str(self._refused), exc.output, exc.words) from None
            raise

    def diagnose(self) -> str | None:
        try:
            info = self._deviceinfo(self.list_timeout)
        except PhoneError as exc:
            logger.debug("no diagnosis: %s", exc)
            return None
        state = info["sim_state"]
        if state in (None, "absent"):
            cause = "no SIM"
        elif state in ("unknown", "not_ready"):  # unknown: a transitional state
            cause = "SIM not ready"
        elif state != "ready":
            cause = f"SIM not ready ({state})"
        elif not info["network_operator"]:
            cause = "no network operator"
        else:
            return None
        if self.sim_slot is not None:
            cause += f" (the phone's default SIM; smsgw sends with SIM slot {self.sim_slot})"
        return cause

    # health ----------------------------------------------------------------------------
    def read_health(self) -> PhoneHealth:
        """Battery (termux-battery-status, no permission needed) and SIM and network
        (termux-telephony-deviceinfo, needs READ_PHONE_STATE): two calls, each with a short
        timeout. When the first hangs the app is not answering: the second is not tried.
        Once the permission was refused, SIM and network are not read until smsgw restarts
        (see _deviceinfo)."""
        timeout = min(self.list_timeout, HEALTH_TIMEOUT)
        values: dict[str, Any] = {}
        problems: list[str] = []
        timed_out = False
        try:
            out = self._run((BATTERY_STATUS,), timeout=timeout)
            if not out.strip():
                raise PhoneError(NO_BATTERY_ANSWER)
            values.update(parse_battery(parse_json(BATTERY_STATUS, out)))
        except PhoneTimeout as exc:
            problems.append(str(exc))
            timed_out = True
        except PhoneError as exc:
            problems.append(str(exc))
        if not timed_out:
            try:
                values.update(self._deviceinfo(timeout))
            except PhoneTimeout as exc:
                problems.append(str(exc))
                timed_out = True
            except PhoneError as exc:
                problems.append(str(exc))
        if problems:
            logger.warning("phone health not fully read: %s", "; ".join(problems))
        return PhoneHealth(**values, problem="; ".join(problems) or None, timed_out=timed_out,
                           sim_slot=self.sim_slot if "sim_state" in values else None)
