"""The alert policy's memory between cycles, and the alerts it decides: typed values the
store keeps beside the records (owner: the gateway's health step; alerts.py decides).

A leaf module like models.py and health.py, apart from them so that `smsgw status`, which
shows the stored dicts as they are, never builds these classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .models import from_iso, to_iso


@dataclass(frozen=True)
class Episode:
    """A condition observed since `since` (text: what was seen last); `alerted` is when
    its alert was sent, None while none was."""

    since: datetime
    text: str
    alerted: datetime | None = None


@dataclass(frozen=True)
class Sent:
    """The last alert or recovery SMS queued, for `smsgw status`."""

    at: datetime
    condition: str
    text: str
    recovery: bool = False


@dataclass(frozen=True)
class AlertState:
    """What the policy remembers between cycles (owner: the gateway's health step)."""

    active: Mapping[str, Episode] = field(default_factory=dict)
    last_alert: Mapping[str, datetime] = field(default_factory=dict)  # per condition
    last_sent: Sent | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": {k: {"since": to_iso(e.since), "text": e.text,
                           "alerted": to_iso(e.alerted)} for k, e in self.active.items()},
            "last_alert": {k: to_iso(at) for k, at in self.last_alert.items()},
            "last_sent": None if self.last_sent is None else {
                "at": to_iso(self.last_sent.at), "condition": self.last_sent.condition,
                "text": self.last_sent.text, "recovery": self.last_sent.recovery},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AlertState:
        if not data:
            return cls()
        sent = data.get("last_sent")
        return cls(
            active={k: Episode(from_iso(e["since"]), e["text"], from_iso(e.get("alerted")))  # type: ignore[arg-type]
                    for k, e in (data.get("active") or {}).items()},
            last_alert={k: from_iso(v) for k, v in (data.get("last_alert") or {}).items()},  # type: ignore[misc]
            last_sent=None if not sent else Sent(from_iso(sent["at"]), sent["condition"],  # type: ignore[arg-type]
                                                 sent["text"], bool(sent.get("recovery"))),
        )


@dataclass(frozen=True)
class Alert:
    """One SMS to queue for the operator."""

    condition: str
    text: str
    recovery: bool = False
