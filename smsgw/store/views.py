"""Read views of the state for `smsgw status` and `smsgw messages`: one source of truth.

A message is in the active queue or in the archive, never both: the listing shows each id
once, in its current state; the counts are of the active queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..models import FINISHED_STATES, Incoming, InState, Outgoing, OutState, from_iso, to_iso

if TYPE_CHECKING:
    from ..health import PhoneHealth
    from .store import Store


def summary(store: Store, now: datetime) -> dict[str, Any]:
    """Everything `smsgw status` shows, from the state alone (no network, no phone)."""
    problem, failures = store.exchange_problem(now)
    with store.unit(now) as u:
        out = u.outgoing()
        incoming = u.db.table("incoming").all()
        counts = {s.value: 0 for s in OutState}
        for m in out:
            counts[m.state.value] += 1
        waiting = [m for m in out if m.state is OutState.UNSENT]
        retries = [m.due for m in waiting if m.retries and m.due]
        # by state, a retry waiting for its time apart from the first tries
        groups: dict[str, list[Outgoing]] = {}
        for m in out:
            key = "RETRYING" if m.state is OutState.UNSENT and m.retries else m.state.value
            groups.setdefault(key, []).append(m)
        by_state = {key: {"count": len(ms), "oldest_since": to_iso(min(m.created for m in ms))}
                    for key, ms in groups.items()}
        retrying = sorted((m for m in waiting if m.retries),
                          key=lambda m: (m.due or now, m.seq))
        counters = u.counters
        phone = u.phone_problem
        last_ok = store.last_exchange_ok()
        return {
            "outgoing": counts,
            "incoming": {s.value: sum(1 for d in incoming if d["state"] == s.value)
                         for s in InState},
            "updates_queued": len(u.db.table("updates")),
            "oldest_waiting": (
                {"id": waiting[0].id, "to": waiting[0].to,
                 "since": to_iso(waiting[0].created)} if waiting else None),
            "next_retry": to_iso(min(retries)) if retries else None,
            "by_state": by_state,
            "retrying": [{"id": m.id, "to": m.to, "retries": m.retries,
                          "next_try": to_iso(m.due), "reason": m.reason}
                         for m in retrying],
            "counters": {"today": counters.since(now, 1).to_dict(),
                         "last_7_days": counters.since(now, 7).to_dict(),
                         "all_time": counters.total().to_dict()},
            "last_exchange_ok": to_iso(last_ok),
            "last_error": None if problem is None else {
                "at": to_iso(problem.at), "text": problem.text, "status": problem.status,
                "message": problem.message},
            "webapp_failures": failures,
            # the last exchange failed: an error and no success after it
            "webapp_failing": problem is not None and (last_ok is None or problem.at > last_ok),
            "last_failures": [{"id": f.id, "to": f.to, "reason": f.reason, "at": to_iso(f.at)}
                              for f in u.failures],
            "phone_error": None if phone is None else {"at": to_iso(phone.at),
                                                       "text": phone.text},
            "parts_last_minute": u.rate_log.used(now),
            "watcher": u.watcher,
            "clock_jump": u._get("clock_jump"),
            # as stored (health.py's to_dict forms): status parses what it shows, once
            "phone_health": u._get("phone_health") or None,
            "alerts": u._get("alerts") or {"active": {}, "last_alert": {}, "last_sent": None},
        }


@dataclass
class Listing:
    """Messages for `smsgw messages`, newest last, and how many more the limit left out."""

    outgoing: list[Outgoing] = field(default_factory=list)
    incoming: list[Incoming] = field(default_factory=list)
    more_outgoing: int = 0
    more_incoming: int = 0


@dataclass(frozen=True)
class MessageFilter:
    """What `smsgw messages` keeps, before its limit: every field set must match."""

    states: frozenset[str] = frozenset()  # state values (of either direction)
    number: str | None = None  # the end of the number's digits, or a sender name
    direction: str | None = None  # "in" (to the webapp) or "out" (from the webapp)
    since: datetime | None = None
    until: datetime | None = None
    id_prefix: str | None = None

    def keeps(self, msg_id: str, state: str, number: str, at: datetime) -> bool:
        """Whether a message with these values passes every filter."""
        return ((not self.states or state in self.states)
                and (self.id_prefix is None or msg_id.startswith(self.id_prefix))
                and (self.number is None or number_matches(self.number, number))
                and (self.since is None or at >= self.since)
                and (self.until is None or at <= self.until))


def number_matches(wanted: str, number: str) -> bool:
    """Whether `number` ends with the digits of `wanted` (separators and `+` ignored, so
    700000001 finds +254700000001 and 0700000001); a `wanted` without digits (a sender
    name such as MPESA) must equal the number, case ignored."""
    digits = "".join(c for c in wanted if c.isdigit())
    if not digits:
        return wanted.strip().casefold() == number.strip().casefold()
    return "".join(c for c in number if c.isdigit()).endswith(digits)


def listing(store: Store, now: datetime, limit: int, state: str | None = None,
            only: MessageFilter | None = None) -> Listing:
    """Active and archived messages, each id once in its current state, filtered by
    `state` and `only` before the newest `limit` of each direction are kept. A message's
    time is when it reached smsgw (outgoing: created; incoming: stored)."""
    only = only or MessageFilter()
    if state is not None:
        only = replace(only, states=only.states | {state})
    with store.unit(now) as u:
        out = u.outgoing() if only.direction != "in" else []
        incoming = [Incoming.from_dict(d) for d in u.db.table("incoming").all()] \
            if only.direction != "out" else []
    active = {m.ref for m in out}
    old_out: list[Outgoing] = []
    old_in: list[Incoming] = []
    for kind, rec in store.archive.latest():
        if kind == "out" and only.direction != "in":
            msg = Outgoing.from_dict(rec)
            if msg.ref not in active:
                old_out.append(msg)
        elif kind == "in" and only.direction != "out":
            old_in.append(Incoming.from_dict(rec))
    old_out.reverse()  # oldest first: messages of the same time stay in archive order
    old_in.reverse()
    every_out = [m for m in sorted(old_out, key=lambda m: m.created) + out
                 if only.keeps(m.id, m.state.value, m.to, m.created)]
    every_in = [m for m in sorted(old_in, key=lambda m: m.stored) + incoming
                if only.keeps(m.id, m.state.value, m.from_, m.stored)]
    return Listing(every_out[-limit:], every_in[-limit:],
                   max(0, len(every_out) - limit), max(0, len(every_in) - limit))


@dataclass
class QueueHealth:
    """The queue figures of the health report (`smsgw config --report-health`)."""

    queued: int  # outgoing messages not finished
    oldest_queued: datetime | None  # when the oldest UNSENT one arrived
    last_sent: datetime | None  # when a message last became SENT
    failed_24h: int  # became FAILED in this hour and the 23 before
    phone_error: str | None  # the last phone problem, until the phone answers again
    phone_health: PhoneHealth | None = None  # the last sample (the report shows its battery)


def health(store: Store, now: datetime) -> QueueHealth:
    """The queue figures of the health report, from the state alone. The records are read
    as stored, never parsed: it runs for every POST with --report-health."""
    with store.unit(now) as u:
        queued = [u._view(i) for i in u._select(lambda d: d["state"] not in FINISHED_STATES)]
        unsent = [from_iso(d["created"]) for d in queued if d["state"] == OutState.UNSENT.value]
        phone = u.phone_problem
        return QueueHealth(
            queued=len(queued),
            oldest_queued=min(unsent) if unsent else None,  # type: ignore[type-var]
            last_sent=u.last_sent,
            failed_24h=u.counters.last_hours(now).failed,
            phone_error=None if phone is None else phone.text,
            phone_health=u.phone_health,
        )


def completion_ids(store: Store, now: datetime, kind: str,
                   states: frozenset[str] | None = None) -> list[str]:
    """Ids for shell completion: of `kind` ("out", "in" or "any"), active and archived,
    in `states` if given. Archived lines are not parsed whole, so it stays quick."""
    with store.unit(now) as u:
        found: dict[str, str] = {}
        if kind in ("out", "any"):
            found.update((m.id, m.state.value) for m in u.outgoing())
        if kind in ("in", "any"):
            found.update((d["id"], d["state"]) for d in u.db.table("incoming").all())
    for (k, msg_id), state in store.archive.id_states().items():
        if kind in (k, "any") and msg_id not in found:
            found[msg_id] = state
    return sorted(i for i, st in found.items() if states is None or st in states)
