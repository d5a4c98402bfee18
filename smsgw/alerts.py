"""When to send the operator an alert SMS: a pure policy, the clock a parameter.

Conditions in (which problems are observed now, each with a short text), alerts out (the
SMS to queue), and the state to keep until the next cycle. The gateway observes, queues
the texts as local messages (never posted to the webapp) and stores the state.

Rules, per condition:
- `webapp` and `phone` alert once observed for `after` without a break (a blip pages
  nobody); `stuck` and `battery` carry their own wait (confirm_timeout, a sample) and alert
  at once;
- at most one alert per condition per `every`: while it lasts, a reminder after `every`;
  a condition that comes back within `every` of its last alert waits for the rest of it;
- a recovery SMS when a condition that was alerted clears (none for one never alerted).

The state and alert types (AlertState, Episode, Sent, Alert) live in health.py, a leaf
module, so that the store keeps them without importing this policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from .alertstate import Alert, AlertState, Episode, Sent
from .health import PhoneHealth
from .models import printable, span

WEBAPP, PHONE, STUCK, BATTERY = "webapp", "phone", "stuck", "battery"
CONDITIONS = (WEBAPP, PHONE, STUCK, BATTERY)
LABELS = {WEBAPP: "webapp failing", PHONE: "phone not answering",
          STUCK: "sends stuck", BATTERY: "battery low"}
DELAYED = (WEBAPP, PHONE)  # alert only once observed for `after`

BATTERY_LOW = 15  # percent, on battery: alert
BATTERY_OK = 20  # percent: recovered (or plugged in); the gap stops flapping at 15 %
# An older health sample says nothing about the battery; the gateway passes
# max(SAMPLE_STALE, 2 * its health period), as a long --interval samples less often.
SAMPLE_STALE = timedelta(hours=2)
SMS_CHARS = 160  # one GSM-7 SMS




def _sms(text: str) -> str:
    text = printable(" ".join(text.split()))
    return text if len(text) <= SMS_CHARS else text[:SMS_CHARS - 3] + "..."


def decide(state: AlertState, problems: Mapping[str, str], now: datetime, *,
           after: timedelta, every: timedelta) -> tuple[AlertState, list[Alert]]:
    """The alerts to send now and the new state, from the problems observed now
    (condition -> what is wrong; a condition absent is fine)."""
    active: dict[str, Episode] = {}
    last = dict(state.last_alert)
    alerts: list[Alert] = []
    sent = state.last_sent
    for key in _ordered(set(problems) | set(state.active)):
        old = state.active.get(key)
        if key not in problems:
            if old is not None and old.alerted is not None:
                alerts.append(Alert(key, _sms(f"smsgw ok: {LABELS.get(key, key)} recovered "
                                              f"after {span(now - old.since)}"), True))
            continue
        # A start in the future: the clock went back. Count from now.
        since = old.since if old is not None and old.since <= now else now
        alerted = old.alerted if old is not None else None
        episode = Episode(since, problems[key], alerted)
        wait = after if key in DELAYED else timedelta(0)
        previous = last.get(key)
        quiet = previous is not None and timedelta(0) <= now - previous < every
        if now - since >= wait and not quiet:
            lasting = f" for {span(now - since)}" if now - since >= timedelta(minutes=2) else ""
            alerts.append(Alert(key, _sms(f"smsgw alert: {LABELS.get(key, key)}{lasting}: "
                                          f"{problems[key]}")))
            episode = Episode(since, problems[key], now)
            last[key] = now
        active[key] = episode
    if alerts:
        a = alerts[-1]
        sent = Sent(now, a.condition, a.text, a.recovery)
    return AlertState(active, last, sent), alerts


def _ordered(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    return [k for k in CONDITIONS if k in keys] + sorted(keys - set(CONDITIONS))


# conditions from observations --------------------------------------------------------------
def battery_known(health: PhoneHealth | None, now: datetime,
                  stale: timedelta = SAMPLE_STALE) -> bool:
    """Whether the last sample tells the battery's level: read, and not older than `stale`."""
    return health is not None and health.at is not None \
        and health.battery_percent is not None and timedelta(0) <= now - health.at <= stale


def battery_problem(health: PhoneHealth | None, now: datetime, was_low: bool,
                    stale: timedelta = SAMPLE_STALE) -> str | None:
    """`battery low` while the last sample shows <= BATTERY_LOW % on battery, and until it
    shows BATTERY_OK % or the phone plugged in; None with no recent sample."""
    if health is None or health.battery_percent is None or not battery_known(health, now, stale):
        return None
    if health.on_power:
        return None
    limit = BATTERY_OK if was_low else BATTERY_LOW + 1
    if health.battery_percent >= limit:
        return None
    if health.on_power is None:
        return f"{health.battery_percent}% (the phone does not say whether it is plugged in)"
    return f"{health.battery_percent}% and not plugged in"


def battery_condition(health: PhoneHealth | None, now: datetime, low_now: str | None,
                      stale: timedelta = SAMPLE_STALE) -> str | None:
    """The battery condition to observe: `low_now` (the episode's last text, None when
    none is active) stays while the battery is unknown (a failed read) or its sample is
    stale; an unread battery is no recovery."""
    if low_now is not None and not battery_known(health, now, stale):
        return low_now
    return battery_problem(health, now, low_now is not None, stale)


def stuck_problem(now: datetime, handoffs: Iterable[datetime | None], late: int,
                  unknown: int, confirm_timeout: timedelta) -> str | None:
    """`sends stuck`: parts handed to the phone with no record past `confirm_timeout`,
    messages due but not sent for that long (`late`), or sends that ended with an unknown
    outcome within it (`unknown`)."""
    waiting = sum(1 for at in handoffs if at is not None and now - at > confirm_timeout)
    found = []
    if waiting:
        found.append(f"{waiting} SMS part{'s' if waiting != 1 else ''} with no record on the "
                     f"phone after {span(confirm_timeout)}")
    if unknown:
        found.append(f"{unknown} message{'s' if unknown != 1 else ''} failed with an unknown "
                     "outcome")
    if late:
        found.append(f"{late} message{'s' if late != 1 else ''} due but not sent for over "
                     f"{span(confirm_timeout)}")
    return "; ".join(found) or None
