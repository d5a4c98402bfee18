"""One event-log line for each state change, one rule for the times a user gives
(`--since`/`--until` of `smsgw messages` and `smsgw log`), and the SMS part count kept on
each message: run as a user runs them (tests/runner.py), over the simulated phone or the
fake Termux:API, with the reference webapp on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from runner import SmsgwRunner

from smsgw.errors import ExitCode
from smsgw.models import Counters
from smsgw.testserver import ReferenceWebapp

pytestmark = pytest.mark.usefixtures("no_proxies")

LONG_TEXT = "A long one " + "x" * 300  # GSM-7, 311 characters: 3 SMS parts


@pytest.fixture
def smsgw(tmp_path: Path) -> SmsgwRunner:
    return SmsgwRunner(tmp_path)


@pytest.fixture
def webapp(make_webapp: Callable[..., ReferenceWebapp]) -> ReferenceWebapp:
    return make_webapp()


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def events(smsgw: SmsgwRunner, msg_id: str) -> list[str]:
    """The event-log lines naming `msg_id`, without their time and level."""
    return [line.split(" ", 2)[2] for line in ok(smsgw("log", "--id", msg_id)).splitlines()]


def test_each_state_change_is_one_line_with_its_context(
        smsgw: SmsgwRunner, webapp: ReferenceWebapp) -> None:
    ok(smsgw("config", "--url", webapp.url))
    webapp.queue("not a number", "never sent", id="bad-1")
    webapp.queue("+15551230001", LONG_TEXT, id="long-1")
    ok(smsgw("run", "--phone", "simulated", "--once"))
    ok(smsgw("retry", "bad-1"))
    local = ok(smsgw("send", "+15551230002", "a local test")).split()[1]
    ok(smsgw("cancel", local))

    assert events(smsgw, "bad-1") == [
        "message bad-1: new -> FAILED (invalid phone number: 'not a number')",
        "message bad-1: FAILED -> UNSENT (retry requested): by a person, to not a number"]
    assert events(smsgw, "long-1") == [
        "message long-1: new -> UNSENT: queued, to +15551230001, 3 SMS parts",
        "message long-1: UNSENT -> SENDING",
        "message long-1: SENDING -> PENDING: handed to the phone, to +15551230001, 3 SMS parts"]
    assert events(smsgw, local) == [
        f"message {local}: new -> UNSENT: local message queued, to +15551230002",
        f"message {local}: UNSENT -> FAILED (cancelled): by a person, to +15551230002"]


def test_a_failed_try_is_one_warning_line_holding_the_protocols_retry_line(
        smsgw: SmsgwRunner, webapp: ReferenceWebapp) -> None:
    ok(smsgw("config", "--url", webapp.url))
    ok(smsgw("simulate", "fail-next"))
    webapp.queue("+15551230001", "try again", id="r-1")
    ok(smsgw("run", "--phone", "simulated", "--once"))
    ok(smsgw("run", "--phone", "simulated", "--once", env={"SMSGW_TEST_CLOCK_OFFSET": "30"}))
    failed = ok(smsgw("log", "--id", "r-1", "--level", "WARNING")).splitlines()
    assert len(failed) == 1, failed
    assert " WARNING message r-1: PENDING -> UNSENT (" in failed[0]
    assert "Sending SMS to +15551230001 failed (cause: " in failed[0]
    assert failed[0].endswith(") Retry #1 in 1 min")


def test_the_sms_parts_are_kept_on_the_message_when_it_arrives(
        smsgw: SmsgwRunner, webapp: ReferenceWebapp) -> None:
    ok(smsgw("config", "--url", webapp.url, "--max-per-minute", "2"))
    webapp.queue("+15551230002", "short", id="short-1")
    webapp.queue("+15551230001", LONG_TEXT, id="long-1")
    ok(smsgw("run", "--phone", "simulated", "--once"))
    listed = json.loads(ok(smsgw("messages", "--json")))["from_webapp"]
    # the long one waits for the rate budget, its count known since it arrived
    assert {m["id"]: (m["state"], m["sms_parts"]) for m in listed} == {
        "short-1": ("PENDING", 1), "long-1": ("UNSENT", 3)}


# --since and --until: one rule -----------------------------------------------------------
@pytest.mark.parametrize("args", [("messages", "--since"), ("messages", "--until"),
                                  ("log", "--since")])
def test_a_bad_time_is_the_same_usage_error_everywhere(smsgw: SmsgwRunner,
                                                       args: tuple[str, str]) -> None:
    smsgw.log_file.parent.mkdir(parents=True, exist_ok=True)
    smsgw.log_file.write_text("2026-12-07T09:00:00Z INFO message m-1: new -> UNSENT\n")
    proc = smsgw(*args, "yesterday")
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert proc.stderr == (f"smsgw: error: {args[1]}: not a date and time, nor a time back "
                           "from now: 'yesterday' (use e.g. 2h, 30m, 1h30m, 7d, 2026-12-07 or "
                           "2026-12-07T09:00, in UTC)\n")


def test_messages_and_log_read_a_time_alike_in_utc_whatever_the_local_zone(
        smsgw: SmsgwRunner) -> None:
    tokyo = {"TZ": "Asia/Tokyo"}  # UTC+9, no summer time
    old = ok(smsgw("send", "+15551230001", "old",
                   env={**tokyo, "SMSGW_TEST_CLOCK_OFFSET": str(-5 * 3600)})).split()[1]
    new = ok(smsgw("send", "+15551230001", "new", env=tokyo)).split()[1]
    cut = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S")

    def ids(*args: str) -> list[str]:
        data = json.loads(ok(smsgw("messages", "--json", *args, env=tokyo)))
        return [m["id"] for m in data["from_webapp"]]

    # a date and time without zone is UTC, as every time smsgw shows (not Tokyo's)
    assert ids("--until", cut) == [old]
    assert ids("--since", cut) == [new]
    assert ids("--since", cut + "+09:00") == [old, new]  # a zone given is kept
    # the spans the log took are taken by messages too
    assert ids("--since", "1h30m") == [new]
    assert ids("--until", "4h 30min") == [old]
    # the log's lines are stamped by the real clock: an hour ahead in UTC is none yet
    ahead = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert ok(smsgw("log", "--since", ahead, env=tokyo)) == ""
    assert new in ok(smsgw("log", "--since", cut, env=tokyo))


def test_the_health_reports_failures_of_the_last_24_hours_from_the_counters() -> None:
    now = datetime(2026, 12, 7, 12, 30, tzinfo=timezone.utc)
    counters = Counters()
    for hours_ago in (30, 24, 23, 1, 0):
        counters = counters.add(now - timedelta(hours=hours_ago, minutes=10), failed=1)
    counters = counters.add(now, sent=1)
    assert counters.last_hours(now).failed == 3  # this hour and the 23 before
    assert counters.since(now, 2).failed == 5  # today and yesterday, by UTC day
    assert len(counters.hours) <= 24
    again = Counters.from_dict(json.loads(json.dumps(counters.to_dict())))
    assert again == counters
