"""The Store: the gateway's state in one folder, and the domain operations on it.

Layout of the state folder:
  state.json      TinyDB (tables outgoing, incoming, updates, meta), rewritten atomically
  state.lock      fcntl lock held for each unit of work, so the daemon and `smsgw retry`
                  never lose each other's writes
  exchange.json   the time of the last successful exchange (a small side file)
  archive/DAY.jsonl  finished records, append-only, one file a day, kept `retention_days`

A unit of work (`Store.unit()`) takes the lock, re-reads state.json, and writes it at most
once, atomically, when it ends without an exception: everything done in one unit lands
together or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinydb import TinyDB
from tinydb.middlewares import CachingMiddleware

from ..config import check_private_file, make_private_dir
from ..errors import StateError
from ..models import (
    REPORTED_STATES,
    ExchangeProblem,
    Incoming,
    InState,
    Offered,
    Outgoing,
    OutState,
    PartState,
    Update,
    from_iso,
    to_iso,
)
from .archive import Archive
from .storage import (
    LOCAL_PREFIX,
    STATE_VERSION,
    AtomicJSONStorage,
    StateCache,
    check_shape,
    migrate,
    state_lock,
)
from .unit import Unit

if TYPE_CHECKING:
    from ..alertstate import Alert, AlertState
    from .views import Listing, MessageFilter, QueueHealth

logger = logging.getLogger(__name__)

RECENT_KEYS = 1000  # inbox row keys remembered beyond the read position, for dedup


def _half_character(text: str) -> bool:
    """Whether `text` holds a lone surrogate (half of a character outside the BMP)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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


@dataclass
class RetryResult:
    """What `smsgw retry` did."""

    retried: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    wrong_state: list[tuple[str, str]] = field(default_factory=list)
    ambiguous: list[tuple[str, list[str]]] = field(default_factory=list)  # prefix, ids


@dataclass
class CancelResult:
    """What `smsgw cancel` did: cancelled ids (with how many parts had already gone out,
    of how many), and the ids it could not cancel."""

    cancelled: list[tuple[str, bool, int, int]] = field(default_factory=list)  # id, local
    not_found: list[str] = field(default_factory=list)
    wrong_state: list[tuple[str, str]] = field(default_factory=list)
    ambiguous: list[tuple[str, list[str]]] = field(default_factory=list)


CANCELLED = "cancelled"  # the reason of a message FAILED by `smsgw cancel`


def _parts(n: int) -> str:
    return f"{n} SMS part{'' if n == 1 else 's'}"


class Store:
    """The state of one gateway: a folder holding state.json, its lock and the archive."""

    def __init__(self, folder: Path, retention_days: int = 30) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "state.json"
        self.retention = timedelta(days=retention_days)
        self.archive = Archive(self.folder / "archive")
        self._cache = StateCache()
        self._backup_day: date | None = None  # the UTC day the daily backup is done for
        make_private_dir(self.folder)
        self._check_readable()

    def _storage(self) -> AtomicJSONStorage:
        return AtomicJSONStorage(str(self.path), self._cache)

    def _check_readable(self) -> None:
        """Refuse at start-up a state file that cannot be loaded or has the wrong shape;
        create a missing one; migrate an older format."""
        with self._locked():
            for tmp in self.folder.glob(".state.json.*.tmp"):  # left by a crash mid-write
                tmp.unlink(missing_ok=True)
            for name in ("state.json", "state.lock", "exchange.json"):
                check_private_file(self.folder / name)
            storage = self._storage()
            data = storage.read()
            if data is None:
                storage.write({"meta": {"1": {"version": STATE_VERSION}}})
                return
            check_shape(data, self.path)
            version = int((data.get("meta", {}).get("1") or {}).get("version", STATE_VERSION))
            if version > STATE_VERSION:
                raise StateError(
                    f"the state in {self.path} was written by a newer smsgw; upgrade smsgw")
            if version < STATE_VERSION:
                storage.write(migrate(data, version))
                logger.info("state file %s migrated from format %d to %d", self.path,
                            version, STATE_VERSION)

    def _locked(self) -> AbstractContextManager[None]:
        return state_lock(self.folder)

    @contextmanager
    def unit(self, now: datetime) -> Iterator[Unit]:
        """A unit of work under the lock; saved in one atomic write if it ends cleanly."""
        with self._locked():
            storage = partial(AtomicJSONStorage, cache=self._cache)
            db = TinyDB(str(self.path), storage=CachingMiddleware(storage))  # type: ignore[arg-type]
            # No db.close(): closing flushes, and a unit that failed must write nothing.
            try:
                unit = Unit(db, now)
                yield unit
                unit.save()
                db.storage.flush()
                unit.announce()
            except BaseException:
                self._cache.forget()  # TinyDB changed the parsed copy in place
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
            position = u.inbox_position
            start = from_iso(u._get("forward_since"))
            if position is None and start is None:
                start = now
                u._set("forward_since", to_iso(now))
            return position, start, u.phone_problem is not None

    def forward_since(self, now: datetime) -> datetime | None:
        """The start point of forwarding (see `inbox_state`), None before any is set."""
        with self.unit(now) as u:
            return from_iso(u._get("forward_since"))

    def set_forward_since(self, when: datetime, now: datetime, *, keep: bool = False) -> bool:
        """Forward SMS received from `when` on: the inbox is read again from there.

        With `keep`, only set it when the gateway has no start point yet (first set-up).
        SMS already stored are not forwarded twice: rows are checked against the keys of
        the last RECENT_KEYS stored. Returns whether the start point changed.
        """
        with self.unit(now) as u:
            if keep and (u._get("forward_since") or u.inbox_position is not None):
                return False
            u._set("forward_since", to_iso(when))
            u._set("inbox_position", None)
        logger.info("forwarding incoming SMS received from %s on", to_iso(when))
        return True

    def save_inbox(self, rows: Iterable[Any], position: dict[str, Any], now: datetime,
                   bad: Iterable[Any] = ()) -> list[Incoming]:
        """Store new inbox rows with fresh UUIDs in the same write that moves the position;
        rows the phone could not read (`bad`) are kept set aside, each key once."""
        stored: list[Incoming] = []
        details: dict[str, str] = {}  # what the one line of an SMS adds to its reason
        with self.unit(now) as u:
            recent: list[str] = list(u._get("inbox_keys", []))
            seen = set(recent)
            for row in bad:
                if row.key in seen:
                    continue
                seen.add(row.key)
                recent.append(row.key)
                aside = Incoming(id=str(uuid.uuid4()), from_="", content=row.raw, sms_sent=0,
                                 sms_received=0, state=InState.SET_ASIDE, key=row.key,
                                 stored=now, reason=f"unreadable row: {row.reason}")
                stored.append(aside)
                details[aside.id] = "not forwarded"
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
                    details[msg.id] = "kept, not forwarded"
                elif _half_character(row.body):
                    # As JSON it needs a \ud83d escape, which PHP's json_decode refuses:
                    # the whole POST, and every SMS in it, would be lost.
                    msg.state, msg.reason = InState.SET_ASIDE, "the text holds half a character"
                    msg.content = row.body.encode("utf-8", "backslashreplace").decode("utf-8")
                    details[msg.id] = "a lone surrogate; kept, not forwarded"
                elif not row.body:
                    details[msg.id] = "empty; forwarded (cht-core ignores empty SMS)"
                stored.append(msg)
            if stored:
                u.db.table("incoming").insert_multiple(m.to_dict() for m in stored)
                u.count(received=len(stored))
            u._set("inbox_keys", recent[-RECENT_KEYS:])
            u._set("inbox_position", position)
        for msg in stored:  # the one line of each incoming SMS's state change
            detail = details.get(msg.id)
            logger.log(logging.WARNING if msg.state is InState.SET_ASIDE else logging.INFO,
                       "received SMS %s from %s: new -> %s%s%s", msg.id, msg.from_ or "?",
                       msg.state.value, f" ({msg.reason})" if msg.reason else "",
                       f": {detail}" if detail else "")
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
        posted = {doc_id: (up.id, up.status) for doc_id, up in zip(batch.update_ids,
                                                                     batch.updates,
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
        if offered:
            self.archive.refresh()  # before the lock: the lookups below cost a read each
        with self.unit(now) as u:
            if batch.incoming:
                ids = {m.id for m in batch.incoming}
                u.db.table("incoming").update(
                    {"state": InState.FORWARDED.value, "forwarded": to_iso(now)},
                    lambda d: d["id"] in ids,
                )
                for m in batch.incoming:
                    u.note(logging.INFO, "received SMS %s: WAITING -> FORWARDED", m.id)
            if batch.update_ids:
                self._drop_posted(u, batch)
            self._accept(u, offered, result)
            u._set("webapp_failures", 0)
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
            tmp.unlink(missing_ok=True)  # a link left there is removed, never followed
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({"last_exchange_ok": to_iso(now)}))
            os.replace(tmp, path)  # replaces a link at `path` itself, not what it points to
        except OSError as exc:
            logger.warning("cannot record the last exchange time: %s", exc)

    def last_exchange_ok(self) -> datetime | None:
        """When an exchange last got a 2xx, if ever."""
        try:
            data = json.loads((self.folder / "exchange.json").read_text(encoding="utf-8"))
            return from_iso(data.get("last_exchange_ok")) if isinstance(data, dict) else None
        except (OSError, ValueError, TypeError):
            return None

    def _accept(self, u: Unit, offered: list[tuple[Offered, str | None]],
                result: AcceptResult) -> None:
        seen_now: set[str] = set()
        for msg, invalid in offered:
            archived = None if msg.id is None else self.archive.status_of(msg.id, False)
            if msg.id is not None and (msg.id in seen_now or u.get(msg.id) is not None
                                       or archived is not None):
                self._requeue_known(u, msg.id, archived)
                result.known.append(msg.id)
                continue
            if invalid is not None:
                result.invalid.append((msg.id, invalid))
                if msg.id is None:
                    logger.warning("webapp message without id ignored: %s", invalid)
                    continue
                u.create(Outgoing(id=msg.id, to=str(msg.to or ""), content=str(msg.content or ""),
                                  state=OutState.FAILED, reason=invalid, created=u.now,
                                  last_activity=u.now, sms_parts=msg.sms_parts))
                seen_now.add(msg.id)
                continue
            assert msg.id is not None and msg.to is not None and msg.content is not None
            u.create(Outgoing(id=msg.id, to=msg.to, content=msg.content, state=OutState.UNSENT,
                              created=u.now, last_activity=u.now, due=u.now,
                              sms_parts=msg.sms_parts),
                     detail=f"queued, to {msg.to}" + ("" if msg.sms_parts is None else
                                                      f", {_parts(msg.sms_parts)}"))
            seen_now.add(msg.id)
            result.new.append(msg.id)

    def _requeue_known(self, u: Unit, msg_id: str,
                       archived: tuple[str, str | None] | None) -> None:
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
            status, reason = archived or ("FAILED", None)
            u.queue_update(msg_id, status, reason)
        logger.info("message %s offered again: status re-sent, not sent again", msg_id)

    def record_exchange_error(self, now: datetime, text: str, status: int | None = None,
                              message: str | None = None) -> None:
        """Remember the last failed exchange and the webapp's own words."""
        with self.unit(now) as u:
            u._set("last_error", {"at": to_iso(now), "text": text,
                                  "status": status, "message": message})
            u._set("webapp_failures", int(u._get("webapp_failures", 0)) + 1)

    def record_clock_jump(self, now: datetime, seconds: float) -> None:
        """Remember the last jump of the wall clock, for `smsgw status`."""
        with self.unit(now) as u:
            u._set("clock_jump", {"at": to_iso(now), "seconds": round(seconds)})

    def exchange_problem(self, now: datetime) -> tuple[ExchangeProblem | None, int]:
        """The last failed exchange, and how many failed since the last good one."""
        with self.unit(now) as u:
            return self._last_error(u), int(u._get("webapp_failures", 0))

    @staticmethod
    def _last_error(u: Unit) -> ExchangeProblem | None:
        raw = u._get("last_error")
        return ExchangeProblem(from_iso(raw["at"]), raw["text"], raw.get("status"),  # type: ignore[arg-type]
                               raw.get("message")) if raw else None

    # housekeeping ---------------------------------------------------------
    def archive_finished(self, now: datetime) -> int:
        """Move finished outgoing and forwarded incoming records to the archive, and drop
        the day files past retention."""
        with self.unit(now) as u:
            done = u.finished()
            forwarded = [d for d in u.db.table("incoming").all()
                         if d["state"] == InState.FORWARDED.value]
            written = None
            if done or forwarded:
                written = self.archive.append(now, [("out", m.to_dict()) for m in done]
                                              + [("in", dict(d)) for d in forwarded])
            for m in done:
                u.drop(m)
            if forwarded:
                u.db.table("incoming").remove(doc_ids=[d.doc_id for d in forwarded])
            self._retain(u, now, written)
            return len(done) + len(forwarded)

    def daily_backup(self, now: datetime) -> None:
        """Keep a copy of the state at the first call of each UTC day (see backup.py);
        otherwise one date check, no file touched."""
        day = now.astimezone(timezone.utc).date()
        if day == self._backup_day:
            return
        self._backup_day = day
        from .backup import daily

        daily(self.folder, now)

    def _retain(self, u: Unit, now: datetime, written: str | None) -> None:
        """Drop the day files older than retention, by a measure no clock jump collapses.

        Age counts the days the gateway saw (a tick each time the date changes, whatever
        the jump), and a file is dropped only when it is that many ticks old AND older than
        retention by the clock: a clock 60 days ahead, or far behind and then corrected,
        costs a tick or two, never the dedup of the ids archived meanwhile.
        """
        today = now.date().isoformat()
        new_day = u._get("last_day") != today
        if not new_day and written is None:
            return
        tick = int(u._get("day_tick", 0)) + (1 if new_day else 0)
        u._set("day_tick", tick)
        u._set("last_day", today)
        days: dict[str, int] = dict(u._get("archive_days", {}))
        if written is not None:
            days[written] = tick
        names = self.archive.file_names()
        for name in names:
            days.setdefault(name, tick)  # first seen now (e.g. written by 0.1): a full term
        keep_ticks = self.retention.days
        cutoff = (now - self.retention).date().isoformat()
        expired = [n for n in names if tick - days[n] >= keep_ticks and n[:10] < cutoff]
        if expired:
            self.archive.remove(expired)
        u._set("archive_days", {n: t for n, t in days.items()
                                if n in names and n not in expired})

    # commands -------------------------------------------------------------
    def add_local(self, number: str, text: str, now: datetime) -> Outgoing:
        """Queue a message from `smsgw send`; the webapp never hears of it."""
        with self.unit(now) as u:
            msg = Outgoing(id=f"{LOCAL_PREFIX}{uuid.uuid4()}", to=number, content=text,
                           state=OutState.UNSENT, created=now, last_activity=now, due=now,
                           local=True)
            u.create(msg, detail=f"local message queued, to {number}")
        return msg

    def queue_alerts(self, now: datetime, number: str,
                     step: Callable[[Unit, ExchangeProblem | None],
                                    tuple[AlertState, Sequence[Alert]]]) -> list[Outgoing]:
        """Run the alert step and queue what it decides in ONE unit of work, so that a crash
        never sends an alert twice nor loses one: `step` reads the unit and the webapp's
        failure (the last exchange error, None once an exchange succeeded after it) and
        returns the new alert state and the alerts; each alert becomes a local message to
        `number` (never posted to the webapp), saved with that state."""
        last_ok = self.last_exchange_ok()
        queued: list[Outgoing] = []
        with self.unit(now) as u:
            problem = self._last_error(u)
            if problem is not None and last_ok is not None and problem.at <= last_ok:
                problem = None
            state, alerts = step(u, problem)
            for alert in alerts:
                msg = Outgoing(id=f"{LOCAL_PREFIX}{uuid.uuid4()}", to=number, content=alert.text,
                               state=OutState.UNSENT, created=now, last_activity=now, due=now,
                               local=True, alert=True)
                u.create(msg)
                u.note(logging.INFO if alert.recovery else logging.WARNING,
                       "%s SMS %s queued to %s: %s", "recovery" if alert.recovery else "alert",
                       msg.id, number, alert.text)
                queued.append(msg)
            u.alert_state = state  # written only when it changed
        return queued

    def _resolve(self, u: Unit, text: str) -> tuple[Outgoing, bool] | list[str] | None:
        """The outgoing message a person names by its id or a unique prefix of it, active
        or archived: (message, archived), the candidate ids when the prefix is ambiguous,
        or None. An exact id always wins (a webapp one before a local one); an active exact
        id costs no archive read, an archived one the same single pass as before."""
        msg = u.lookup(text)
        if msg is not None:
            return msg, False
        active = u.starting_with(text)
        archived = [Outgoing.from_dict(r) for r in self.archive.matching("out", text)]
        exact = sorted((m for m in archived if m.id == text), key=lambda m: m.local)
        if exact:
            return exact[0], True
        found = [(m, False) for m in active] + [(m, True) for m in archived]
        if len(found) == 1:
            return found[0]
        if found:
            return sorted({m.id for m, _ in found})
        return None

    def _named(self, u: Unit, ids: list[str], result: RetryResult | CancelResult
               ) -> Iterator[tuple[Outgoing, bool]]:
        """(message, archived) for each id or prefix a person gave that names one message;
        the others are noted in `result` as not found or ambiguous."""
        for text in ids:
            found = self._resolve(u, text)
            if isinstance(found, list):
                result.ambiguous.append((text, found))
            elif found is None:
                result.not_found.append(text)
            else:
                yield found

    def retry(self, ids: list[str], all_failed: bool, now: datetime) -> RetryResult:
        """Restart FAILED messages from retry #1 (`smsgw retry`), in one unit of work.

        Each id may be a unique prefix. An archived FAILED message comes back into the
        queue as the same record (the archive marks it revived); a message in any other
        state is left as it is, and nothing is written when nothing is retried.
        """
        result = RetryResult()
        with self.unit(now) as u:
            targets: list[Outgoing] = []
            if all_failed:
                targets = [m for m in u.outgoing() if m.state is OutState.FAILED]
            for msg, archived in self._named(u, ids, result):
                if archived and msg.state is OutState.FAILED:
                    self.archive.revive(now, msg.ref)
                    u.add(msg)
                if msg.state is not OutState.FAILED:
                    result.wrong_state.append((msg.id, msg.state.value))
                elif msg not in targets:
                    targets.append(msg)
            for msg in targets:
                msg.retries = 0
                msg.due = now
                msg.reported = None  # a new attempt: the webapp hears UNSENT again
                for part in msg.parts:
                    if part.state is not PartState.SENT:
                        part.move(PartState.UNSENT)
                        part.row = None
                u.transition(msg, OutState.UNSENT, "retry requested",
                             detail=f"by a person, to {msg.to}")
                result.retried.append(msg.id)
        return result

    def cancel(self, ids: list[str], now: datetime) -> CancelResult:
        """FAIL messages not yet handed to the phone (UNSENT: first try or waiting for a
        retry) with the reason `cancelled` (`smsgw cancel`), deciding and changing in one
        unit of work, so a running daemon either sent a message before or never will.

        Each id may be a unique prefix. The webapp hears FAILED through the usual update
        queue (a local message is never posted); any other state is left as it is.
        """
        result = CancelResult()
        with self.unit(now) as u:
            for msg, archived in self._named(u, ids, result):
                if archived or msg.state is not OutState.UNSENT:
                    result.wrong_state.append((msg.id, msg.state.value))
                    continue
                u.transition(msg, OutState.FAILED, CANCELLED, detail=f"by a person, to {msg.to}")
                msg.due = None
                gone = sum(1 for p in msg.parts if p.state is PartState.SENT)
                result.cancelled.append((msg.id, msg.local, gone, len(msg.parts)))
        return result

    # read views -------------------------------------------------------------
    def summary(self, now: datetime) -> dict[str, Any]:
        """Everything `smsgw status` shows (see views.summary)."""
        from .views import summary

        return summary(self, now)

    def health(self, now: datetime) -> QueueHealth:
        """The queue figures of the health report (see views.health)."""
        from .views import health

        return health(self, now)

    def messages(self, now: datetime, limit: int, state: str | None = None,
                 only: MessageFilter | None = None) -> Listing:
        """Messages for `smsgw messages` (see views.listing)."""
        from .views import listing

        return listing(self, now, limit, state, only)

    def completion_ids(self, now: datetime, kind: str,
                       states: frozenset[str] | None = None) -> list[str]:
        """Ids for shell completion (see views.completion_ids)."""
        from .views import completion_ids

        return completion_ids(self, now, kind, states)
