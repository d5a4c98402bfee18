"""The protocol's backoff: 1 minute x retries^1.5, give up after 20 retries."""

from datetime import datetime, timedelta, timezone

import pytest

from smsgw.retry import MAX_RETRIES, after_failure, backoff

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("before", "number", "minutes", "line"),
    [
        (0, 1, 1, "Sending SMS to +1123123123 failed (cause: radio off) Retry #1 in 1 min"),
        (1, 2, 3, "Sending SMS to +1123123123 failed (cause: radio off) Retry #2 in 3 min"),
        (4, 5, 11, "Sending SMS to +1123123123 failed (cause: radio off) Retry #5 in 11 min"),
        (19, 20, 89, "Sending SMS to +1123123123 failed (cause: radio off) Retry #20 in 89 min"),
    ],
)
def test_retry_schedule_and_log_line(before, number, minutes, line):
    d = after_failure(before, T0, "+1123123123", "radio off")
    assert not d.give_up
    assert d.retries == number
    assert d.due == T0 + timedelta(minutes=number**1.5)
    assert round((d.due - T0).total_seconds() / 60) == minutes
    assert d.log_line == line


def test_gives_up_after_twenty_retries():
    d = after_failure(MAX_RETRIES, T0, "+1123123123", "radio off")
    assert MAX_RETRIES == 20
    assert d.give_up and d.due is None
    assert d.log_line == "Sending message to +1123123123 failed (cause: radio off) Not retrying"


def test_backoff_grows():
    delays = [backoff(n) for n in range(1, 21)]
    assert delays == sorted(delays)
    assert backoff(4) == timedelta(minutes=8)
