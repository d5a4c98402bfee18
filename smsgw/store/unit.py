"""A unit of work on the state: load once under the lock, change in memory, save once.

The only code that changes a message's state is `Unit.transition` (and `Part.move` for its
parts), checked against the transition table in models.py. Values kept beside the records
(the rate log, the phone rows already matched, the inbox position, the last phone error,
the watcher's state) have typed accessors here; callers never see a meta key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tinydb import TinyDB
from tinydb.table import Document

from ..errors import StateError
from ..models import (
    AWAITING_PARTS,
    FINISHED_STATES,
    OUT_MOVES,
    REPORT_RANK,
    REPORTED_STATES,
    Counters,
    Failure,
    HistoryEntry,
    InState,
    Outgoing,
    OutState,
    PhoneProblem,
    RateLog,
    Ref,
    check_move,
    from_iso,
    to_iso,
)
from .storage import STATE_VERSION

if TYPE_CHECKING:
    from ..alertstate import AlertState
    from ..health import PhoneHealth

logger = logging.getLogger(__name__)

HISTORY_LIMIT = 50
FAILURES_KEPT = 10


class Unit:
    """One unit of work: outgoing records are parsed on demand (a lookup parses one)."""

    def __init__(self, db: TinyDB, now: datetime) -> None:
        self.db = db
        self.now = now
        self._raw: dict[int, dict[str, Any]] | None = None  # read on first use
        self._index: dict[Ref, int] | None = None
        self._parsed: dict[int, Outgoing] = {}
        self._dirty: set[int] = set()
        self._removed: set[int] = set()
        self._meta = dict(db.table("meta").get(doc_id=1) or {"version": STATE_VERSION})
        if self._meta.get("version", STATE_VERSION) > STATE_VERSION:
            raise StateError(
                f"the state was written by a newer smsgw (format {self._meta['version']}, "
                f"this one knows {STATE_VERSION}); upgrade smsgw"
            )
        self._meta_dirty = False
        self._new_updates: dict[str, dict[str, Any]] = {}  # by id: the newest only
        self._superseded: set[str] = set()  # ids whose queued update a newer one replaces
        self._queued_ids: set[str] | None = None  # ids with an update on disk
        self._notes: list[tuple[int, str, tuple[Any, ...]]] = []

    # meta, for the store package only ------------------------------------------------
    def _get(self, key: str, default: Any = None) -> Any:
        return self._meta.get(key, default)

    def _set(self, key: str, value: Any) -> None:
        if self._meta.get(key) != value:
            self._meta[key] = value
            self._meta_dirty = True

    # typed values beside the records ------------------------------------------------
    @property
    def rate_log(self) -> RateLog:
        """Parts handed to the phone recently (owner: the gateway's sending step)."""
        return RateLog(tuple((from_iso(at), int(n)) for at, n in self._get("send_log", [])
                             if from_iso(at) is not None))  # type: ignore[misc]

    @rate_log.setter
    def rate_log(self, log: RateLog) -> None:
        self._set("send_log", [[to_iso(at), n] for at, n in log.entries])

    @property
    def used_rows(self) -> dict[str, tuple[datetime, int]]:
        """Phone rows already matched to a send: key -> (row date, times used)
        (owner: the gateway's reconcile step)."""
        return {k: (from_iso(v[0]), int(v[1]))  # type: ignore[misc]
                for k, v in self._get("used_rows", {}).items()}

    @used_rows.setter
    def used_rows(self, rows: dict[str, tuple[datetime, int]]) -> None:
        self._set("used_rows", {k: [to_iso(at), n] for k, (at, n) in rows.items()})

    @property
    def inbox_position(self) -> dict[str, Any] | None:
        """Where the inbox was read up to: opaque to all but the phone (owner: the inbox
        step, through Store.save_inbox)."""
        return self._get("inbox_position")

    @property
    def phone_problem(self) -> PhoneProblem | None:
        """The last error from the phone, until it answers again (owner: the gateway)."""
        raw = self._get("phone_error")
        return PhoneProblem(from_iso(raw["at"]), raw["text"]) if raw else None  # type: ignore[arg-type]

    @phone_problem.setter
    def phone_problem(self, problem: PhoneProblem | None) -> None:
        if problem is not None:
            self.count(phone_errors=1)
        self._set("phone_error", None if problem is None else
                  {"at": to_iso(problem.at), "text": problem.text})
        if problem is not None:
            self._set("phone_error_last", {"at": to_iso(problem.at), "text": problem.text})

    @property
    def last_phone_error(self) -> PhoneProblem | None:
        """The latest error from the phone, kept when the phone answers again (the alert
        step tells from it that a send failed since it last looked)."""
        raw = self._get("phone_error_last")
        return PhoneProblem(from_iso(raw["at"]), raw["text"]) if raw else None  # type: ignore[arg-type]

    @property
    def counters(self) -> Counters:
        """What happened, counted by UTC day and in all (owner: this unit, which counts
        in the same write as the change it counts)."""
        try:
            return Counters.from_dict(self._get("counters"))
        except (TypeError, ValueError, AttributeError):
            logger.warning("the counters in the state are damaged: counting starts again")
            return Counters()

    def count(self, **counts: int) -> None:
        """Add to today's counters (sent, failed, received, parts, phone_errors)."""
        self._set("counters", self.counters.add(self.now, **counts).to_dict())

    @property
    def watcher(self) -> str | None:
        """Why the notification watcher is off, if it is (owner: the watcher)."""
        return self._get("watcher")

    @watcher.setter
    def watcher(self, text: str | None) -> None:
        self._set("watcher", text)

    @property
    def phone_health(self) -> PhoneHealth | None:
        """The last sample of the phone's battery, SIM and network (owner: the gateway's
        health step)."""
        raw = self._get("phone_health")
        if not raw:
            return None
        from ..health import PhoneHealth  # on use: `import smsgw.store` stays light

        return PhoneHealth.from_dict(raw)

    @phone_health.setter
    def phone_health(self, health: PhoneHealth | None) -> None:
        self._set("phone_health", None if health is None else health.to_dict())

    @property
    def alert_state(self) -> AlertState:
        """Conditions observed, alerts sent (owner: the gateway's health step)."""
        from ..alertstate import AlertState  # on use: `import smsgw.store` stays light

        return AlertState.from_dict(self._get("alerts"))

    @alert_state.setter
    def alert_state(self, state: AlertState) -> None:
        self._set("alerts", state.to_dict())

    @property
    def failures(self) -> list[Failure]:
        """The latest messages that went FAILED and are still FAILED."""
        return [Failure(f["id"], f["to"], f.get("reason"), from_iso(f["at"]))  # type: ignore[arg-type]
                for f in self._get("last_failures", [])]

    # outgoing messages --------------------------------------------------------------
    @property
    def _docs(self) -> dict[int, dict[str, Any]]:
        """The stored outgoing records by doc id, as parsed from the file (read only: TinyDB
        would copy each into a Document, a cost felt with a long backlog)."""
        if self._raw is None:
            data = self.db.storage.read() or {}
            self._raw = {int(k): v for k, v in (data.get("outgoing") or {}).items()}
        return self._raw

    def _ref_of(self, doc: dict[str, Any]) -> Ref:
        return Ref(doc["id"], doc.get("local") is True)

    def _refs(self) -> dict[Ref, int]:
        if self._index is None:
            self._index = {self._ref_of(d): i for i, d in self._docs.items()}
            for i, msg in self._parsed.items():
                self._index[msg.ref] = i
        return self._index

    def _msg(self, doc_id: int) -> Outgoing:
        msg = self._parsed.get(doc_id)
        if msg is None:
            msg = self._parsed[doc_id] = Outgoing.from_dict(self._docs[doc_id])
        return msg

    def _view(self, doc_id: int) -> dict[str, Any]:
        """The stored form of a record; of its parsed copy once parsed, as the copy may
        have changed in this unit (read only)."""
        msg = self._parsed.get(doc_id)
        return msg.to_dict() if msg is not None else self._docs[doc_id]

    def _select(self, keep: Callable[[dict[str, Any]], bool]) -> list[int]:
        ids = set(self._docs) | set(self._parsed)
        return [i for i in sorted(ids - self._removed) if keep(self._view(i))]

    def get(self, ref: Ref | str) -> Outgoing | None:
        """The active message with this ref; a bare string is a webapp id."""
        if isinstance(ref, str):
            ref = Ref(ref)
        doc_id = self._refs().get(ref)
        return None if doc_id is None or doc_id in self._removed else self._msg(doc_id)

    def lookup(self, msg_id: str) -> Outgoing | None:
        """The active message a person names by id: a webapp one, else a local one."""
        return self.get(Ref(msg_id)) or self.get(Ref(msg_id, local=True))

    def starting_with(self, prefix: str) -> list[Outgoing]:
        """Active messages (of both namespaces) whose id starts with `prefix`."""
        return [self._msg(i) for i in self._select(lambda d: d["id"].startswith(prefix))]

    def outgoing(self) -> list[Outgoing]:
        """Every active message, in arrival order."""
        return [self._msg(i) for i in self._select(lambda d: True)]

    def due(self, now: datetime) -> list[Ref]:
        """UNSENT messages whose (re)try time has come, in arrival order, alerts to the
        operator first (an alert must not wait behind a backlog paced by the rate limit)."""
        docs = [self._view(i) for i in self._select(
            lambda d: d["state"] == OutState.UNSENT.value
            and (d.get("due") is None or from_iso(d["due"]) <= now))]  # type: ignore[operator]
        return [self._ref_of(d) for d in sorted(docs, key=lambda d: d.get("alert") is not True)]

    def unsent_since_before(self, cutoff: datetime) -> list[Outgoing]:
        """UNSENT messages that arrived before `cutoff` (for the time-to-live)."""
        return [self._msg(i) for i in self._select(
            lambda d: d["state"] == OutState.UNSENT.value
            and from_iso(d["created"]) < cutoff)]  # type: ignore[operator]

    def awaiting_phone(self) -> list[Outgoing]:
        """Messages with a part handed over (or maybe) whose phone row is not seen yet."""
        return [self._msg(i) for i in self._select(
            lambda d: any(p["state"] in AWAITING_PARTS for p in d.get("parts", [])))]

    def awaiting_handoffs(self) -> list[datetime | None]:
        """When each part awaiting the phone's record was handed over (None: unknown),
        read without parsing a record (the reconcile step asks it every cycle)."""
        return [from_iso(p.get("handoff")) for i in self._select(lambda d: True)
                for p in self._view(i).get("parts", []) if p["state"] in AWAITING_PARTS]

    def finished(self) -> list[Outgoing]:
        """SENT, DELIVERED and FAILED messages, ready for the archive."""
        return [self._msg(i) for i in self._select(lambda d: d["state"] in FINISHED_STATES)]

    def next_retry(self) -> datetime | None:
        """The earliest time a waiting retry is due."""
        times = [from_iso(self._view(i)["due"]) for i in self._select(
            lambda d: d["state"] == OutState.UNSENT.value and d.get("due") is not None)]
        return min(times) if times else None  # type: ignore[type-var]

    def touch(self, msg: Outgoing) -> None:
        """Mark a message changed so it is saved."""
        self._dirty.add(msg.seq)

    def add(self, msg: Outgoing) -> None:
        """Put a message in the active queue as it is (new, or back from the archive)."""
        msg.seq = int(self._get("next_seq", 1))
        self._set("next_seq", msg.seq + 1)
        self._parsed[msg.seq] = msg
        self._refs()[msg.ref] = msg.seq
        self.touch(msg)

    def create(self, msg: Outgoing, detail: str | None = None) -> None:
        """Add a message that has just arrived, in its first state (UNSENT, or FAILED when
        refused), and tell the webapp; `detail` as for `transition`."""
        self.add(msg)
        self._record(msg, msg.state, msg.reason, detail=detail)

    def drop(self, msg: Outgoing) -> None:
        """Take a message out of the active queue (into the archive)."""
        self._dirty.discard(msg.seq)
        self._removed.add(msg.seq)
        self._refs().pop(msg.ref, None)

    def transition(self, msg: Outgoing, state: OutState, reason: str | None = None, *,
                   detail: str | None = None, level: int | None = None) -> None:
        """Move a message to `state` as the transition table allows, keep its history, and
        queue the status the webapp should hear. An illegal move changes nothing.

        The move is the one line of the event log for it: `detail` adds what the log
        should tell beyond the reason (the number, the parts, the retry), `level` overrides
        the level (INFO; WARNING for FAILED)."""
        check_move(OUT_MOVES, msg.state, state, f"message {msg.id}")
        old = msg.state
        if msg.state is OutState.FAILED:
            self._set("last_failures", [f for f in self._get("last_failures", [])
                                        if f["id"] != msg.id])
        msg.state = state
        self._record(msg, state, reason, old, detail=detail, level=level)

    def _record(self, msg: Outgoing, state: OutState, reason: str | None,
                old: OutState | None = None, *, detail: str | None = None,
                level: int | None = None) -> None:
        if level is None:
            level = logging.WARNING if state is OutState.FAILED else logging.INFO
        self.note(level, "message %s: %s -> %s%s%s", msg.id, old.value if old else "new",
                  state.value, f" ({reason})" if reason else "", f": {detail}" if detail else "")
        if state is OutState.SENT:
            self.count(sent=1, parts=msg.sms_count())
            self._set("last_sent", to_iso(self.now))
        elif state is OutState.FAILED:
            self.count(failed=1)
        msg.reason = reason
        msg.last_activity = self.now
        msg.history.append(HistoryEntry(state.value, self.now, reason))
        del msg.history[:-HISTORY_LIMIT]
        if state in REPORTED_STATES and not msg.local:
            self._report(msg, state, reason)
        if state is OutState.FAILED:
            failures = [f for f in self._get("last_failures", []) if f["id"] != msg.id]
            failures.append({"id": msg.id, "to": msg.to, "reason": reason,
                             "at": to_iso(self.now)})
            self._set("last_failures", failures[-FAILURES_KEPT:])
        self.touch(msg)

    @property
    def last_sent(self) -> datetime | None:
        """When a message last became SENT (owner: transitions, beside the count)."""
        return from_iso(self._get("last_sent"))


    # the event log ------------------------------------------------------------------
    def note(self, level: int, fmt: str, *args: Any) -> None:
        """A line for the event log, written once this unit is saved: the log tells
        only changes that landed (one line for each state change of a message)."""
        self._notes.append((level, fmt, args))

    def announce(self) -> None:
        """Write the lines noted in this unit (the Store calls it after saving)."""
        for level, fmt, args in self._notes:
            logger.log(level, fmt, *args)
        self._notes.clear()

    # updates for the webapp ---------------------------------------------------------
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

    def update_queued(self, msg_id: str) -> bool:
        """Whether a status update for this webapp id is waiting for a POST."""
        if self._queued_ids is None:
            self._queued_ids = {d["id"] for d in self.db.table("updates").all()}
        return msg_id in self._new_updates or msg_id in self._queued_ids

    def queue_update(self, msg_id: str, status: str, reason: str | None = None) -> None:
        """Queue a status for a webapp id; it replaces one still queued for that id, so the
        webapp never gets an older status after a newer one, in one POST or across POSTs."""
        self._new_updates.pop(msg_id, None)  # the newest goes last
        self._superseded.add(msg_id)
        self._new_updates[msg_id] = {"id": msg_id, "status": status, "reason": reason}

    def queued_for_webapp(self) -> int:
        """Incoming SMS and status updates waiting for a POST."""
        waiting = sum(1 for d in self.db.table("incoming").all()
                      if d["state"] == InState.WAITING.value)
        stale = sum(1 for d in self.db.table("updates").all() if d["id"] in self._superseded)
        return waiting + len(self.db.table("updates")) - stale + len(self._new_updates)

    # saving ---------------------------------------------------------------------------
    def save(self) -> None:
        out = self.db.table("outgoing")
        gone = [i for i in self._removed if i in self._docs]
        if gone:
            out.remove(doc_ids=gone)
        changed = self._dirty - self._removed
        existing = [i for i in changed if i in self._docs]
        if existing:
            data = {i: self._parsed[i].to_dict() for i in existing}

            def replace(doc: dict[str, Any]) -> None:
                fresh = data[doc["seq"]]
                doc.clear()
                doc.update(fresh)

            out.update(replace, doc_ids=existing)
        fresh = [i for i in changed if i not in self._docs]
        if fresh:
            out.insert_multiple(Document(self._parsed[i].to_dict(), doc_id=i) for i in fresh)
        if self._superseded:
            updates = self.db.table("updates")
            stale = [d.doc_id for d in updates.all() if d["id"] in self._superseded]
            if stale:
                updates.remove(doc_ids=stale)
        if self._new_updates:
            self.db.table("updates").insert_multiple(self._new_updates.values())
        if self._meta_dirty:
            self.db.table("meta").upsert(Document(self._meta, doc_id=1))
