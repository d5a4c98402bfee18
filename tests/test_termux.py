"""TermuxPhone and run_command over the fake termux-* executables (tests/fakes)."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fakes import script

from smsgw.errors import PhoneError, PhoneTimeout
from smsgw.phone.base import FAILED, INBOX, SENT, InvalidNumber
from smsgw.phone.termux import (
    CommandFailed,
    TermuxPhone,
    app_installed,
    parse_json,
    run_command,
    sms_permission_problem,
    termux_api_installed,
    wake_lock,
)

pytest_plugins = ["fakes.fixtures"]

T0 = datetime(2026, 3, 10, 9, 15, 42, 654000, tzinfo=timezone.utc)
PROBE = "--message-selection=_id < 0"



@pytest.fixture
def fake(fake_termux):
    fake_termux.set_clock(T0)
    return fake_termux


# Termux:API package (script) and app versions, as a phone can pair them.
MODES = {
    "selection": {},  # script 0.59 + app 0.53: --message-selection works
    "old_app": {"script_version": "0.59", "app_version": "0.49"},  # selection ignored
    "old_version": {"old_version": 1},  # script 0.58 + app 0.49: the option is refused
}


@pytest.fixture(params=list(MODES))
def mode(request, fake):
    """Run a test against a current Termux:API and old ones without selections."""
    fake.set_mode(**MODES[request.param])
    return request.param



def live_group_members(pgid: int) -> list[int]:
    """Processes (not zombies) whose process group is `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def bodies(rows):
    return [r.body for r in rows]


# run_command -------------------------------------------------------------------------
def test_run_command_returns_stdout_and_feeds_stdin(fake):
    assert run_command(("sh", "-c", "cat; echo done"), stdin="héllo\n", timeout=10) == \
        "héllo\ndone\n"


def test_nonzero_exit_is_a_phone_error_with_the_tools_words(fake):
    with pytest.raises(CommandFailed) as err:
        run_command(("sh", "-c", "echo 'Unsupported type' >&2; exit 3"), timeout=10)
    assert isinstance(err.value, PhoneError)
    assert err.value.returncode == 3
    assert "Unsupported type" in str(err.value)
    assert "Unsupported type" in err.value.output


def test_missing_command_is_a_phone_error():
    with pytest.raises(PhoneError, match="cannot run"):
        run_command(("smsgw-no-such-command",), timeout=5)


def test_stdin_text_is_never_logged(fake, caplog):
    caplog.set_level(logging.DEBUG, logger="smsgw")
    TermuxPhone().send("+254700000001", "secret pin 4321")
    assert "termux-sms-send -n +254700000001" in caplog.text
    assert "4321" not in caplog.text


def test_hanging_command_is_killed_with_its_whole_group(fake):
    fake.set_mode(hang=1)
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for call in fake.calls():
                seen.update(live_group_members(call["pid"]))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        with pytest.raises(PhoneTimeout) as err:
            TermuxPhone(send_timeout=2).send("+254700000001", "hi")
    finally:
        stop.set()
        watcher.join()
    assert time.monotonic() - started < 15
    assert err.value.maybe_sent is True
    (call,) = fake.calls("termux-sms-send")
    assert len(seen) >= 2  # the fake and its `sleep` child were both in the group
    deadline = time.monotonic() + 5
    while live_group_members(call["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_group_members(call["pid"]) == []
    assert fake.rows() == []


def test_hanging_list_times_out(fake):
    fake.set_mode(hang="termux-sms-list")
    phone = TermuxPhone(list_timeout=1)
    with pytest.raises(PhoneTimeout, match="did not answer within 1 s"):
        phone.read_inbox(None)


# send ------------------------------------------------------------------------------------
def test_send_puts_the_text_only_on_stdin(fake):
    text = "  -n Hello\\c; $(reboot) `id` 'quoted' \"x\"\nline two  \n"
    TermuxPhone().send("+254 700-000.001", text)
    (call,) = fake.calls("termux-sms-send")
    assert call["argv"] == ["-n", "+254700000001"]
    assert call["stdin_len"] == len(text)
    (row,) = fake.rows()
    assert row["body"] == text.strip()
    assert row["address"] == "+254700000001"
    assert row["type"] == 2


@pytest.mark.parametrize("number", [
    "+254700000001,+254700000002", "0700abc123", "0700111222;reboot", "-n", "-s 1",
    "0700 111\t222", "07001112\n22", "", "   ", "+", "12", "0700111222 && id", None, 254700000001,
])
def test_invalid_numbers_never_reach_a_command(fake, number):
    with pytest.raises(InvalidNumber):
        TermuxPhone().send(number, "hi")
    assert fake.calls() == []


def test_sim_slot_is_passed_when_configured(fake):
    TermuxPhone(sim_slot=1).send("0700111222", "one")
    TermuxPhone().send("0700111222", "two")
    assert [c["argv"] for c in fake.calls("termux-sms-send")] == [
        ["-n", "0700111222", "-s", "1"], ["-n", "0700111222"]]


@pytest.mark.parametrize("slot", [-1, 10, "1", 1.0, True, "0 1", "x"])
def test_sim_slot_must_be_a_small_integer_on_every_path(fake, slot):
    # `-s SLOT` is pasted unquoted into an `am` line: anything else hangs the call.
    with pytest.raises(ValueError, match="SIM slot"):
        TermuxPhone(sim_slot=slot)
    phone = TermuxPhone(sim_slot=9)
    with pytest.raises(ValueError, match="SIM slot"):
        phone.sim_slot = slot
    assert phone.sim_slot == 9
    assert fake.calls() == []


def test_send_permission_error_carries_the_tools_words(fake):
    fake.set_mode(permission_error=1)
    with pytest.raises(PhoneError) as err:
        TermuxPhone().send("0700111222", "hi")
    assert "android.permission.SEND_SMS" in str(err.value)
    assert err.value.maybe_sent is False
    assert fake.rows() == []


def test_send_garbage_answer_may_have_sent(tmp_path, monkeypatch):
    script(tmp_path, monkeypatch, "termux-sms-send", "cat >/dev/null; echo 'Exception in thread'")
    with pytest.raises(PhoneError, match="not JSON") as err:
        TermuxPhone().send("0700111222", "hi")
    assert err.value.maybe_sent is True


def test_send_argument_error_was_not_sent(tmp_path, monkeypatch):
    script(tmp_path, monkeypatch, "termux-sms-send",
           "echo 'termux-sms-send: illegal option -x'; exit 1")
    with pytest.raises(CommandFailed, match="illegal option") as err:
        TermuxPhone().send("0700111222", "hi")
    assert err.value.maybe_sent is False


# parsing termux-sms-list -------------------------------------------------------------------
# (One unreadable row in a list is not an error: it is set aside, see test_bad_rows.py.)
@pytest.mark.parametrize("output", [
    "not json", "{\"rows\": []}", "", "[DEBUG] termux-api SmsInbox\n[]",
])
def test_garbage_list_output_is_a_phone_error(tmp_path, monkeypatch, output):
    script(tmp_path, monkeypatch, "termux-sms-list", f"printf '%s' '{output}'")
    phone = TermuxPhone()
    phone._selection = True  # skip the probe: the answer under test is the read's
    with pytest.raises(PhoneError):
        phone.read_inbox({"v": 1, "id": 1, "since": None, "seen": {}})


def test_list_error_object_is_a_phone_error(fake):
    fake.set_mode(permission_error=1)
    with pytest.raises(PhoneError, match="android.permission.READ_SMS"):
        TermuxPhone().read_inbox(None)


def test_nonzero_list_exit_is_a_phone_error(tmp_path, monkeypatch):
    script(tmp_path, monkeypatch, "termux-sms-list", "echo 'no socket' >&2; exit 2")
    with pytest.raises(PhoneError, match="no socket"):
        TermuxPhone().read_outgoing(T0)


# --message-selection probe -------------------------------------------------------------
def test_probe_runs_once_per_instance(fake):
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    phone.read_inbox(pos)
    phone.read_outgoing(T0)
    assert phone.supports_selection is True
    probes = [c for c in fake.calls("termux-sms-list") if PROBE in c["argv"]]
    assert len(probes) == 1
    assert probes[0]["argv"] == ["-t", "all", "-l", "1", PROBE]
    TermuxPhone().read_outgoing(T0)
    assert len([c for c in fake.calls("termux-sms-list") if PROBE in c["argv"]]) == 2


def test_probe_sees_an_old_app(fake):
    fake.set_mode(old_version=1)
    fake.receive("+254700000001", "hi")
    phone = TermuxPhone()
    assert phone.supports_selection is False
    assert phone.supports_selection is False
    assert phone.calls == 1


@pytest.mark.parametrize("app", ["0.49", "0.53"])
def test_probe_sees_the_fakes_old_script(fake, app):
    fake.set_mode(script_version="0.58", app_version=app)
    phone = TermuxPhone()
    assert phone.supports_selection is False
    assert phone.calls == 1
    fake.receive("+254700000001", "hi", at=T0)
    rows, pos = phone.read_inbox(None, since=T0)
    assert bodies(rows) == ["hi"]
    assert phone.read_inbox(pos)[0] == []
    assert not any(a.startswith("--") for c in fake.calls("termux-sms-list")[1:]
                   for a in c["argv"])


def test_probe_raises_on_another_argument_error(tmp_path, monkeypatch):
    # Script 0.59 exits 64 on an argument error; with the `=` form it accepts the option,
    # so 64 is a real error, not an old script.
    script(tmp_path, monkeypatch, "termux-sms-list",
           "echo \"termux-sms-list: Unknown option: '--message-selection'.\" >&2; exit 64")
    with pytest.raises(CommandFailed) as err:
        TermuxPhone().read_inbox(None)
    assert err.value.returncode == 64


def test_script_downgraded_after_the_probe_falls_back_to_dates(fake):
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    assert phone.supports_selection is True
    fake.set_mode(script_version="0.58")  # `pkg install termux-api=0.58.0`
    fake.receive("+254700000001", "after the downgrade", at=T0)
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["after the downgrade"]
    assert phone.supports_selection is False
    assert phone.read_inbox(pos)[0] == []
    phone.send("0700111222", "out")
    assert bodies(phone.read_outgoing(T0)) == ["out"]


def test_old_app_inbox_type_lists_every_row_but_only_inbox_rows_are_read(fake, mode):
    # Before app 0.50 `-t inbox` lists every message: sent rows must not be forwarded.
    phone = TermuxPhone(page_size=3)
    fake.add_row("sent", "+254700000009", "old reply", at=T0 - timedelta(seconds=9))
    _, pos = phone.read_inbox(None)
    for i in range(4):
        fake.receive("+254700000001", f"in {i}", at=T0 + timedelta(seconds=i))
        fake.add_row("sent", "+254700000001", f"reply {i}", at=T0 + timedelta(seconds=i))
    rows, pos = phone.read_inbox(pos)
    assert [(r.kind, r.body) for r in rows] == [(INBOX, f"in {i}") for i in range(4)]
    assert phone.read_inbox(pos)[0] == []


def test_probe_sees_an_old_script_refusing_the_option(tmp_path, monkeypatch):
    script(tmp_path, monkeypatch, "termux-sms-list", """
case "$*" in *--message-selection*) echo "termux-sms-list: illegal option --"; exit 1;; esac
echo '[]'""")
    phone = TermuxPhone()
    assert phone.read_inbox(None) == ([], {"v": 1, "id": None, "since": None, "seen": {}})
    assert phone.supports_selection is False


def test_old_app_on_an_empty_phone_is_found_out_later(fake):
    fake.set_mode(**MODES["old_app"])  # a new script that passes the option to an old app
    phone = TermuxPhone()
    rows, pos = phone.read_inbox(None)  # the probe cannot tell on an empty phone
    assert rows == []
    assert phone.supports_selection is True
    for i in range(3):
        fake.receive("+254700000001", f"m{i}", at=T0 + timedelta(seconds=i))
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["m0", "m1", "m2"]
    assert phone.supports_selection is False
    assert phone.read_inbox(pos)[0] == []


# inbox ---------------------------------------------------------------------------------
def test_first_read_skips_the_old_inbox(fake, mode):
    fake.receive("+254700000001", "old one", at=T0 - timedelta(days=3))
    fake.receive("+254700000002", "old two", at=T0)
    phone = TermuxPhone()
    rows, pos = phone.read_inbox(None)
    assert rows == []
    json.dumps(pos)
    assert phone.read_inbox(pos) == ([], pos)
    fake.receive("+254700000003", "new", at=T0 + timedelta(seconds=1))
    rows, _ = phone.read_inbox(pos)
    assert [(r.kind, r.address, r.body) for r in rows] == [(INBOX, "+254700000003", "new")]


def test_inbox_burst_of_1000_is_read_exactly_once_in_few_calls(fake, mode):
    fake.receive("+254700000000", "before", at=T0 - timedelta(seconds=5))
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    ids = fake.receive_many([(f"+2547{i:08d}", f"burst {i}") for i in range(1000)], at=T0,
                            step=timedelta(milliseconds=1))
    before = phone.calls
    rows, pos = phone.read_inbox(pos)
    assert phone.calls - before <= 3
    assert len(rows) == 1000
    assert sorted(bodies(rows)) == sorted(f"burst {i}" for i in range(1000))
    if mode == "selection":
        assert bodies(rows) == [f"burst {i}" for i in range(1000)]  # by _id
        assert [r.row_id for r in rows] == ids
    before = phone.calls
    assert phone.read_inbox(pos)[0] == []
    if mode == "selection":
        assert phone.calls - before == 1
    fake.receive("+254711111111", "after", at=T0 + timedelta(seconds=1))
    before = phone.calls
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["after"]
    assert phone.calls - before <= 3


def test_inbox_pages_are_all_read_oldest_first(fake, mode):
    phone = TermuxPhone(page_size=4)
    _, pos = phone.read_inbox(None)
    for i in range(11):
        fake.receive("+254700000001", f"m{i:02d}", at=T0 + timedelta(seconds=i))
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == [f"m{i:02d}" for i in range(11)]
    assert phone.read_inbox(pos)[0] == []


def test_reused_id_after_deleting_the_newest_row_is_read(fake):
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    a = fake.receive("+254700000001", "a", at=T0)
    b = fake.receive("+254700000001", "b", at=T0)
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["a", "b"]
    assert fake.delete(b)
    c = fake.receive("+254700000001", "c", at=T0)  # same second, same _id as b
    assert c == b
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["c"]
    assert [r.row_id for r in rows] == [b]
    assert phone.read_inbox(pos)[0] == []
    assert a < b


def test_reused_lower_id_after_deleting_the_newest_rows_is_read(fake):
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    ids = [fake.receive("+254700000001", f"m{i}", at=T0) for i in range(4)]
    rows, pos = phone.read_inbox(pos)
    assert len(rows) == 4
    fake.delete(ids[3])
    fake.delete(ids[2])
    new = fake.receive("+254700000001", "later", at=T0 + timedelta(seconds=2))
    assert new == ids[2]  # below the highest _id ever read
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["later"]
    assert phone.read_inbox(pos)[0] == []


def test_old_app_loses_and_duplicates_nothing(fake):
    fake.set_mode(old_version=1)
    fake.receive("+254700000009", "old", at=T0)
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    # Two identical SMS in the same second as the old one, then more in the next seconds.
    fake.receive("+254700000001", "same", at=T0)
    fake.receive("+254700000001", "same", at=T0)
    rows, pos = phone.read_inbox(pos)
    assert [(r.address, r.body, r.row_id) for r in rows] == [
        ("+254700000001", "same", None), ("+254700000001", "same", None)]
    assert phone.read_inbox(pos)[0] == []
    fake.receive("+254700000001", "same", at=T0)  # a third one, still in that second
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["same"]
    fake.receive("+254700000002", "next", at=T0 + timedelta(seconds=1))
    fake.receive("+254700000002", "next", at=T0 + timedelta(seconds=1))
    fake.receive("+254700000003", "last", at=T0 + timedelta(seconds=2))
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["next", "next", "last"]
    assert phone.read_inbox(pos)[0] == []
    assert all(r.address for r in rows)  # from `number`: no `address` field on old apps


def test_position_survives_an_app_update(fake):
    fake.set_mode(old_version=1)
    fake.receive("+254700000001", "old", at=T0)
    _, pos = TermuxPhone().read_inbox(None)
    fake.set_mode(old_version=None)
    fake.receive("+254700000001", "new", at=T0 + timedelta(seconds=1))
    rows, pos = TermuxPhone().read_inbox(json.loads(json.dumps(pos)))
    assert bodies(rows) == ["new"]
    assert TermuxPhone().read_inbox(pos)[0] == []


def test_received_is_converted_from_the_phones_local_time(fake, mode, local_tz):
    local_tz("IST-5:30")  # the phone's zone: UTC+05:30
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    fake.receive("+254700000001", "hi", at=T0)
    (row,) = phone.read_inbox(pos)[0]
    assert (row.date, row.date.tzinfo) == (T0.replace(microsecond=0), timezone.utc)
    out = run_command(("termux-sms-list", "-t", "inbox", "-l", "1"), timeout=10)
    assert '"received": "2026-03-10 14:45:42"' in out


def test_repeated_local_hour_at_dst_end_loses_and_duplicates_nothing(fake, mode, local_tz):
    local_tz("EST5EDT,M3.2.0,M11.1.0")  # 01:00-02:00 local happens twice on 2026-11-01
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    at = [datetime(2026, 11, 1, 5, 50, tzinfo=timezone.utc),  # 01:50 EDT
          datetime(2026, 11, 1, 6, 10, tzinfo=timezone.utc),  # 01:10 EST, an hour later
          datetime(2026, 11, 1, 6, 20, tzinfo=timezone.utc)]  # 01:20 EST
    for i, when in enumerate(at):
        fake.receive("+254700000001", f"m{i}", at=when)
    rows, pos = phone.read_inbox(pos)
    assert sorted(bodies(rows)) == ["m0", "m1", "m2"]
    assert phone.read_inbox(pos)[0] == []
    fake.receive("+254700000001", "m3", at=at[2] + timedelta(minutes=10))
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["m3"]
    assert phone.read_inbox(pos)[0] == []


def test_first_read_since_pages_back_to_since(fake, mode):
    fake.receive("+254700000009", "before", at=T0 - timedelta(seconds=1))
    for i in range(7):
        fake.receive("+254700000001", f"m{i}", at=T0 + timedelta(seconds=i))
        fake.add_row("sent", "+254700000001", f"reply {i}", at=T0 + timedelta(seconds=i))
    phone = TermuxPhone(page_size=3)
    rows, pos = phone.read_inbox(None, since=T0 + timedelta(milliseconds=300))  # same second
    assert bodies(rows) == [f"m{i}" for i in range(7)]
    assert phone.read_inbox(pos)[0] == []


def test_first_read_since_still_finds_a_later_row_dated_before_since(fake, mode):
    # Stored after the first read but dated earlier (a phone clock set back, or an SMS app
    # that stores the network's time): the position is after the newest row, not at `since`.
    fake.receive("+254700000009", "old", at=T0 - timedelta(hours=1))
    phone = TermuxPhone()
    rows, pos = phone.read_inbox(None, since=T0)
    assert rows == []
    fake.receive("+254700000001", "late", at=T0 - timedelta(seconds=30))
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["late"]
    assert phone.read_inbox(pos)[0] == []


def test_unknown_position_starts_after_the_newest_row(fake):
    fake.receive("+254700000001", "old", at=T0)
    assert TermuxPhone().read_inbox({"whatever": 1})[0] == []


# outgoing ------------------------------------------------------------------------------
def test_read_outgoing_finds_sent_and_failed_rows_since(fake, mode):
    fake.add_row("sent", "+254700000001", "too old", at=T0 - timedelta(minutes=5))
    fake.receive("+254700000002", "an inbox row", at=T0)
    fake.add_row("draft", "+254700000003", "a draft", at=T0)
    fake.add_row("outbox", "+254700000003", "in the outbox", at=T0)
    fake.add_row(6, "+254700000003", "queued", at=T0)
    phone = TermuxPhone()
    phone.send("+254700000004", "  first ")
    fake.set_mode(fail_next=1, clock=(T0 + timedelta(seconds=1)).isoformat())
    phone.send("+254700000005", "second")
    fake.set_clock(T0 + timedelta(seconds=2))
    phone.send("+254700000006", "third")
    rows = phone.read_outgoing(T0)
    assert [(r.kind, r.address, r.body, r.date) for r in rows] == [
        (SENT, "+254700000004", "first", T0.replace(microsecond=0)),
        (FAILED, "+254700000005", "second", T0.replace(microsecond=0) + timedelta(seconds=1)),
        (SENT, "+254700000006", "third", T0.replace(microsecond=0) + timedelta(seconds=2)),
    ]
    assert bodies(phone.read_outgoing(T0 + timedelta(seconds=1, microseconds=300000))) == [
        "second", "third"]
    assert phone.read_outgoing(T0 + timedelta(seconds=3)) == []
    assert not any("failed" in c["argv"] or "queued" in c["argv"]
                   for c in fake.calls("termux-sms-list"))


def test_read_outgoing_pages_through_many_rows(fake, mode):
    phone = TermuxPhone(page_size=4)
    for i in range(10):
        fake.add_row("sent" if i % 3 else "failed", "+254700000001", f"s{i}",
                     at=T0 + timedelta(seconds=i))
        fake.receive("+254700000002", f"in{i}", at=T0 + timedelta(seconds=i, milliseconds=100))
    rows = phone.read_outgoing(T0)
    assert bodies(rows) == [f"s{i}" for i in range(10)]
    assert [r.kind for r in rows][:4] == [FAILED, SENT, SENT, FAILED]


def test_radio_off_send_ends_as_a_failed_row(fake):
    fake.set_mode(radio_off=1)
    phone = TermuxPhone()
    phone.send("0700111222", "hi")
    assert [(r.kind, r.body) for r in phone.read_outgoing(T0)] == [(FAILED, "hi")]


def test_failed_row_may_first_show_as_sent(fake):
    fake.set_mode(radio_off=1, fail_delay=0.5)
    phone = TermuxPhone()
    phone.send("0700111222", "hi")
    assert [r.kind for r in phone.read_outgoing(T0)] in ([SENT], [FAILED])
    deadline = time.monotonic() + 10
    while phone.read_outgoing(T0)[0].kind != FAILED and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [r.kind for r in phone.read_outgoing(T0)] == [FAILED]


# call budget -----------------------------------------------------------------------------
def test_calls_per_method(fake, mode):
    fake.receive("+254700000009", "old", at=T0)  # so the probe can tell an old app
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    assert phone.calls == 2  # the probe, then the first read
    fake.receive("+254700000001", "hi", at=T0 + timedelta(seconds=1))
    for method, call in [
        (lambda: phone.read_inbox(pos), "termux-sms-list"),
        (lambda: phone.read_outgoing(T0), "termux-sms-list"),
        (lambda: phone.send("0700111222", "x"), "termux-sms-send"),
        (lambda: phone.read_outgoing(T0), "termux-sms-list"),
        (phone.diagnose, "termux-telephony-deviceinfo"),
    ]:
        before, logged = phone.calls, fake.call_count(call)
        method()
        assert (phone.calls - before, fake.call_count(call) - logged) == (1, 1)
    assert phone.calls == fake.call_count()


# diagnose and doctor helpers -------------------------------------------------------------
@pytest.mark.parametrize(("modes", "expected"), [
    ({}, None), ({"no_sim": 1}, "no SIM"), ({"no_operator": 1}, "no network operator"),
    ({"hang": 1}, None),
])
def test_diagnose(fake, modes, expected):
    fake.set_mode(**modes)
    assert TermuxPhone(list_timeout=1).diagnose() == expected


@pytest.mark.parametrize(("modes", "expected"), [
    # reality2 finding 12: `unknown` is transitional, 6 is SIM_STATE_NOT_READY (the app
    # prints states it has no word for as numbers); a data network `unknown` (mobile data
    # off) is no cause.
    ({"sim_state": "unknown"}, "SIM not ready"), ({"sim_state": "6"}, "SIM not ready"),
    ({"sim_state": "8"}, "SIM not ready (card_io_error)"),
    ({"sim_state": "pin_required"}, "SIM not ready (pin_required)"),
    ({"mobile_data": 0}, None),
])
def test_diagnose_sim_states_the_app_prints(fake, modes, expected):
    fake.set_mode(**modes)
    assert TermuxPhone(list_timeout=5).diagnose() == expected


def test_diagnose_says_it_read_the_default_sim_when_a_slot_is_configured(fake):
    fake.set_mode(no_sim=1)
    assert TermuxPhone(sim_slot=1).diagnose() == (
        "no SIM (the phone's default SIM; smsgw sends with SIM slot 1)")


def test_diagnose_after_a_permission_refusal_asks_no_more(fake):
    fake.set_mode(permission_error="READ_PHONE_STATE")
    phone = TermuxPhone()
    assert phone.diagnose() is None
    assert phone.diagnose() is None
    assert "not asked again until smsgw restarts" in (phone.read_health().problem or "")
    assert fake.call_count("termux-telephony-deviceinfo") == 1
    assert len(fake.provider.screens()) == 1


def test_diagnose_never_raises_on_garbage(tmp_path, monkeypatch):
    script(tmp_path, monkeypatch, "termux-telephony-deviceinfo", "echo garbage")
    assert TermuxPhone().diagnose() is None


def test_termux_api_installed(fake, tmp_path, monkeypatch):
    assert termux_api_installed() is True
    monkeypatch.setenv("PATH", str(tmp_path))
    assert termux_api_installed() is False


def test_app_installed(fake, tmp_path, monkeypatch):
    assert app_installed() is True
    fake.set_mode(app_missing=1)
    assert app_installed() is False
    monkeypatch.setenv("PATH", str(tmp_path))
    assert app_installed() is None


def test_sms_permission_problem(fake):
    assert sms_permission_problem() is None
    fake.set_mode(permission_error=1)
    assert sms_permission_problem() == ("Please grant the following permissions to use this "
                                        "command: android.permission.READ_SMS ,"
                                        "android.permission.READ_CONTACTS")
    fake.set_mode(permission_error=None, app_missing=1)
    assert "did not answer" in sms_permission_problem(timeout=1)


def test_wake_lock_never_raises(fake):
    wake_lock()
    fake.set_mode(hang=1)
    wake_lock(timeout=1.5)
    assert [c["name"] for c in fake.calls()] == ["termux-wake-lock", "termux-wake-lock"]


# the fakes themselves --------------------------------------------------------------------
def test_fake_list_behaves_like_termux(fake):
    fake.add_contact("0700 000 001", "Alice")
    fake.receive("+254700000001", "from alice", at=T0)
    fake.add_row("failed", "+254700000001", "to alice", at=T0 + timedelta(seconds=1))
    fake.receive("+254700000002", "newest", at=T0 + timedelta(seconds=2))
    out = json.loads(run_command(("termux-sms-list", "-l", "2"), timeout=10))
    assert [r["body"] for r in out] == ["to alice", "newest"]  # newest last
    assert list(out[0]) == ["threadid", "type", "read", "sender", "address", "number",
                            "received", "body", "_id"]
    assert (out[0]["type"], out[0]["sender"], out[1].get("sender")) == ("failed", "You", None)
    failed = json.loads(run_command(("termux-sms-list", "-t", "failed", "-l", "9"), timeout=10))
    assert len(failed) == 3  # the bug: every message
    with pytest.raises(PhoneError):
        parse_json("termux-sms-list", run_command(("termux-sms-list", "-v"), timeout=10))
    with pytest.raises(CommandFailed, match="no recipient"):
        run_command(("termux-sms-send",), stdin="hi", timeout=10)


def test_fake_notifications_and_control_command(fake):
    fake.notify("com.google.android.apps.messaging", "Bob", "see you")
    (note,) = json.loads(run_command(("termux-notification-list",), timeout=10))
    assert (note["packageName"], note["title"], note["content"]) == (
        "com.google.android.apps.messaging", "Bob", "see you")
    run_command(("fake-termux", "mode", "notification_access=0"), timeout=10)
    with pytest.raises(PhoneTimeout):
        run_command(("termux-notification-list",), timeout=1)
    row_id = run_command(("fake-termux", "receive", "+254700000001", "hello"), timeout=10)
    assert fake.rows("inbox")[0]["_id"] == int(row_id)
    assert run_command(("fake-termux", "calls", "--count", "termux-notification-list"),
                       timeout=10).strip() == "2"
