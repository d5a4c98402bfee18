"""The records smsgw keeps: outgoing messages, incoming SMS, status updates, and their states."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The real clock: timezone-aware UTC."""
    return datetime.now(timezone.utc)


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


class PartState(str, Enum):
    """State of one SMS handed to termux-sms-send (the whole text, or one CDMA part)."""

    UNSENT = "unsent"
    SENDING = "sending"
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class InState(str, Enum):
    """States of an SMS the phone received."""

    WAITING = "WAITING"  # stored, not yet acknowledged by the webapp
    FORWARDED = "FORWARDED"  # a POST carrying it got a 2xx


@dataclass
class Part:
    """One send of an outgoing message; `row` is the phone row key that confirmed it."""

    text: str
    state: PartState = PartState.UNSENT
    handoff: datetime | None = None
    row: str | None = None

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "to": self.to, "content": self.content, "state": self.state.value,
            "created": to_iso(self.created), "last_activity": to_iso(self.last_activity),
            "seq": self.seq, "retries": self.retries, "due": to_iso(self.due),
            "reason": self.reason, "parts": [self._part_dict(p) for p in self.parts],
            "history": [h.to_dict() for h in self.history],
        }

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
        )


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
    """A message as the webapp offered it, before validation: fields may be missing or odd."""

    id: str | None
    to: str | None
    content: str | None
