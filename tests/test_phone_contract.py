"""One contract for every Phone: SimulatedPhone must behave like TermuxPhone over the fakes.

Each adapter drives one phone and its world: a clock both the test and the phone's rows
follow, incoming SMS, and sends that fail the way a phone without service fails.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fakes import FakeTermux

from smsgw.health import PhoneHealth
from smsgw.phone.base import FAILED, INBOX, SENT, BadRow, InvalidNumber, Phone, number_digits
from smsgw.phone.simulated import SimulatedPhone
from smsgw.phone.termux import TermuxPhone

START = datetime(2026, 3, 10, 9, 15, 42, 654321, tzinfo=timezone.utc)


class SimulatedAdapter:
    """The simulated phone in memory or, with `file`, in a file: then the world acts on it
    through a second SimulatedPhone over the same file, as `smsgw simulate` does from
    another process while the daemon runs."""

    def __init__(self, file: Path | None = None) -> None:
        self.now = START
        self.phone: Phone = SimulatedPhone(clock=lambda: self.now, file=file)
        self.world = (self.phone if file is None
                      else SimulatedPhone(clock=lambda: self.now, file=file))

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def receive(self, address: str, body: str) -> None:
        self.world.receive(address, body)

    def receive_unreadable(self, address: str, body: str) -> None:
        self.world.receive_raw({"type": "inbox", "address": address, "body": body},
                               "no `received` date")

    def fail_next_sends(self, count: int) -> None:
        self.world.fail_next_sends(count)

    def handed_over(self) -> int:
        return len(self.phone.sends)

    def radio_off(self) -> None:
        self.world.radio_off = True


class TermuxAdapter:
    def __init__(self, fake: FakeTermux, script: str, app: str) -> None:
        self.fake = fake
        self.now = START
        fake.set_clock(START)
        fake.set_mode(script_version=script, app_version=app)
        if app < "0.51":
            # An app that ignores the selection can only be told apart from a new one on a
            # phone with rows (with script 0.59; script 0.58 refuses the option anyway).
            fake.add_row("sent", "+254799999999", "setup", at=START - timedelta(days=1))
        self.phone = TermuxPhone(send_timeout=20, list_timeout=20)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.fake.set_clock(self.now)

    def receive(self, address: str, body: str) -> None:
        self.fake.receive(address, body)

    def receive_unreadable(self, address: str, body: str) -> None:
        self.fake.add_raw_row(address, body, drop=["received"])

    def fail_next_sends(self, count: int) -> None:
        self.fake.set_mode(fail_next=count)

    def handed_over(self) -> int:
        return self.fake.call_count("termux-sms-send")

    def radio_off(self) -> None:
        self.fake.set_mode(radio_off=1)


# The Termux:API package (scripts) and app versions a phone can pair: script 0.58 has no
# --message-selection; app 0.49 ignores it and prints no _id nor address, 0.50 adds _id.
TERMUX_PAIRS = {
    "termux": ("0.59", "0.53"),
    "termux-app-0.50": ("0.59", "0.50"),
    "termux-app-0.49": ("0.59", "0.49"),
    "termux-script-0.58": ("0.58", "0.53"),
    "termux-oldest": ("0.58", "0.49"),
}


@pytest.fixture(params=["simulated", "simulated-file", *TERMUX_PAIRS])
def adapter(request, tmp_path, monkeypatch):
    if request.param == "simulated":
        yield SimulatedAdapter()
        return
    if request.param == "simulated-file":
        yield SimulatedAdapter(tmp_path / "simulated-phone.json")
        return
    # The phone's local time is not UTC: `received` must still come out right.
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "IST-5:30"
    time.tzset()
    try:
        fake = FakeTermux(tmp_path / "fake-termux").install(monkeypatch)
        yield TermuxAdapter(fake, *TERMUX_PAIRS[request.param])
    finally:
        if old_tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old_tz
        time.tzset()


def second(dt: datetime) -> datetime:
    return dt.replace(microsecond=0)


def through_json(position):
    text = json.dumps(position)
    assert json.loads(text) == position
    return json.loads(text)


class TestPhoneContract:
    def test_send_appears_as_a_sent_row_with_the_trimmed_body(self, adapter):
        since = adapter.now
        assert adapter.phone.send("+254 700 000 001", " \t Hello,\n world \n") is None
        (row,) = adapter.phone.read_outgoing(since)
        assert row.kind == SENT
        assert number_digits(row.address) == "254700000001"
        assert row.body == "Hello,\n world"
        assert row.date == second(adapter.now)

    def test_java_trim_keeps_non_ascii_spaces_and_drops_control_chars(self, adapter):
        since = adapter.now
        adapter.phone.send("0700111222", "\x01\u00a0hi\u3000\x1f ")
        (row,) = adapter.phone.read_outgoing(since)
        assert row.body == "\u00a0hi\u3000"

    def test_failing_send_appears_as_a_failed_row(self, adapter):
        since = adapter.now
        adapter.fail_next_sends(1)
        adapter.phone.send("0700111222", "first")
        adapter.advance(1)
        adapter.phone.send("0700111222", "second")
        rows = adapter.phone.read_outgoing(since)
        assert [(r.kind, r.body) for r in rows] == [(FAILED, "first"), (SENT, "second")]

    def test_radio_off_sends_fail_and_diagnose_says_why(self, adapter):
        assert adapter.phone.diagnose() is None
        since = adapter.now
        adapter.radio_off()
        adapter.phone.send("0700111222", "one")
        adapter.advance(1)
        adapter.phone.send("0700111222", "two")
        assert [(r.kind, r.body) for r in adapter.phone.read_outgoing(since)] == [
            (FAILED, "one"), (FAILED, "two")]
        cause = adapter.phone.diagnose()
        assert isinstance(cause, str) and cause

    def test_no_delivery_information_anywhere(self, adapter):
        since = adapter.now
        adapter.phone.send("0700111222", "one")
        adapter.fail_next_sends(1)
        adapter.phone.send("0700111223", "two")
        adapter.receive("0700111224", "three")
        rows = adapter.phone.read_outgoing(since)
        assert sorted(r.kind for r in rows) == sorted([SENT, FAILED])
        assert not any("deliver" in name for r in rows for name in vars(r))

    def test_read_outgoing_starts_at_since(self, adapter):
        adapter.phone.send("0700111222", "before")
        adapter.advance(5)
        since = adapter.now
        adapter.phone.send("0700111222", "after")
        assert [r.body for r in adapter.phone.read_outgoing(since)] == ["after"]
        assert adapter.phone.read_outgoing(since + timedelta(seconds=1)) == []

    def test_inbox_skips_old_rows_then_reads_new_ones_once_oldest_first(self, adapter):
        phone = adapter.phone
        adapter.receive("+254700000001", "old one")
        adapter.advance(1)
        adapter.receive("+254700000002", "old two")
        rows, pos = phone.read_inbox(None)
        assert rows == []
        pos = through_json(pos)
        assert phone.read_inbox(pos)[0] == []
        for i in range(3):
            adapter.advance(1)
            adapter.receive(f"+25470000001{i}", f"new {i}")
            phone.send("0700111222", f"reply {i}")  # outgoing rows are not inbox rows
        rows, pos = phone.read_inbox(through_json(pos))
        assert [(r.kind, r.address, r.body) for r in rows] == [
            (INBOX, f"+25470000001{i}", f"new {i}") for i in range(3)]
        rows, pos = phone.read_inbox(through_json(pos))
        assert rows == []
        adapter.advance(1)
        adapter.receive("+254700000020", "last")
        rows, pos = phone.read_inbox(through_json(pos))
        assert [r.body for r in rows] == ["last"]
        assert phone.read_inbox(through_json(pos))[0] == []

    def test_messages_in_one_second_are_each_read_once(self, adapter):
        _, pos = adapter.phone.read_inbox(None)
        adapter.receive("+254700000001", "same")
        adapter.receive("+254700000001", "same")
        adapter.receive("+254700000002", "other")
        rows, pos = adapter.phone.read_inbox(through_json(pos))
        assert sorted(r.body for r in rows) == ["other", "same", "same"]
        adapter.receive("+254700000001", "same")
        rows, pos = adapter.phone.read_inbox(through_json(pos))
        assert [r.body for r in rows] == ["same"]
        assert adapter.phone.read_inbox(through_json(pos))[0] == []

    def test_first_read_of_an_empty_inbox(self, adapter):
        rows, pos = adapter.phone.read_inbox(None)
        assert rows == []
        adapter.receive("+254700000001", "first ever")
        rows, _ = adapter.phone.read_inbox(through_json(pos))
        assert [r.body for r in rows] == ["first ever"]

    @pytest.mark.parametrize("number", [
        "+254700000001,+254700000002", "0700abc", "0700111222;id", "-n", "07 00\t11", "", None,
    ])
    def test_invalid_numbers_raise_before_anything_is_sent(self, adapter, number):
        with pytest.raises(InvalidNumber):
            adapter.phone.send(number, "hi")
        assert adapter.handed_over() == 0

    def test_row_dates_are_aware_utc_seconds(self, adapter):
        _, pos = adapter.phone.read_inbox(None)
        adapter.receive("+254700000001", "in")
        since = adapter.now
        adapter.phone.send("0700111222", "out")
        (inbox,) = adapter.phone.read_inbox(pos)[0]
        (out,) = adapter.phone.read_outgoing(since)
        for row in (inbox, out):
            assert row.date.utcoffset() == timedelta(0)
            assert row.date.microsecond == 0
            assert row.date == second(adapter.now)

    def test_text_that_trims_to_nothing_sends_nothing(self, adapter):
        since = adapter.now
        assert adapter.phone.send("0700111222", " \t\n\x01 ") is None
        assert adapter.handed_over() == 1
        adapter.advance(1)
        adapter.phone.send("0700111222", "real")
        assert [r.body for r in adapter.phone.read_outgoing(since)] == ["real"]

    # read_inbox(None, since): the first read forwards what arrived since the set-up --------
    def test_first_read_since_returns_the_inbox_from_that_second_on_once(self, adapter):
        phone = adapter.phone
        adapter.receive("+254700000001", "before")
        adapter.advance(2)
        adapter.receive("+254700000002", "same second, earlier")
        adapter.advance(0.3)  # still the same second: compared at second resolution
        since = adapter.now
        phone.send("0700111222", "an outgoing row")
        adapter.advance(1)
        adapter.receive("+254700000003", "after")
        rows, pos = phone.read_inbox(None, since=since)
        assert [(r.kind, r.address, r.body) for r in rows] == [
            (INBOX, "+254700000002", "same second, earlier"), (INBOX, "+254700000003", "after")]
        assert [r.date for r in rows] == [second(since), second(adapter.now)]
        rows, pos = phone.read_inbox(through_json(pos), since=since)
        assert rows == []  # the position is after the newest row: since is ignored now
        adapter.advance(1)
        adapter.receive("+254700000004", "new")
        rows, pos = phone.read_inbox(through_json(pos))
        assert [r.body for r in rows] == ["new"]
        assert phone.read_inbox(through_json(pos))[0] == []

    def test_first_read_since_after_every_row_returns_nothing_then_new_rows(self, adapter):
        adapter.receive("+254700000001", "old")
        rows, pos = adapter.phone.read_inbox(None, since=adapter.now + timedelta(seconds=5))
        assert rows == []
        adapter.advance(10)
        adapter.receive("+254700000001", "new")
        adapter.receive("+254700000001", "new")
        rows, pos = adapter.phone.read_inbox(through_json(pos))
        assert [r.body for r in rows] == ["new", "new"]
        assert adapter.phone.read_inbox(through_json(pos))[0] == []

    def test_first_read_since_of_an_empty_inbox(self, adapter):
        rows, pos = adapter.phone.read_inbox(None, since=adapter.now - timedelta(days=1))
        assert rows == []
        adapter.receive("+254700000001", "first ever")
        rows, _ = adapter.phone.read_inbox(through_json(pos))
        assert [r.body for r in rows] == ["first ever"]

    def test_since_is_ignored_once_there_is_a_position(self, adapter):
        adapter.receive("+254700000001", "old")
        _, pos = adapter.phone.read_inbox(None)
        adapter.advance(1)
        adapter.receive("+254700000002", "new")
        rows, pos = adapter.phone.read_inbox(through_json(pos),
                                             since=adapter.now - timedelta(days=1))
        assert [r.body for r in rows] == ["new"]

    # rows that cannot be read: set aside, never in the way -----------------------------------
    def test_take_bad_rows_is_empty_on_a_healthy_phone(self, adapter):
        assert adapter.phone.take_bad_rows() == []
        adapter.receive("+254700000001", "old")
        rows, pos = adapter.phone.read_inbox(None)
        adapter.advance(1)
        adapter.receive("+254700000002", "half \ud83d emoji")  # odd text, still a row
        rows, pos = adapter.phone.read_inbox(through_json(pos))
        assert [r.body for r in rows] == ["half \ud83d emoji"]
        adapter.phone.read_outgoing(adapter.now)
        assert adapter.phone.take_bad_rows() == []

    def test_an_unreadable_row_is_set_aside_once_and_blocks_nothing(self, adapter):
        _, pos = adapter.phone.read_inbox(None)
        adapter.advance(1)
        adapter.receive("+254700000001", "before")
        adapter.advance(1)
        adapter.receive_unreadable("+254700000002", "unreadable")
        adapter.advance(1)
        adapter.receive("+254700000003", "after")
        rows, pos = adapter.phone.read_inbox(through_json(pos))
        assert [r.body for r in rows] == ["before", "after"]
        (bad,) = adapter.phone.take_bad_rows()
        assert isinstance(bad, BadRow)
        assert json.loads(bad.raw)["body"] == "unreadable"
        assert bad.reason and bad.key
        assert adapter.phone.take_bad_rows() == []
        assert adapter.phone.read_inbox(through_json(pos))[0] == []
        assert adapter.phone.take_bad_rows() == []
        adapter.advance(1)
        adapter.receive("+254700000004", "next")
        rows, pos = adapter.phone.read_inbox(through_json(pos))
        assert [r.body for r in rows] == ["next"]
        assert adapter.phone.take_bad_rows() == []

    def test_health_reads_battery_sim_and_network(self, adapter):
        health = adapter.phone.read_health()
        assert isinstance(health, PhoneHealth)
        assert isinstance(health.battery_percent, int) and 0 <= health.battery_percent <= 100
        assert health.plugged and health.on_power is True
        assert health.sim_state == "ready" and health.network_operator
        assert health.problem is None and health.at is None  # the gateway dates the sample
