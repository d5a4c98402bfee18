"""Crash-safe state: queues, retry counters, dedup, archive. The only module that imports tinydb.

Layout of the state folder:
  state.json      TinyDB (tables outgoing, incoming, updates, meta), rewritten atomically
  state.lock      fcntl lock held for each unit of work, so the daemon and `smsgw retry`
                  never lose each other's writes
  archive/DAY.jsonl  finished records, append-only, one file a day, kept `retention_days`

A unit of work (`Store.unit()`) takes the lock, re-reads state.json, and writes it at most
once, atomically (temp file, fsync, os.replace), when it ends without an exception. So
everything done in one unit lands together or not at all.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.middlewares import CachingMiddleware
from tinydb.storages import Storage
from tinydb.table import Document

from .config import atomic_write_text, fsync_dir, make_private_dir
from .errors import StateError
from .models import (
    FINISHED_STATES,
    REPORT_RANK,
    REPORTED_STATES,
    HistoryEntry,
    Incoming,
    InState,
    Offered,
    Outgoing,
    OutState,
    PartState,
    Ref,
    Update,
    from_iso,
    to_iso,
)

logger = logging.getLogger(__name__)

STATE_VERSION = 2  # 2: `local` flag on outgoing records, `reported` status
RECENT_KEYS = 1000  # inbox row keys remembered beyond the read position, for dedup
HISTORY_LIMIT = 50
FAILURES_KEPT = 10
LOCAL_PREFIX = "local-"  # for people reading ids; the `local` flag is what counts


def _stat_key(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class AtomicJSONStorage(Storage):
    """TinyDB storage that never leaves a half-written file and never hides a broken one.

    The parsed content is kept while the file's inode, size and times are unchanged: every
    write replaces the file (a new inode), so a change by another process is always seen.
    A unit of work that fails must call `forget()`, as TinyDB changes the data in place.
    """

    _cache: dict[Path, tuple[tuple[int, ...], dict[str, Any]]] = {}

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        key = _stat_key(self.path)
        cached = self._cache.get(self.path)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the state file {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StateError(_corrupt(self.path, f"not valid JSON ({exc})")) from None
        if not isinstance(data, dict):
            raise StateError(_corrupt(self.path, "not a JSON object"))
        if key is not None:
            self._cache[self.path] = (key, data)
        return data

    def write(self, data: dict[str, Any]) -> None:
        self.forget()
        try:
            atomic_write_text(self.path, json.dumps(data, separators=(",", ":")))
        except OSError as exc:
            raise StateError(
                f"cannot save the state file {self.path}: {exc.strerror or exc}; "
                "the previous state is intact"
            ) from None
        key = _stat_key(self.path)
        if key is not None:
            self._cache[self.path] = (key, data)

    def forget(self) -> None:
        """Drop the parsed copy (after a failed unit of work changed it in memory)."""
        self._cache.pop(self.path, None)

    def close(self) -> None:
        pass


def _migrate(data: dict[str, Any], version: int) -> dict[str, Any]:
    """The state of an older format in today's, nothing dropped."""
    data = json.loads(json.dumps(data))
    if version < 2:
        # Format 1 told `smsgw send`'s messages apart by their id prefix alone.
        for doc in (data.get("outgoing") or {}).values():
            if str(doc.get("id", "")).startswith(LOCAL_PREFIX):
                doc["local"] = True
    data.setdefault("meta", {}).setdefault("1", {})["version"] = STATE_VERSION
    return data


def _corrupt(path: Path, why: str) -> str:
    return (
        f"the state file {path} is damaged: {why}. It was left untouched; restore a backup, "
        "or move it away to start with an empty state (queued messages in it would be lost)"
    )


@dataclass
class Batch:
    """What one POST carries: incoming SMS and status updates, with their outbox doc ids."""

    incoming: list[Incoming] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)
    update_ids: list[int] = field(default_factory=list)


@dataclass
class AcceptResult:
    """What became of the messages a webapp answer carried."""

    new: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    invalid: list[tuple[str | None, str]] = field(default_factory=list)
    remaining: int = 0  # incoming SMS and updates still queued after this exchange


class Unit:
    """One unit of work on the state: load once, change in memory, save once."""

    def __init__(self, db: TinyDB, now: datetime) -> None:
        self.db = db
        self.now = now
        # Outgoing records are parsed on demand: a lookup by id parses one, a listing all.
        self._parsed: dict[int, Outgoing] = {}
        self._by_id: dict[Ref, Outgoing] = {}
        self._on_disk: set[int] = set()
        self._complete = False
        self._raw_by_id: dict[Ref, Document] | None = None
        self._meta = dict(db.table("meta").get(doc_id=1) or {"version": STATE_VERSION})
        if self._meta.get("version", STATE_VERSION) > STATE_VERSION:
            raise StateError(
                f"the state was written by a newer smsgw (format {self._meta['version']}, "
                f"this one knows {STATE_VERSION}); upgrade smsgw"
            )
        self._dirty_out: set[int] = set()
        self._removed_out: set[int] = set()
        self._meta_dirty = False
        self._new_updates: list[dict[str, Any]] = []
        self._superseded: set[str] = set()  # ids whose queued update a newer one replaces
        self._queued_ids: set[str] | None = None

    def _register(self, doc: Document) -> Outgoing:
        msg = Outgoing.from_dict(doc)
        self._parsed[doc.doc_id] = msg
        self._by_id[msg.ref] = msg
        self._on_disk.add(doc.doc_id)
        return msg

    def _load_all(self) -> None:
        if not self._complete:
            for doc in self.db.table("outgoing").all():
                if doc.doc_id not in self._parsed:
                    self._register(doc)
            self._complete = True

    # meta -----------------------------------------------------------------
    def meta(self, key: str, default: Any = None) -> Any:
        return self._meta.get(key, default)

    def set_meta(self, key: str, value: Any) -> None:
        self._meta[key] = value
        self._meta_dirty = True

    # outgoing -------------------------------------------------------------
    def outgoing(self) -> list[Outgoing]:
        """Active outgoing messages in arrival order."""
        self._load_all()
        return sorted(self._parsed.values(), key=lambda m: m.seq)

    def records(self, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Stored forms of the active outgoing messages that pass `keep`, in arrival order,
        parsing none that are not already parsed (a long backlog costs little per unit)."""
        records: dict[int, dict[str, Any]] = (
            {} if self._complete else {d.doc_id: d for d in self.db.table("outgoing").all()})
        for seq, msg in self._parsed.items():  # changes made in this unit win
            records[seq] = msg.to_dict()
        for seq in self._removed_out:
            records.pop(seq, None)
        return [records[seq] for seq in sorted(records) if keep(records[seq])]

    def refs_where(self, keep: Callable[[dict[str, Any]], bool]) -> list[Ref]:
        """Refs of the active outgoing messages whose stored form passes `keep`."""
        return [Ref(r["id"], r.get("local") is True) for r in self.records(keep)]

    def get(self, ref: Ref | str) -> Outgoing | None:
        """The active message with this ref; a bare string is a webapp id."""
        if isinstance(ref, str):
            ref = Ref(ref)
        if ref in self._by_id or self._complete:
            return self._by_id.get(ref)
        if self._raw_by_id is None:
            self._raw_by_id = {Ref(d["id"], d.get("local") is True): d
                               for d in self.db.table("outgoing").all()}
        doc = self._raw_by_id.get(ref)
        return self._register(doc) if doc is not None else None

    def lookup(self, msg_id: str) -> Outgoing | None:
        """The active message a person names by id: a webapp one, else a local one."""
        return self.get(Ref(msg_id)) or self.get(Ref(msg_id, local=True))

    def touch(self, msg: Outgoing) -> None:
        """Mark a message changed so it is saved."""
        self._dirty_out.add(msg.seq)

    def add(self, msg: Outgoing) -> None:
        msg.seq = int(self.meta("next_seq", 1))
        self.set_meta("next_seq", msg.seq + 1)
        self._parsed[msg.seq] = msg
        self._by_id[msg.ref] = msg
        self.touch(msg)

    def drop(self, msg: Outgoing) -> None:
        self._parsed.pop(msg.seq, None)
        self._by_id.pop(msg.ref, None)
        self._dirty_out.discard(msg.seq)
        if msg.seq in self._on_disk:
            self._removed_out.add(msg.seq)

    def transition(self, msg: Outgoing, state: OutState, reason: str | None = None) -> None:
        """Move a message to `state`, keep its history, and queue the update the webapp sees."""
        msg.state = state
        msg.reason = reason
        msg.last_activity = self.now
        msg.history.append(HistoryEntry(state.value, self.now, reason))
        del msg.history[:-HISTORY_LIMIT]
        if state in REPORTED_STATES and not msg.local:
            self._report(msg, state, reason)
        if state is OutState.FAILED:
            failures = self.meta("last_failures", [])
            failures.append({"id": msg.id, "to": msg.to, "reason": reason, "at": to_iso(self.now)})
            self.set_meta("last_failures", failures[-FAILURES_KEPT:])
        self.touch(msg)

    # updates --------------------------------------------------------------
    def update_queued(self, msg_id: str) -> bool:
        """Whether a status update for this message is waiting for a POST."""
        if self._queued_ids is None:
            self._queued_ids = {d["id"] for d in self.db.table("updates").all()}
        return msg_id in self._queued_ids or any(n["id"] == msg_id for n in self._new_updates)

    def _report(self, msg: Outgoing, state: OutState, reason: str | None) -> None:
        """Queue `state` for the webapp unless it would not move the message forward."""
        last = msg.reported
        if last is not None and REPORT_RANK[state] <= REPORT_RANK[last]:
            if REPORT_RANK[state] < REPORT_RANK[last]:
                logger.debug("message %s: %s not reported after %s", msg.id, state.value,
                             last.value)
            return
        msg.reported = state
        self.queue_update(msg.id, state.value, reason if state is OutState.FAILED else None)

    def queue_update(self, msg_id: str, status: str, reason: str | None = None) -> None:
        """Queue a status for a webapp id; it replaces one still queued for that id, so the
        webapp never gets an older status after a newer one, in one POST or across POSTs."""
        self._new_updates = [n for n in self._new_updates if n["id"] != msg_id]
        self._superseded.add(msg_id)
        self._new_updates.append({"id": msg_id, "status": status, "reason": reason})

    def queued_for_webapp(self) -> int:
        """Incoming SMS and status updates waiting for a POST."""
        waiting = sum(1 for d in self.db.table("incoming").all()
                      if d["state"] == InState.WAITING.value)
        return waiting + len(self.db.table("updates")) + len(self._new_updates)

    # saving ---------------------------------------------------------------
    def save(self) -> None:
        out = self.db.table("outgoing")
        if self._removed_out:
            out.remove(doc_ids=list(self._removed_out))
        if self._dirty_out:
            existing = self._on_disk & self._dirty_out
            if existing:
                data = {seq: self._parsed[seq].to_dict() for seq in existing}

                def replace(doc: dict[str, Any]) -> None:
                    fresh = data[doc["seq"]]
                    doc.clear()
                    doc.update(fresh)

                out.update(replace, doc_ids=list(existing))
            fresh = self._dirty_out - existing
            if fresh:
                out.insert_multiple(Document(self._parsed[s].to_dict(), doc_id=s) for s in fresh)
        if self._superseded:
            updates = self.db.table("updates")
            stale = [d.doc_id for d in updates.all() if d["id"] in self._superseded]
            if stale:
                updates.remove(doc_ids=stale)
        if self._new_updates:
            self.db.table("updates").insert_multiple(self._new_updates)
        if self._meta_dirty:
            self.db.table("meta").upsert(Document(self._meta, doc_id=1))


class Store:
    """The state of one gateway: a folder holding state.json, its lock and the archive."""

    def __init__(self, folder: Path, retention_days: int = 30) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "state.json"
        self.retention = timedelta(days=retention_days)
        self.archive = Archive(self.folder / "archive")
        make_private_dir(self.folder)
        self._check_readable()

    def _check_readable(self) -> None:
        """Refuse at start-up a state file that cannot be loaded; create a missing one."""
        with self._locked():
            for tmp in self.folder.glob(".state.json.*.tmp"):  # left by a crash mid-write
                tmp.unlink(missing_ok=True)
            storage = AtomicJSONStorage(str(self.path))
            data = storage.read()
            if data is None:
                storage.write({"meta": {"1": {"version": STATE_VERSION}}})
            else:
                meta = (data.get("meta") or {}).get("1") or {}
                version = int(meta.get("version", STATE_VERSION))
                if version > STATE_VERSION:
                    raise StateError(
                        f"the state in {self.path} was written by a newer smsgw; upgrade smsgw"
                    )
                if version < STATE_VERSION:
                    storage.write(_migrate(data, version))
                    logger.info("state file %s migrated from format %d to %d", self.path,
                                version, STATE_VERSION)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.folder / "state.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            try:  # a read-only folder: reading still works, and flock needs no write access
                fd = os.open(lock if lock.exists() else self.folder, os.O_RDONLY)
            except OSError as exc:
                raise StateError(f"cannot use the state folder {self.folder}: "
                                 f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def unit(self, now: datetime) -> Iterator[Unit]:
        """A unit of work under the lock; saved in one atomic write if it ends cleanly."""
        with self._locked():
            db = TinyDB(str(self.path), storage=CachingMiddleware(AtomicJSONStorage))
            # No db.close(): closing flushes, and a unit that failed must write nothing.
            try:
                unit = Unit(db, now)
                yield unit
                unit.save()
                db.storage.flush()
            except BaseException:
                AtomicJSONStorage(str(self.path)).forget()
                raise

    # incoming -------------------------------------------------------------
    def inbox_state(self, now: datetime) -> tuple[dict[str, Any] | None, datetime | None, bool]:
        """Where the inbox was read up to, the time SMS are forwarded from, and whether a
        phone error is recorded.

        Before the first successful read the position is None and SMS are forwarded from
        the start point: the time the gateway was configured, or else the first attempt
        to read (recorded now, so SMS that arrive while that read fails are not lost).
        """
        with self.unit(now) as u:
            position = u.meta("inbox_position")
            start = from_iso(u.meta("forward_since"))
            if position is None and start is None:
                start = now
                u.set_meta("forward_since", to_iso(now))
            return position, start, u.meta("phone_error") is not None

    def forward_since(self, now: datetime) -> datetime | None:
        """The start point of forwarding (see `inbox_state`), None before any is set."""
        with self.unit(now) as u:
            return from_iso(u.meta("forward_since"))

    def set_forward_since(self, when: datetime, now: datetime, *, keep: bool = False) -> bool:
        """Forward SMS received from `when` on: the inbox is read again from there.

        With `keep`, only set it when the gateway has no start point yet (first set-up).
        SMS already stored are not forwarded twice: rows are checked against the keys of
        the last RECENT_KEYS stored. Returns whether the start point changed.
        """
        with self.unit(now) as u:
            if keep and (u.meta("forward_since") or u.meta("inbox_position") is not None):
                return False
            u.set_meta("forward_since", to_iso(when))
            u.set_meta("inbox_position", None)
        logger.info("forwarding incoming SMS received from %s on", to_iso(when))
        return True

    def save_inbox(self, rows: Iterable[Any], position: dict[str, Any], now: datetime,
                   ) -> list[Incoming]:
        """Store new inbox rows with fresh UUIDs in the same write that moves the position."""
        stored: list[Incoming] = []
        with self.unit(now) as u:
            recent: list[str] = list(u.meta("inbox_keys", []))
            seen = set(recent)
            table = u.db.table("incoming")
            for row in rows:
                # The phone's position already gives each row once; this guards against a
                # re-read. Rows without `_id` (old Termux:API) may be true twins with one
                # key, so only rows with an `_id` are deduplicated here.
                if row.row_id is not None and row.key in seen:
                    logger.info("inbox row %s already stored, skipped", row.key)
                    continue
                seen.add(row.key)
                recent.append(row.key)
                msg = Incoming(
                    id=str(uuid.uuid4()), from_=row.address, content=row.body,
                    sms_sent=0, sms_received=int(row.date.timestamp() * 1000),
                    state=InState.WAITING, key=row.key, stored=now,
                )
                if not row.address.strip():
                    # cht-core drops an SMS without `from` (with a 200): it would be lost.
                    msg.state, msg.reason = InState.SET_ASIDE, "no sender number"
                    logger.warning("received SMS %s has no sender number: kept, not "
                                   "forwarded", msg.id)
                elif not row.body:
                    logger.info("received SMS %s from %s is empty; forwarded (cht-core "
                                "ignores empty SMS)", msg.id, row.address)
                stored.append(msg)
            if stored:
                table.insert_multiple(m.to_dict() for m in stored)
            u.set_meta("inbox_keys", recent[-RECENT_KEYS:])
            u.set_meta("inbox_position", position)
        for msg in stored:
            logger.info("received SMS %s from %s stored", msg.id, msg.from_)
        return stored

    # exchange -------------------------------------------------------------
    def next_batch(self, now: datetime, max_incoming: int = 50, max_updates: int = 50) -> Batch:
        """The oldest waiting incoming SMS and queued updates, for one POST."""
        with self.unit(now) as u:
            waiting = [Incoming.from_dict(d) for d in u.db.table("incoming").all()
                       if d["state"] == InState.WAITING.value]
            ups = sorted(u.db.table("updates").all(), key=lambda d: d.doc_id)[:max_updates]
        return Batch(
            incoming=waiting[:max_incoming],
            updates=[Update(d["id"], d["status"], d.get("reason")) for d in ups],
            update_ids=[d.doc_id for d in ups],
        )

    @staticmethod
    def _drop_posted(u: Unit, batch: Batch) -> None:
        """Remove the updates a POST carried, and only those: a doc id freed by a newer
        status replacing one in flight may have been given to that newer status."""
        posted = {doc_id: (up.id, up.status) for doc_id, up in zip(batch.update_ids, batch.updates,
                                                                     strict=True)}
        table = u.db.table("updates")
        done = [d.doc_id for d in table.all()
                if posted.get(d.doc_id) == (d["id"], d["status"])]
        if done:
            table.remove(doc_ids=done)

    def complete_exchange(self, batch: Batch, offered: list[tuple[Offered, str | None]],
                          now: datetime) -> AcceptResult:
        """After a 2xx: drop what the webapp acknowledged and store what it asked to send.

        `offered` pairs each message with the reason it is invalid, or None when valid.
        One write: if it is lost, the batch is simply posted again (at least once).
        """
        result = AcceptResult()
        with self.unit(now) as u:
            if batch.incoming:
                ids = {m.id for m in batch.incoming}
                u.db.table("incoming").update(
                    {"state": InState.FORWARDED.value, "forwarded": to_iso(now)},
                    lambda d: d["id"] in ids,
                )
            if batch.update_ids:
                self._drop_posted(u, batch)
            self._accept(u, offered, result)
            if u.meta("webapp_failures", 0):
                u.set_meta("webapp_failures", 0)
            result.remaining = u.queued_for_webapp()
        self._heartbeat(now)
        return result

    def _heartbeat(self, now: datetime) -> None:
        """Record the last successful exchange in a small side file.

        Not in state.json: an idle cycle then writes a few bytes, not the whole state, and
        losing this line in a power cut costs nothing but a stale time in `smsgw status`.
        """
        path = self.folder / "exchange.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"last_exchange_ok": to_iso(now)}), encoding="utf-8")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("cannot record the last exchange time: %s", exc)

    def last_exchange_ok(self) -> str | None:
        try:
            data = json.loads((self.folder / "exchange.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data.get("last_exchange_ok") if isinstance(data, dict) else None

    def _accept(self, u: Unit, offered: list[tuple[Offered, str | None]],
                result: AcceptResult) -> None:
        seen_now: set[str] = set()
        for msg, invalid in offered:
            if msg.id is not None and (msg.id in seen_now or self._known(u, msg.id)):
                self._requeue_known(u, msg.id)
                result.known.append(msg.id)
                continue
            if invalid is not None:
                result.invalid.append((msg.id, invalid))
                if msg.id is None:
                    logger.warning("webapp message without id ignored: %s", invalid)
                    continue
                record = Outgoing(id=msg.id, to=str(msg.to or ""), content=str(msg.content or ""),
                                  state=OutState.UNSENT, created=u.now, last_activity=u.now)
                u.add(record)
                u.transition(record, OutState.FAILED, invalid)
                seen_now.add(msg.id)
                logger.warning("message %s refused: %s", msg.id, invalid)
                continue
            assert msg.id is not None and msg.to is not None and msg.content is not None
            record = Outgoing(id=msg.id, to=msg.to, content=msg.content, state=OutState.UNSENT,
                              created=u.now, last_activity=u.now, due=u.now)
            u.add(record)
            u.transition(record, OutState.UNSENT)
            seen_now.add(msg.id)
            result.new.append(msg.id)
            logger.info("message %s to %s queued", msg.id, msg.to)

    def _known(self, u: Unit, msg_id: str) -> bool:
        return u.get(msg_id) is not None or self.archive.status_of(msg_id) is not None

    def _requeue_known(self, u: Unit, msg_id: str) -> None:
        """A known id offered again: report its current status again, never send it again.

        Not when an update for it is already waiting to go: a webapp re-offers every
        message on each POST until it sees a status, and each re-offer must not add one.
        """
        if u.update_queued(msg_id):
            return
        msg = u.get(msg_id)
        if msg is not None:
            # What the webapp last heard, never less: between tries a message is UNSENT or
            # SENDING here while the webapp was already told PENDING.
            state = msg.reported or (msg.state if msg.state in REPORTED_STATES
                                     else OutState.UNSENT)
            u.queue_update(msg_id, state.value, msg.reason if state is OutState.FAILED else None)
        else:
            status, reason = self.archive.status_of(msg_id) or ("FAILED", None)
            u.queue_update(msg_id, status, reason)
        logger.info("message %s offered again: status re-sent, not sent again", msg_id)

    def record_exchange_error(self, now: datetime, text: str, status: int | None = None,
                              message: str | None = None) -> None:
        """Remember the last failed exchange and the webapp's own words."""
        with self.unit(now) as u:
            u.set_meta("last_error", {"at": to_iso(now), "text": text,
                                      "status": status, "message": message})
            u.set_meta("webapp_failures", int(u.meta("webapp_failures", 0)) + 1)

    # housekeeping ---------------------------------------------------------
    def archive_finished(self, now: datetime) -> int:
        """Move finished outgoing and forwarded incoming records to the archive."""
        finished = {s.value for s in FINISHED_STATES}
        with self.unit(now) as u:
            done = [u.get(r) for r in u.refs_where(lambda d: d["state"] in finished)]
            forwarded = [d for d in u.db.table("incoming").all()
                         if d["state"] == InState.FORWARDED.value]
            if not done and not forwarded:
                return 0
            self.archive.append(now, [("out", m.to_dict()) for m in done]
                                + [("in", dict(d)) for d in forwarded])
            for m in done:
                u.drop(m)
            if forwarded:
                u.db.table("incoming").remove(doc_ids=[d.doc_id for d in forwarded])
            purged_on = u.meta("purged_on")
            if purged_on != now.date().isoformat():
                self.archive.purge(now - self.retention)
                u.set_meta("purged_on", now.date().isoformat())
            return len(done) + len(forwarded)

    def revive(self, msg_id: str, now: datetime) -> Outgoing | None:
        """Bring an archived message back into the active store (for `smsgw retry`)."""
        record = self.archive.find("out", msg_id)
        if record is None:
            return None
        with self.unit(now) as u:
            msg = Outgoing.from_dict(record)
            if u.get(msg.ref) is None:
                u.add(msg)
            return u.get(msg.ref)


    # commands -------------------------------------------------------------
    def add_local(self, number: str, text: str, now: datetime) -> Outgoing:
        """Queue a message from `smsgw send`; the webapp never hears of it."""
        with self.unit(now) as u:
            msg = Outgoing(id=f"{LOCAL_PREFIX}{uuid.uuid4()}", to=number, content=text,
                           state=OutState.UNSENT, created=now, last_activity=now, due=now,
                           local=True)
            u.add(msg)
            u.transition(msg, OutState.UNSENT)
        logger.info("local message %s to %s queued", msg.id, number)
        return msg

    def retry(self, ids: list[str], all_failed: bool, now: datetime) -> RetryResult:
        """Restart FAILED messages from retry #1 (`smsgw retry`). Works beside a running daemon."""
        result = RetryResult()
        with self.unit(now) as u:
            active = {m.id for m in u.outgoing()}
        for msg_id in ids:
            if msg_id not in active and self.revive(msg_id, now) is None:
                result.not_found.append(msg_id)
        with self.unit(now) as u:
            targets = ([m for m in u.outgoing() if m.state is OutState.FAILED] if all_failed
                       else [m for m in (u.lookup(i) for i in ids) if m is not None])
            for msg in targets:
                if msg.state is not OutState.FAILED:
                    result.wrong_state.append((msg.id, msg.state.value))
                    continue
                msg.retries = 0
                msg.due = now
                msg.reported = None  # a new attempt: the webapp hears UNSENT again
                for part in msg.parts:
                    if part.state is not PartState.SENT:
                        part.state = PartState.UNSENT
                        part.row = None
                u.transition(msg, OutState.UNSENT, "retry requested")
                result.retried.append(msg.id)
                logger.info("message %s to %s: retry requested by a person", msg.id, msg.to)
        return result

    def summary(self, now: datetime) -> dict[str, Any]:
        """Everything `smsgw status` shows, from the state alone (no network, no phone)."""
        with self.unit(now) as u:
            out = u.outgoing()
            incoming = u.db.table("incoming").all()
            counts = {s.value: 0 for s in OutState}
            for m in out:
                counts[m.state.value] += 1
            waiting = [m for m in out if m.state is OutState.UNSENT]
            retries = [m.due for m in waiting if m.retries and m.due]
            log = [e for e in u.meta("send_log", [])
                   if now - datetime.fromisoformat(e[0]) < timedelta(seconds=60)]
            return {
                "outgoing": counts,
                "incoming": {s.value: sum(1 for d in incoming if d["state"] == s.value)
                             for s in InState},
                "updates_queued": len(u.db.table("updates")),
                "oldest_waiting": (
                    {"id": waiting[0].id, "to": waiting[0].to,
                     "since": to_iso(waiting[0].created)} if waiting else None),
                "next_retry": to_iso(min(retries)) if retries else None,
                "last_exchange_ok": self.last_exchange_ok(),
                "last_error": u.meta("last_error"),
                "webapp_failures": u.meta("webapp_failures", 0),
                "last_failures": u.meta("last_failures", []),
                "phone_error": u.meta("phone_error"),
                "parts_last_minute": sum(e[1] for e in log),
                "watcher": u.meta("watcher"),
            }

    def messages(self, now: datetime, limit: int) -> tuple[list[Outgoing], list[Incoming]]:
        """Active and recently archived records, newest last, for `smsgw messages`."""
        with self.unit(now) as u:
            out = u.outgoing()
            incoming = [Incoming.from_dict(d) for d in u.db.table("incoming").all()]
        active = {m.id for m in out}
        old_out: list[Outgoing] = []
        old_in: list[Incoming] = []
        for kind, rec in self.archive.recent(limit * 4):
            if kind == "out" and rec.get("id") not in active:
                old_out.append(Outgoing.from_dict(rec))
            elif kind == "in":
                old_in.append(Incoming.from_dict(rec))
        return (old_out + out)[-limit:], (old_in + incoming)[-limit:]


@dataclass
class RetryResult:
    """What `smsgw retry` did."""

    retried: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    wrong_state: list[tuple[str, str]] = field(default_factory=list)


class Archive:
    """Finished records, one append-only JSON-lines file a day, purged after retention.

    The daemon keeps an index of the archived outgoing ids, read incrementally, so the
    dedup check of a new webapp message never rereads the whole archive. It holds a sorted
    array of 64-bit hashes (under 1 MB for 100,000 ids) plus the statuses of the most
    recent ones; an older id's status is read from the files when it is asked for.
    """

    RECENT = 5000

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._hashes = array("Q")
        self._recent: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._offsets: dict[str, int] = {}

    @staticmethod
    def _hash(msg_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(msg_id.encode("utf-8"), digest_size=8).digest(),
                              "big")

    def _files(self) -> list[Path]:
        if not self.folder.exists():
            return []
        return sorted(self.folder.glob("*.jsonl"))

    def append(self, now: datetime, records: list[tuple[str, dict[str, Any]]]) -> None:
        make_private_dir(self.folder)
        path = self.folder / f"{now.date().isoformat()}.jsonl"
        lines = "".join(
            json.dumps({"kind": kind, "archived": to_iso(now), "record": rec},
                       separators=(",", ":")) + "\n"
            for kind, rec in records
        )
        data = lines.encode("utf-8")
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot write the archive {path}: {exc.strerror}") from None
        size = 0
        try:
            # A crash mid-append leaves a cut last line: end it, so the cut costs only
            # itself and never glues onto (and hides) the first record written now.
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):  # leave no partial line behind
                os.ftruncate(fd, size)
            raise StateError(f"cannot write the archive {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        fsync_dir(self.folder)

    def _lines(self, path: Path, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """Parsed lines from `start`; a torn last line (a crash mid-append) is skipped."""
        with open(path, "rb") as fh:
            fh.seek(start)
            for raw in fh:
                end = fh.tell()
                if not raw.endswith(b"\n"):
                    return
                try:
                    yield end, json.loads(raw)
                except ValueError:
                    logger.warning("skipped a damaged line in %s", path)

    def refresh(self) -> None:
        """Read what was appended since the last call into the id index."""
        files = self._files()
        names = {p.name for p in files}
        if any(name not in names for name in self._offsets):  # purged: start again
            self._hashes = array("Q")
            self._recent.clear()
            self._offsets.clear()
        fresh: list[int] = []
        for path in files:
            start = self._offsets.get(path.name, 0)
            if path.stat().st_size == start:
                continue
            for end, entry in self._lines(path, start):
                if entry.get("kind") == "out":
                    rec = entry.get("record") or {}
                    if "id" in rec and rec.get("local") is not True:  # webapp ids only
                        fresh.append(self._hash(rec["id"]))
                        self._remember(rec["id"], (rec.get("state", "FAILED"), rec.get("reason")))
                self._offsets[path.name] = end
        if len(fresh) > 64:
            self._hashes = array("Q", sorted([*self._hashes, *fresh]))
        else:
            for h in fresh:
                bisect.insort(self._hashes, h)

    def _remember(self, msg_id: str, status: tuple[str, str | None]) -> None:
        self._recent[msg_id] = status
        self._recent.move_to_end(msg_id)
        if len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)

    def status_of(self, msg_id: str) -> tuple[str, str | None] | None:
        """The final status of an archived outgoing message, or None if it is not archived."""
        self.refresh()
        if msg_id in self._recent:
            return self._recent[msg_id]
        h = self._hash(msg_id)
        i = bisect.bisect_left(self._hashes, h)
        if i == len(self._hashes) or self._hashes[i] != h:
            return None
        rec = self.find("out", msg_id, local=False)  # an old id again: rare, read the files
        if rec is None:
            return None  # a hash collision with another id
        status = (rec.get("state", "FAILED"), rec.get("reason"))
        self._remember(msg_id, status)
        return status

    def find(self, kind: str, msg_id: str, local: bool | None = None) -> dict[str, Any] | None:
        """The newest archived record of that kind and id (of that namespace, if given)."""
        found = None
        for path in self._files():
            for _, entry in self._lines(path):
                rec = entry.get("record") or {}
                if entry.get("kind") == kind and rec.get("id") == msg_id and (
                        local is None or (rec.get("local") is True) == local):
                    found = rec
        return found

    def recent(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """The newest `limit` archived records, newest last."""
        out: list[tuple[str, dict[str, Any]]] = []
        for path in reversed(self._files()):
            entries = [(e.get("kind", "?"), e.get("record") or {}) for _, e in self._lines(path)]
            out = entries + out
            if len(out) >= limit:
                break
        return out[-limit:] if limit else out

    def purge(self, older_than: datetime) -> None:
        """Delete day files older than the retention period."""
        cutoff = older_than.date().isoformat()
        for path in self._files():
            if path.stem < cutoff:
                path.unlink()
                logger.info("archive %s removed (older than retention)", path.name)

