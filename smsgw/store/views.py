"""Read views of the state for `smsgw status` and `smsgw messages`: one source of truth.

A message is in the active queue or in the archive, never both: the listing shows each id
once, in its current state; the counts are of the active queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..models import Incoming, InState, Outgoing, OutState, to_iso

if TYPE_CHECKING:
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
            "phone_health": None if u.phone_health is None else u.phone_health.to_dict(),
            "alerts": u.alert_state.to_dict(),
        }


@dataclass
class Listing:
    """Messages for `smsgw messages`, newest last, and how many more the limit left out."""

    outgoing: list[Outgoing] = field(default_factory=list)
    incoming: list[Incoming] = field(default_factory=list)
    more_outgoing: int = 0
    more_incoming: int = 0


def listing(store: Store, now: datetime, limit: int, state: str | None = None) -> Listing:
    """Active and archived messages, each id once in its current state, filtered by
    `state` before the newest `limit` of each direction are kept."""
    with store.unit(now) as u:
        out = u.outgoing()
        incoming = [Incoming.from_dict(d) for d in u.db.table("incoming").all()]
    active = {m.ref for m in out}
    old_out: list[Outgoing] = []
    old_in: list[Incoming] = []
    for kind, rec in store.archive.latest():
        if kind == "out":
            msg = Outgoing.from_dict(rec)
            if msg.ref not in active:
                old_out.append(msg)
        elif kind == "in":
            old_in.append(Incoming.from_dict(rec))
    every_out = sorted(old_out, key=lambda m: m.created) + out
    every_in = sorted(old_in, key=lambda m: m.stored) + incoming
    if state is not None:
        every_out = [m for m in every_out if m.state.value == state]
        every_in = [m for m in every_in if m.state.value == state]
    return Listing(every_out[-limit:], every_in[-limit:],
                   max(0, len(every_out) - limit), max(0, len(every_in) - limit))
