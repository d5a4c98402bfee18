"""The state file: atomic TinyDB storage, its parsed-copy cache, shape checks, migration.

TinyDB's own JSONStorage rewrites the file in place; this one writes a temp file, fsyncs
it and renames it over the old one, so a crash leaves the old state or the new, never half.
A file that cannot be read, or that parses to the wrong shape, is refused with one line
naming the file and the field, and is never written over.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from tinydb.storages import Storage

from ..config import atomic_write_text
from ..errors import StateError, os_advice
from ..models import InState, OutState, PartState

STATE_VERSION = 2  # 2: `local` flag and `reported` status on outgoing records
LOCAL_PREFIX = "local-"  # for people reading ids; the `local` flag is what counts
TABLES = ("meta", "outgoing", "incoming", "updates")
_UNKNOWN_MARK = "outcome unknown: no record on the phone"  # format 1 kept it in `row`


def _stat_key(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class StateCache:
    """The parsed state file of one Store, kept while the file's inode, size and times are
    unchanged (every write replaces the file, so another process's write is always seen).

    It pays: a cycle runs several units of work, and each would parse the whole file again.
    bench/bench_store.py without it: an empty-store cycle 0.82 ms (0.53 with), 1,000 active
    messages 35.7 ms backlog / 88.7 ms awaiting the phone (19.3 / 27.3 with). TinyDB changes
    the parsed data in place, so the Store drops it when a unit of work fails (`forget`).
    """

    def __init__(self) -> None:
        self._entry: tuple[tuple[int, ...], dict[str, Any]] | None = None

    def get(self, key: tuple[int, ...] | None) -> dict[str, Any] | None:
        if key is not None and self._entry is not None and self._entry[0] == key:
            return self._entry[1]
        return None

    def put(self, key: tuple[int, ...] | None, data: dict[str, Any]) -> None:
        self._entry = (key, data) if key is not None else None

    def forget(self) -> None:
        self._entry = None


class AtomicJSONStorage(Storage):
    """TinyDB storage that never leaves a half-written file and never hides a broken one."""

    def __init__(self, path: str, cache: StateCache | None = None) -> None:
        self.path = Path(path)
        self.cache = cache or StateCache()

    def read(self) -> dict[str, Any] | None:
        key = _stat_key(self.path)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the state file {self.path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise StateError(corrupt(self.path, "not UTF-8 text")) from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StateError(corrupt(self.path, f"not valid JSON ({exc})")) from None
        if not isinstance(data, dict):
            raise StateError(corrupt(self.path, "not a JSON object"))
        self.cache.put(key, data)
        return data

    def write(self, data: dict[str, Any]) -> None:
        self.cache.forget()
        try:
            atomic_write_text(self.path, json.dumps(data, separators=(",", ":")))
        except OSError as exc:
            advice = os_advice(exc)
            raise StateError(
                f"cannot save the state file {self.path}: {exc.strerror or exc}; "
                "the previous state is intact" + (f"; {advice}" if advice else "")
            ) from None
        self.cache.put(_stat_key(self.path), data)

    def close(self) -> None:
        pass


def corrupt(path: Path, why: str) -> str:
    from .backup import newest_backup  # here: only a damaged file needs it

    newest = newest_backup(path.parent)
    if newest is None:
        what = "no backup exists yet; move it away to start with an empty state (queued " \
               "messages in it would be lost)"
    else:
        what = (f"restore the newest backup ({newest.taken:%Y-%m-%d %H:%M} UTC) with "
                f"`smsgw restore {newest.path}` (the damaged file is kept beside it), or "
                "move it away to start with an empty state (queued messages in it would be "
                "lost)")
    return f"the state file {path} is damaged: {why}. It was left untouched; {what}"


@contextmanager
def state_lock(folder: Path) -> Iterator[None]:
    """The lock on `folder`/state.lock, held for each unit of work and for a restore."""
    lock = folder / "state.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        try:  # a read-only folder: reading still works, and flock needs no write access
            fd = os.open(lock if lock.exists() else folder, os.O_RDONLY)
        except OSError as exc:
            raise StateError(f"cannot use the state folder {folder}: "
                             f"{exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- shape checks ------------------------------------------------------------------------

def _is_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_STR = (lambda v: isinstance(v, str), "a string")
_TIME = (_is_time, "a time")
_OPT_TIME = (_opt(_is_time), "a time or null")
_INT = (_is_int, "a whole number")
_OPT_STR = (_opt(lambda v: isinstance(v, str)), "a string or null")
_LIST = (lambda v: isinstance(v, list), "a list")

_OUTGOING = {
    "id": _STR, "to": _STR, "content": _STR, "created": _TIME, "last_activity": _TIME,
    "state": (lambda v: v in {s.value for s in OutState}, "a message state"),
    "seq": _INT, "retries": _INT, "due": _OPT_TIME, "reason": _OPT_STR, "parts": _LIST,
    "history": _LIST,
}
_PART = {"state": (lambda v: v in {s.value for s in PartState}, "a part state"),
         "handoff": _OPT_TIME, "row": _OPT_STR}
_INCOMING = {
    "id": _STR, "from_": _STR, "content": _STR, "sms_sent": _INT, "sms_received": _INT,
    "state": (lambda v: v in {s.value for s in InState}, "an SMS state"), "key": _STR,
    "stored": _TIME, "forwarded": _OPT_TIME,
}
_UPDATE = {"id": _STR, "status": _STR, "reason": _OPT_STR}
_RECORDS = {"outgoing": _OUTGOING, "incoming": _INCOMING, "updates": _UPDATE}


def _field_problem(doc: Any, spec: dict[str, tuple[Callable[[Any], bool], str]],
                   optional: frozenset[str] = frozenset()) -> str | None:
    if not isinstance(doc, dict):
        return "not an object"
    for name, (check, what) in spec.items():
        if name not in doc:
            if name in optional:
                continue
            return f'no "{name}"'
        if not check(doc[name]):
            return f'"{name}" is {json.dumps(doc[name])[:40]}, not {what}'
    return None


def check_shape(data: dict[str, Any], path: Path) -> None:
    """Raise StateError naming the table, record and field that has the wrong shape."""
    problem = shape_problem(data)
    if problem is not None:
        raise StateError(corrupt(path, problem))


def shape_problem(data: dict[str, Any]) -> str | None:
    """What is of the wrong shape in a parsed state (table, record, field), or None."""
    for table in TABLES:
        docs = data.get(table, {})
        if not isinstance(docs, dict):
            return f'"{table}" is not an object'
        for doc_id, doc in docs.items():
            if table == "meta":
                if not isinstance(doc, dict):
                    return f'"meta" record {doc_id} is not an object'
                continue
            optional = frozenset({"seq", "retries", "due", "reason", "parts", "history"}
                                 if table == "outgoing" else {"forwarded", "reason"})
            problem = _field_problem(doc, _RECORDS[table], optional)
            if problem is None and table == "outgoing":
                for n, part in enumerate(doc.get("parts", [])):
                    problem = _field_problem(part, _PART, frozenset({"handoff", "row"}))
                    if problem is not None:
                        problem = f"part {n}: {problem}"
                        break
            if problem is not None:
                return f"{table} record {doc_id}: {problem}"
    version = (data.get("meta", {}).get("1") or {}).get("version", STATE_VERSION)
    if not _is_int(version):
        return f'"version" is {json.dumps(version)[:40]}, not a number'
    return None


def migrate(data: dict[str, Any], version: int) -> dict[str, Any]:
    """The state of an older format in today's, nothing dropped."""
    data = json.loads(json.dumps(data))
    if version < 2:
        for doc in (data.get("outgoing") or {}).values():
            # Format 1 told `smsgw send`'s messages apart by their id prefix alone.
            if str(doc.get("id", "")).startswith(LOCAL_PREFIX):
                doc["local"] = True
            # ... and marked an unknown outcome in the part's phone-row field.
            for part in doc.get("parts", []):
                if part.get("row") == _UNKNOWN_MARK:
                    part["state"], part["row"] = PartState.UNKNOWN.value, None
    data.setdefault("meta", {}).setdefault("1", {})["version"] = STATE_VERSION
    return data
