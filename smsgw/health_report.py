"""The health object a POST carries with `smsgw config --report-health`.

One function builds it, so that every source of a figure is wired in one place. Pure: it
knows no store, phone or network; the gateway gives it what they said.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .store.views import QueueHealth

def health_object(figures: QueueHealth, *, now: datetime, uptime_s: float) -> dict[str, Any]:
    """The `"smsgw"` object of a POST body; `battery` is the phone's last battery sample,
    `{"percentage": 81, "plugged": "PLUGGED_AC"}` (termux-battery-status's words), or null
    when there is none."""
    sample = figures.phone_health
    battery = None if sample is None or (sample.battery_percent is None
                                         and sample.plugged is None) \
        else {"percentage": sample.battery_percent, "plugged": sample.plugged}
    oldest = figures.oldest_queued
    return {
        "version": __version__,
        "uptime_s": max(0, int(uptime_s)),
        "queued": figures.queued,
        "oldest_queued_s": None if oldest is None else max(0, int((now - oldest)
                                                                  .total_seconds())),
        "last_sent": None if figures.last_sent is None else _iso_utc(figures.last_sent),
        "failed_24h": figures.failed_24h,
        "battery": battery,
        "phone_error": figures.phone_error,
    }


def _iso_utc(dt: datetime) -> str:
    """2026-03-02T09:00:00Z"""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
