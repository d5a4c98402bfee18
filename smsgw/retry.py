"""The retry policy of the protocol: pure, the clock passed in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_RETRIES = 20


def backoff(retries: int) -> timedelta:
    """Delay before retry number `retries`: 1 minute x retries^1.5."""
    return timedelta(minutes=retries**1.5)


@dataclass(frozen=True)
class Decision:
    """What to do after a failed try: retry at `due` as retry number `retries`, or give up."""

    give_up: bool
    retries: int
    due: datetime | None
    log_line: str


def after_failure(retries: int, last_activity: datetime, number: str, cause: str) -> Decision:
    """Decide after a failed try, given the retries already made before it.

    Tries 1..20 schedule retries #1..#20; a failure after the 20th retry gives up.
    """
    if retries >= MAX_RETRIES:
        return Decision(True, retries, None,
                        f"Sending message to {number} failed (cause: {cause}) Not retrying")
    nxt = retries + 1
    delay = backoff(nxt)
    minutes = round(delay.total_seconds() / 60)
    line = f"Sending SMS to {number} failed (cause: {cause}) Retry #{nxt} in {minutes} min"
    return Decision(False, nxt, last_activity + delay, line)
