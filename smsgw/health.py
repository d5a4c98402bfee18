"""The phone's health as last sampled (battery, SIM and network): a typed value the store
keeps beside the records (owner: the gateway's health step).

A leaf module like models.py: the phone produces a PhoneHealth, the store keeps it, the
alert policy (alerts.py) and `smsgw status` read it. The alert policy's own memory is in
alertstate.py, so `smsgw status` does not pay for it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from .models import from_iso, to_iso

# termux-battery-status `plugged` values meaning "on a power source": PLUGGED_AC,
# PLUGGED_USB, PLUGGED_WIRELESS, PLUGGED_DOCK, or PLUGGED_<n> for another source (n > 0);
# on battery it is UNPLUGGED (BatteryStatusAPI.java). Anything else is unknown: PLUGGED_-1
# is what the app prints when Android gave it no battery broadcast.
UNPLUGGED = "UNPLUGGED"
_ON_POWER = re.compile(r"PLUGGED_(?:AC|USB|WIRELESS|DOCK|[1-9][0-9]{0,9})")
_CHARGING_STATES = ("CHARGING", "FULL")


@dataclass(frozen=True)
class PhoneHealth:
    """One sample of the phone's health. Every field is None when it could not be read.

    Battery fields are as termux-battery-status spells them (`plugged` PLUGGED_AC,
    UNPLUGGED, ...; `battery_status` CHARGING, DISCHARGING, FULL, NOT_CHARGING, UNKNOWN;
    `battery_health` GOOD, OVERHEAT, DEAD, ...); SIM and network fields as
    termux-telephony-deviceinfo does (`sim_state` ready, absent, pin_required, ...;
    `network_type` lte, nr, umts, ...; `data_state` connected, disconnected, ...).
    `problem` says what could not be read and why (a hang, a missing permission), or None;
    `timed_out` is True when it is that the phone did not answer at all (a hang), not that
    it refused (a missing permission) or answered nonsense.
    `at` is when the gateway took the sample.
    `sim_slot` is the SIM slot smsgw sends with when one is configured: the SIM and
    network fields describe the phone's default SIM, which may be another one.
    """

    battery_percent: int | None = None
    plugged: str | None = None
    battery_status: str | None = None
    battery_health: str | None = None
    temperature: float | None = None
    sim_state: str | None = None
    network_operator: str | None = None
    network_type: str | None = None
    data_state: str | None = None
    problem: str | None = None
    at: datetime | None = None
    timed_out: bool = False
    sim_slot: int | None = None

    @property
    def on_power(self) -> bool | None:
        """Whether the phone is plugged in (or charging), None when unknown.

        An unknown `plugged` falls back on the status: CHARGING or FULL is on power,
        DISCHARGING on battery; NOT_CHARGING tells nothing (a plugged-in phone at its
        charge limit, or too hot, does not charge), nor does UNKNOWN."""
        if self.plugged == UNPLUGGED:
            return False
        if self.plugged is not None and _ON_POWER.fullmatch(self.plugged):
            return True
        if self.battery_status in _CHARGING_STATES:
            return True
        if self.battery_status == "DISCHARGING":
            return False
        return None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = to_iso(self.at)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhoneHealth:
        """Built from to_dict(); unknown keys (from a newer smsgw) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["at"] = from_iso(values.get("at"))
        return cls(**values)

    def describe(self) -> str:
        """One line for people: `battery 80% PLUGGED_AC (CHARGING, GOOD, 31.5 °C); SIM
        ready; network Safaricom lte`."""
        parts = []
        if self.battery_percent is not None or self.plugged is not None:
            details = [d for d in (self.battery_status, self.battery_health) if d]
            if self.temperature is not None:
                details.append(f"{self.temperature:g} °C")
            pct = "?" if self.battery_percent is None else f"{self.battery_percent}%"
            parts.append(f"battery {pct} {self.plugged or ''}".rstrip()
                         + (f" ({', '.join(details)})" if details else ""))
        if self.sim_state is not None:
            parts.append(f"SIM {self.sim_state}" + (
                "" if self.sim_slot is None
                else f" (the default SIM; smsgw sends with slot {self.sim_slot})"))
        if self.network_operator or self.network_type:
            name = self.network_operator or "no operator"
            parts.append(f"network {name} {self.network_type or ''}".rstrip())
        elif self.sim_state is not None:
            parts.append("no network operator")
        if self.problem:
            parts.append(f"not read: {self.problem}")
        return "; ".join(parts) or "nothing could be read"
