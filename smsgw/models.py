"""The records smsgw keeps: outgoing messages, incoming SMS, status updates, and their states."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, NamedTuple

from .errors import InternalError

Clock = Callable[[], datetime]


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL[ord("\\")] = "\\\\"


def printable(value: object) -> str:
    """`value` as text safe for one line of a log or a terminal: control characters
    (newline, ESC, ...) and backslashes escaped, so nothing from a webapp or a phone can
    forge a line or move the cursor."""
    return str(value).translate(_CONTROL)


# Only tests set it: a whole smsgw process whose wall clock is off by that many seconds
# (its monotonic clock is not), as a phone's is after a bad network time.
_TEST_CLOCK_OFFSET = timedelta(seconds=float(os.environ.get("SMSGW_TEST_CLOCK_OFFSET") or 0))


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error texts ("a number", "an array")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), "unknown")


def span(duration: float | timedelta) -> str:
    """A duration for people, rounded: 45s, 15 min, 3 h, 60 days (a negative one is 0s)."""
    seconds = max(0.0, duration.total_seconds() if isinstance(duration, timedelta)
                  else float(duration))
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f}s"


def utcnow() -> datetime:
    """The real clock: timezone-aware UTC."""
    return datetime.now(timezone.utc) + _TEST_CLOCK_OFFSET


def to_iso(dt: datetime | None) -> str | None:
    """Serialise an aware datetime for storage."""
    return None if dt is None else dt.astimezone(timezone.utc).isoformat()


def from_iso(text: str | None) -> datetime | None:
    """Parse a stored datetime back into aware UTC."""
    if text is None:
        return None
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class OutState(str, Enum):
    """States of a message from the webapp. Only what is known: never SENT on exit 0."""

    UNSENT = "UNSENT"  # stored, waiting to be sent (first time or retry)
    SENDING = "SENDING"  # intent recorded durably; the send command may be running
    PENDING = "PENDING"  # handed to the phone's SMS stack without error
    SENT = "SENT"  # the phone recorded it as sent
    DELIVERED = "DELIVERED"  # never observable through Termux:API; kept for the protocol
    FAILED = "FAILED"  # given up; only a person retries it


REPORTED_STATES = frozenset(
    {OutState.UNSENT, OutState.PENDING, OutState.SENT, OutState.DELIVERED, OutState.FAILED}
)
FINISHED_STATES = frozenset({OutState.SENT, OutState.DELIVERED, OutState.FAILED})

# The order of what the webapp hears within one attempt. cht-core applies statuses in the
# order received and lets a message's state go backwards (a PENDING after a SENT makes it
# "forwarded-by-gateway" again), so a status ranked below the last one reported is never
# posted; only `smsgw retry` starts a new attempt, from UNSENT.
REPORT_RANK = {OutState.UNSENT: 0, OutState.PENDING: 1, OutState.SENT: 2,
               OutState.DELIVERED: 3, OutState.FAILED: 4}


class PartState(str, Enum):
    """State of one SMS handed to termux-sms-send (the whole text, or one CDMA part)."""

    UNSENT = "unsent"
    SENDING = "sending"  # intent recorded; termux-sms-send may be running or may have run
    PENDING = "pending"  # handed over without error
    SENT = "sent"  # a matching sent row
    FAILED = "failed"  # a matching failed row, or refused before any send: try again
    UNKNOWN = "unknown"  # no row within confirm_timeout: may or may not have gone out


# The life cycle as data: the moves each state may make. Unit.transition (messages) and
# Part.move (parts) are the only code that changes a state, and both refuse any other move
# with an InternalError, changing nothing. A new message starts UNSENT (Unit.create).
OUT_MOVES: dict[OutState, frozenset[OutState]] = {
    OutState.UNSENT: frozenset({OutState.SENDING, OutState.FAILED}),
    OutState.SENDING: frozenset({OutState.PENDING, OutState.SENT, OutState.UNSENT,
                                 OutState.FAILED}),
    OutState.PENDING: frozenset({OutState.SENT, OutState.UNSENT, OutState.FAILED}),
    OutState.SENT: frozenset(),
    OutState.DELIVERED: frozenset(),
    OutState.FAILED: frozenset({OutState.UNSENT}),  # only `smsgw retry`
}
PART_MOVES: dict[PartState, frozenset[PartState]] = {
    PartState.UNSENT: frozenset({PartState.SENDING}),
    PartState.SENDING: frozenset({PartState.PENDING, PartState.SENT, PartState.FAILED,
                                  PartState.UNSENT, PartState.UNKNOWN}),
    PartState.PENDING: frozenset({PartState.SENT, PartState.FAILED, PartState.UNKNOWN}),
    PartState.SENT: frozenset(),
    PartState.FAILED: frozenset({PartState.SENDING, PartState.UNSENT}),
    PartState.UNKNOWN: frozenset({PartState.UNSENT}),  # only `smsgw retry`
}


def check_move(table: dict[Any, frozenset[Any]], old: Any, new: Any, what: str) -> None:
    """Raise InternalError unless `table` allows old -> new."""
    if new not in table[old]:
        raise InternalError(f"illegal move of {what} from {old.value} to {new.value}")


# Parts handed over (or maybe) whose phone row is not seen yet. Members of a str Enum
# compare and hash as their values, so this also tests the stored strings.
AWAITING_PARTS = frozenset({PartState.SENDING, PartState.PENDING})


class InState(str, Enum):
    """States of an SMS the phone received."""

    WAITING = "WAITING"  # stored, not yet acknowledged by the webapp
    FORWARDED = "FORWARDED"  # a POST carrying it got a 2xx
    SET_ASIDE = "SET_ASIDE"  # kept but never forwarded (`reason` says why)


@dataclass
class Part:
    """One send of an outgoing message; `row` is the phone row key that confirmed it."""

    text: str
    state: PartState = PartState.UNSENT
    handoff: datetime | None = None
    row: str | None = None

    def move(self, state: PartState) -> None:
        """Change the state as PART_MOVES allows (staying put is no move)."""
        if state is not self.state:
            check_move(PART_MOVES, self.state, state, "a part")
            self.state = state

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "state": self.state.value,
                "handoff": to_iso(self.handoff), "row": self.row}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Part:
        return cls(text=d["text"], state=PartState(d["state"]),
                   handoff=from_iso(d.get("handoff")), row=d.get("row"))


@dataclass
class HistoryEntry:
    """One state change, kept for `smsgw messages`."""

    state: str
    at: datetime
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "at": to_iso(self.at), "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistoryEntry:
        return cls(state=d["state"], at=from_iso(d["at"]), reason=d.get("reason"))  # type: ignore[arg-type]


class Ref(NamedTuple):
    """An outgoing message's identity: webapp ids and `smsgw send`'s ids never meet."""

    id: str
    local: bool = False


@dataclass
class Outgoing:
    """A message the webapp asked us to send ("webapp-originating")."""

    id: str
    to: str
    content: str
    state: OutState
    created: datetime
    last_activity: datetime
    seq: int = 0  # arrival order, so a backlog is never reordered
    retries: int = 0
    due: datetime | None = None
    reason: str | None = None
    parts: list[Part] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    # Queued by `smsgw send`: its own namespace, never reported. A flag, not an id prefix,
    # because a webapp id is opaque and may be spelled any way ("local-1" included).
    local: bool = False
    reported: OutState | None = None  # the last status queued for the webapp this attempt
    # SMS parts the text takes (what airtime costs), counted by the gateway when the text
    # arrived and again when it is first handed over; None in records stored before.
    sms_parts: int | None = None
    # An alert SMS to the operator (a local message): sent before any backlog.
    alert: bool = False

    @property
    def ref(self) -> Ref:
        """The identity of this message in the store: its id within its namespace."""
        return Ref(self.id, self.local)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "id": self.id, "to": self.to, "content": self.content, "state": self.state.value,
            "created": to_iso(self.created), "last_activity": to_iso(self.last_activity),
            "seq": self.seq, "retries": self.retries, "due": to_iso(self.due),
            "reason": self.reason, "parts": [self._part_dict(p) for p in self.parts],
            "history": [h.to_dict() for h in self.history],
            "reported": self.reported.value if self.reported else None,
            "sms_parts": self.sms_parts,
        }
        if self.local:
            d["local"] = True
        if self.alert:
            d["alert"] = True
        return d

    def _part_dict(self, part: Part) -> dict[str, Any]:
        d = part.to_dict()
        if len(self.parts) == 1 and part.text == self.content:
            del d["text"]  # the usual case: one part holding the whole text, stored once
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Outgoing:
        parts = [Part.from_dict({"text": d["content"], **p}) for p in d.get("parts", [])]
        return cls(
            id=d["id"], to=d["to"], content=d["content"], state=OutState(d["state"]),
            created=from_iso(d["created"]), last_activity=from_iso(d["last_activity"]),  # type: ignore[arg-type]
            seq=d.get("seq", 0), retries=d.get("retries", 0), due=from_iso(d.get("due")),
            reason=d.get("reason"), parts=parts,
            history=[HistoryEntry.from_dict(h) for h in d.get("history", [])],
            local=d.get("local") is True,
            reported=OutState(d["reported"]) if d.get("reported") else None,
            sms_parts=d.get("sms_parts"), alert=d.get("alert") is True,
        )

    def sms_count(self) -> int:
        """The SMS parts this message takes: the count kept on the record, or for a record
        stored before smsgw kept it, counted now from its sends (or its text)."""
        if self.sms_parts is not None:
            return self.sms_parts
        from .segment import count_parts  # only for such older records

        return sum(count_parts(p.text) for p in self.parts) if self.parts else \
            count_parts(self.content)


@dataclass
class Incoming:
    """An SMS the phone received ("webapp-terminating"), with the UUID we gave it."""

    id: str
    from_: str
    content: str
    sms_sent: int
    sms_received: int
    state: InState
    key: str  # the phone row's identity, for dedup
    stored: datetime
    forwarded: datetime | None = None
    reason: str | None = None  # why it is set aside

    def to_protocol(self) -> dict[str, Any]:
        return {"id": self.id, "from": self.from_, "content": self.content,
                "sms_sent": self.sms_sent, "sms_received": self.sms_received}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        d["stored"] = to_iso(self.stored)
        d["forwarded"] = to_iso(self.forwarded)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Incoming:
        return cls(
            id=d["id"], from_=d["from_"], content=d["content"], sms_sent=d["sms_sent"],
            sms_received=d["sms_received"], state=InState(d["state"]), key=d["key"],
            stored=from_iso(d["stored"]), forwarded=from_iso(d.get("forwarded")),  # type: ignore[arg-type]
            reason=d.get("reason"),
        )


@dataclass
class Update:
    """A status change queued for the webapp."""

    id: str
    status: str
    reason: str | None = None

    def to_protocol(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "reason": self.reason}


@dataclass
class Offered:
    """A message as the webapp offered it, before validation: fields may be missing or odd.

    `problem` names the field of the wrong shape (e.g. "to is an array, not a string").
    """

    id: str | None
    to: str | None
    content: str | None
    problem: str | None = None
    sms_parts: int | None = None  # set by the gateway once it has counted the text


# --- typed values the store keeps beside the records (each has one owner) -----------------

# Android counts sends in its own 60 s window from when each reached it: keep a margin.
RATE_WINDOW = timedelta(seconds=62)


@dataclass(frozen=True)
class RateLog:
    """SMS parts handed to the phone, by time, for the rate limit (owner: the gateway)."""

    entries: tuple[tuple[datetime, int], ...] = ()

    def within(self, now: datetime) -> RateLog:
        """The entries still inside the rate window at `now`."""
        return RateLog(tuple(e for e in self.entries if now - e[0] < RATE_WINDOW))

    def used(self, now: datetime) -> int:
        return sum(n for at, n in self.entries if now - at < RATE_WINDOW)

    def next_free(self, now: datetime) -> datetime | None:
        """When the oldest entry inside the window leaves it."""
        inside = [at for at, _ in self.entries if now - at < RATE_WINDOW]
        return min(inside) + RATE_WINDOW if inside else None

    def add(self, now: datetime, parts: int) -> RateLog:
        return RateLog(self.within(now).entries + ((now, parts),))

    def clamped(self, now: datetime) -> RateLog:
        """Entries dated in the future (the clock went back) as if made now: they leave
        the window a minute from now instead of blocking sends for as long as the jump."""
        return RateLog(tuple((min(at, now), n) for at, n in self.entries))


@dataclass(frozen=True)
class PhoneProblem:
    """The last error from the phone, shown by `smsgw status` (owner: the gateway)."""

    at: datetime
    text: str


@dataclass(frozen=True)
class ExchangeProblem:
    """The last failed exchange with the webapp, with its own words (owner: the store)."""

    at: datetime
    text: str
    status: int | None = None
    message: str | None = None


@dataclass(frozen=True)
class Failure:
    """A message that went FAILED, for `smsgw status` (owner: the store)."""

    id: str
    to: str
    reason: str | None
    at: datetime


# UTC days kept one by one beside the records; older days are folded into one total, so
# the all-time counts survive archive retention and the state stays small.
COUNTED_DAYS = 7
COUNTED_HOURS = 24  # UTC hours kept one by one too, for the health report's last 24 h
COUNT_NAMES = ("sent", "failed", "received", "parts", "phone_errors")


# NamedTuples, not dataclasses: `smsgw status` imports this module, and a dataclass costs
# about ten times as much to define.
class Tally(NamedTuple):
    """What happened in some span: messages SENT and FAILED, SMS received, SMS parts of
    the messages sent (what airtime costs), errors from the phone."""

    sent: int = 0
    failed: int = 0
    received: int = 0
    parts: int = 0
    phone_errors: int = 0

    def plus(self, other: Tally) -> Tally:
        return Tally(*(a + b for a, b in zip(self, other, strict=True)))

    def to_dict(self) -> dict[str, int]:
        return dict(zip(COUNT_NAMES, self, strict=True))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tally:
        return cls(*(int(d.get(n) or 0) for n in COUNT_NAMES))


def _hour(now: datetime, back: int = 0) -> str:
    """The UTC hour `back` hours before `now`'s, as a sortable key (2026-12-07T09)."""
    return (now.astimezone(timezone.utc) - timedelta(hours=back)).strftime("%Y-%m-%dT%H")


class Counters(NamedTuple):
    """Counts by UTC day for the last COUNTED_DAYS days, and the total of every day before;
    and by UTC hour for the last COUNTED_HOURS hours (owner: the store, which counts in the
    unit of work that makes the change)."""

    days: tuple[tuple[str, Tally], ...] = ()  # (UTC date, counts), oldest first
    before: Tally = Tally()
    hours: tuple[tuple[str, Tally], ...] = ()  # (UTC hour, counts), oldest first

    def add(self, now: datetime, **counts: int) -> Counters:
        """These counts added to `now`'s UTC day and hour; days out of the window folded,
        hours out of theirs dropped (the days hold them)."""
        today = now.astimezone(timezone.utc).date()
        day = today.isoformat()
        days = dict(self.days)
        days[day] = days.get(day, Tally()).plus(Tally(**counts))
        first = (today - timedelta(days=COUNTED_DAYS - 1)).isoformat()
        before = self.before
        # a day ahead of today (the clock went back) is folded too: counts are never lost
        for d in [d for d in days if d < first or d > day]:
            before = before.plus(days.pop(d))
        hour, first_hour = _hour(now), _hour(now, COUNTED_HOURS - 1)
        hours = {h: t for h, t in self.hours if first_hour <= h <= hour}
        hours[hour] = hours.get(hour, Tally()).plus(Tally(**counts))
        return Counters(tuple(sorted(days.items())), before, tuple(sorted(hours.items())))

    def since(self, now: datetime, days: int) -> Tally:
        """The counts of the `days` UTC days ending with `now`'s (at most COUNTED_DAYS)."""
        today = now.astimezone(timezone.utc).date()
        first = (today - timedelta(days=days - 1)).isoformat()
        total = Tally()
        for day, tally in self.days:
            if first <= day <= today.isoformat():
                total = total.plus(tally)
        return total

    def last_hours(self, now: datetime, hours: int = COUNTED_HOURS) -> Tally:
        """The counts of `now`'s UTC hour and the `hours` - 1 before (at most
        COUNTED_HOURS)."""
        first, last = _hour(now, hours - 1), _hour(now)
        total = Tally()
        for hour, tally in self.hours:
            if first <= hour <= last:
                total = total.plus(tally)
        return total

    def total(self) -> Tally:
        """Every count ever made."""
        total = self.before
        for _, tally in self.days:
            total = total.plus(tally)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"days": {d: t.to_dict() for d, t in self.days},
                "before": self.before.to_dict(),
                # only what happened: most hours count one thing or nothing
                "hours": {h: {n: v for n, v in t.to_dict().items() if v}
                          for h, t in self.hours}}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Counters:
        d = d or {}
        return cls(tuple(sorted((k, Tally.from_dict(v)) for k, v in d.get("days", {}).items())),
                   Tally.from_dict(d.get("before") or {}),
                   tuple(sorted((k, Tally.from_dict(v))
                                for k, v in (d.get("hours") or {}).items())))
