"""Backups of the state file, and restoring one without ever sending a message twice.

A backup is a copy of state.json (the queues, retry counters, the inbox position and the
rate log: all the active state there is) taken only from a file that loads and passes the
shape checks, in `backups/` beside it (0700; files 0600, written atomically). The daemon
takes one at the first cycle of each UTC day; `smsgw backup` takes one at once; the newest
KEEP are kept. exchange.json (a heartbeat) and the archive's day files (append-only, and
newer than any backup) are not copied.

A backup is older than the archive: a message that was queued in it may have been sent and
archived since. A restore therefore drops from the restored queue every record the archive
holds in a finished form (and queues its final status again for the webapp) and remembers
the row keys of the SMS forwarded since (the inbox is read again from the backup's older
position). From a current state that still loads it takes the newer copy of each outgoing
record and the inbox position, so nothing the phone was already given goes back to UNSENT,
and the received SMS and status updates still waiting for the webapp, so none is lost and
none of the backup's, which reached the webapp since, is posted again.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import atomic_write_text, fsync_dir, make_private_dir, open_private
from ..errors import StateError, UserError
from ..models import InState
from .archive import Archive
from .storage import STATE_VERSION, migrate, shape_problem, state_lock
from .store import RECENT_KEYS

logger = logging.getLogger(__name__)

# Values beside the records that a current state knows newer than any backup.
KEEP = 7  # backups kept, the daily ones and those of `smsgw backup` alike
FOLDER = "backups"
_NAME = re.compile(r"state-(\d{8}T\d{6}Z)(?:-(\d+))?\.json")
_STAMP = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class Backup:
    """One backup file and when it was taken (UTC)."""

    path: Path
    taken: datetime
    size: int


def backups(state_dir: Path) -> list[Backup]:
    """The backups there are, oldest first."""
    folder = state_dir / FOLDER
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise StateError(f"cannot read the backups in {folder}: {exc.strerror}") from None
    found = []
    for name in names:
        m = _NAME.fullmatch(name)
        if m is None:
            continue
        try:
            size = os.lstat(folder / name).st_size
        except FileNotFoundError:
            continue
        taken = datetime.strptime(m.group(1), _STAMP).replace(tzinfo=timezone.utc)
        found.append((taken, int(m.group(2) or 0), Backup(folder / name, taken, size)))
    return [b for *_, b in sorted(found, key=lambda t: t[:2])]


def newest_backup(state_dir: Path) -> Backup | None:
    """The newest backup, or None (never raises: it serves error messages)."""
    try:
        found = backups(state_dir)
    except StateError:
        return None
    return found[-1] if found else None


def _load(path: Path, what: str) -> dict[str, Any]:
    """A state file parsed and checked; UserError naming `what` is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a state file") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is damaged: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{what} {path} is damaged: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} is damaged: not a JSON object")
    problem = shape_problem(data)
    if problem is not None:
        raise UserError(f"{what} {path} is damaged: {problem}")
    version = int((data.get("meta", {}).get("1") or {}).get("version", STATE_VERSION))
    if version > STATE_VERSION:
        raise UserError(f"{what} {path} was written by a newer smsgw; upgrade smsgw")
    return migrate(data, version) if version < STATE_VERSION else data


def take(state_dir: Path, now: datetime) -> Backup:
    """Copy state.json into the backups folder now, if it loads and has the right shape;
    keep the newest KEEP. state.json is always replaced whole, so no lock is needed."""
    source = state_dir / "state.json"
    if not source.exists():
        raise UserError(f"there is no state to back up yet ({source}); it is created by "
                        "the first `smsgw run`")
    data = _load(source, "the state file")
    folder = state_dir / FOLDER
    make_private_dir(folder)
    for tmp in folder.glob(".state-*.tmp"):  # left by a crash mid-write
        tmp.unlink(missing_ok=True)
    stamp = now.astimezone(timezone.utc).strftime(_STAMP)
    path, n = folder / f"state-{stamp}.json", 0
    while path.exists() or path.is_symlink():
        n += 1
        path = folder / f"state-{stamp}-{n}.json"
    try:
        atomic_write_text(path, json.dumps(data, separators=(",", ":")))
    except OSError as exc:
        raise StateError(f"cannot write the backup {path}: {exc.strerror or exc}") from None
    found = backups(state_dir)
    for old in found[:-KEEP]:
        try:
            old.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove the old backup %s: %s", old.path, exc.strerror)
    logger.info("state backed up to %s", path)
    return Backup(path, now, path.stat().st_size)


def daily(state_dir: Path, now: datetime) -> None:
    """Take the day's backup unless one was taken this UTC day. Never raises: a failed
    backup is logged and the cycle goes on."""
    try:
        newest = newest_backup(state_dir)
        if newest is not None and newest.taken.date() >= now.astimezone(timezone.utc).date():
            return
        take(state_dir, now)
    except UserError as exc:
        logger.warning("daily backup not taken: %s", exc)


@dataclass
class Restored:
    """What a restore did."""

    source: Path
    kept_aside: Path | None
    dropped: list[str]  # ids finished in the archive since the backup
    newer: int  # outgoing records taken from the current state, newer than the backup's
    waiting_sms: int = 0  # received SMS not yet forwarded, kept from the current state
    waiting_updates: int = 0  # status updates not yet posted, kept from the current state


def _ref(doc: dict[str, Any]) -> tuple[str, bool]:
    return str(doc.get("id")), doc.get("local") is True


def _next_id(table: dict[str, Any]) -> int:
    return max((int(k) for k in table), default=0) + 1


def restore(state_dir: Path, source: Path, now: datetime) -> Restored:
    """Put the backup `source` back as state.json, under the state lock.

    The current state.json (damaged or not) is copied aside first and never deleted.
    The caller makes sure no daemon runs.
    """
    source = source.expanduser().absolute()
    try:
        data = _load(source, "the backup")
    except UserError as exc:
        raise UserError(f"{exc}; nothing was changed (`smsgw backup --list` shows the "
                        "backups)") from None
    target = state_dir / "state.json"
    with state_lock(state_dir):
        current = None
        if target.exists():
            try:
                current = _load(target, "the state file")
            except UserError:
                current = None  # damaged: the backup replaces it as it is
        newer, gone = _take_newer(data, current)
        waiting = _take_queues(data, current)
        dropped = gone + _drop_finished(data, Archive(state_dir / "archive"))
        aside = _keep_aside(target, now) if target.exists() else None
        try:
            atomic_write_text(target, json.dumps(data, separators=(",", ":")))
        except OSError as exc:
            raise StateError(f"cannot write the state file {target}: "
                             f"{exc.strerror or exc}; nothing was changed") from None
    logger.info("state restored from %s (the previous one kept as %s)", source, aside)
    return Restored(source, aside, dropped, newer, *waiting)


def _take_newer(data: dict[str, Any], current: dict[str, Any] | None) -> tuple[int, list[str]]:
    """Take each outgoing record of a current state that loads, and its bookkeeping (and
    drop, returning their ids, the backup's records it no longer has): they
    are newer than the backup's (a message handed to the phone since must not go back to
    UNSENT; an alert sent since must not be sent again; a count must not go back)."""
    if current is None:
        return 0, []
    out = data.setdefault("outgoing", {})
    # A record leaves the active queue only for the archive, so one the backup has and the
    # current state has not has finished since: it must not come back, even when its day
    # file has already left the archive (a short retention, an old backup).
    current_refs = {_ref(doc) for doc in (current.get("outgoing") or {}).values()}
    gone = [str(out.pop(key)["id"]) for key, doc in list(out.items())
            if _ref(doc) not in current_refs]
    where = {_ref(doc): key for key, doc in out.items()}
    meta = data.setdefault("meta", {}).setdefault("1", {})
    now_meta = (current.get("meta") or {}).get("1") or {}
    # The current bookkeeping is newer in every respect: where the phone was read up to and
    # its rows already used, the counters, the alerts already sent, the rate log, the days
    # the archive has seen. Only the sequence is merged below.
    meta.update({name: value for name, value in now_meta.items() if name != "next_seq"})
    next_seq = max(int(meta.get("next_seq", 1)), _next_id(out))
    count = 0
    for doc in (current.get("outgoing") or {}).values():
        doc = dict(doc)
        key = where.get(_ref(doc))
        if key is None:
            key, next_seq = str(next_seq), next_seq + 1
        doc["seq"] = int(key)  # the record's doc id
        if out.get(key) != doc:
            out[key] = doc
            count += 1
    meta["next_seq"] = max(next_seq, _next_id(out))
    return count, gone


def _take_queues(data: dict[str, Any], current: dict[str, Any] | None) -> tuple[int, int]:
    """Take the received SMS and the queued status updates of a current state that loads,
    whole: they are newer than the backup's. A record leaves these tables only when it is
    forwarded (then archived) or posted, or replaced by a newer status, so one in the backup
    but not in the current state has reached the webapp since: posting it again would repeat
    it or, for a status, tell the webapp an older one than it heard. Returns (SMS waiting,
    updates queued)."""
    if current is None:
        return 0, 0
    incoming = dict(current.get("incoming") or {})
    updates = dict(current.get("updates") or {})
    data["incoming"], data["updates"] = incoming, updates
    waiting = sum(1 for doc in incoming.values() if doc.get("state") == InState.WAITING.value)
    return waiting, len(updates)


def _drop_finished(data: dict[str, Any], archive: Archive) -> list[str]:
    """Drop the records the archive holds finished; queue their final status again (it
    replaces any older one the backup had queued, so the webapp never hears less)."""
    finished: dict[tuple[str, tuple[str, bool]], dict[str, Any]] = {}
    for kind, rec in archive.latest():
        finished.setdefault((kind, _ref(rec)), rec)
    if not finished:
        return []
    out = data.setdefault("outgoing", {})
    updates = data.setdefault("updates", {})
    dropped: list[str] = []
    for key, doc in list(out.items()):
        rec = finished.get(("out", _ref(doc)))
        if rec is None:
            continue
        del out[key]
        dropped.append(str(doc["id"]))
        if doc.get("local") is True:
            continue
        for ukey in [k for k, u in updates.items() if u.get("id") == doc["id"]]:
            del updates[ukey]
        updates[str(_next_id(updates))] = {"id": doc["id"],
                                           "status": rec.get("state", "FAILED"),
                                           "reason": rec.get("reason")}
    incoming = data.setdefault("incoming", {})
    for key, doc in list(incoming.items()):
        if ("in", _ref(doc)) in finished:
            del incoming[key]  # forwarded since the backup
    # The backup's inbox position may be older: SMS forwarded since are read again, and
    # their row keys (remembered like the last ones stored) keep them from a second POST.
    meta = data.setdefault("meta", {}).setdefault("1", {})
    keys = list(meta.get("inbox_keys") or [])
    known = set(keys)
    archived = sorted((rec.get("stored") or "", rec["key"]) for (kind, _), rec in finished.items()
                      if kind == "in" and isinstance(rec.get("key"), str))
    keys += [k for _, k in archived if k not in known]
    meta["inbox_keys"] = keys[-RECENT_KEYS:]
    return dropped


def _keep_aside(target: Path, now: datetime) -> Path:
    """Copy the current state file beside it (bytes as they are: it may be damaged)."""
    stamp = now.astimezone(timezone.utc).strftime(_STAMP)
    aside, n = target.with_name(f"state.json.before-restore-{stamp}"), 0
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = target.with_name(f"state.json.before-restore-{stamp}-{n}")
    try:
        with open(target, "rb") as src:
            raw = src.read()
        fd = open_private(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise StateError(f"cannot keep the current state aside as {aside}: "
                         f"{exc.strerror or exc}; nothing was changed") from None
    fsync_dir(target.parent)
    return aside
