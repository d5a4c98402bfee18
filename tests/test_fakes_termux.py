"""The fake termux-* executables behave like the real termux-api, never kinder.

Each fact is read from the real sources (termux/termux-api-package scripts at v0.58.0 and
v0.59.1, termux/termux-api SmsInboxAPI/SmsSendAPI/TermuxApiPermissionActivity at v0.49 to
v0.53.0); see tests/fakes/README.md.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from smsgw.errors import PhoneTimeout
from smsgw.phone.termux import TermuxPhone, run_command

pytest_plugins = ["fakes.fixtures"]

T0 = datetime(2026, 3, 10, 9, 15, 42, tzinfo=timezone.utc)


@pytest.fixture
def fake(fake_termux):
    fake_termux.set_clock(T0)
    return fake_termux


def run(fake, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), input=stdin, capture_output=True, text=True,
                          env={**fake.env, **(env or {})}, timeout=timeout,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def listed(fake, *args: str) -> list[dict]:
    proc = run(fake, "termux-sms-list", *args)
    assert (proc.returncode, proc.stderr) == (0, ""), proc
    return json.loads(proc.stdout)


def hangs(fake, *args: str, stdin: str = "") -> bool:
    """Whether the command is still waiting after a while (killed with its group)."""
    with pytest.raises(PhoneTimeout):
        run_command(args, stdin=stdin, timeout=0.8)
    return True


def group_alive(pgid: int) -> bool:
    """Whether a process (not a zombie) of group `pgid` is left."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@pytest.fixture
def three_rows(fake):
    fake.receive("+254700000001", "in one", at=T0)
    fake.add_row("sent", "+254700000002", "out", at=T0 + timedelta(seconds=1))
    fake.receive("+254700000003", "in two", at=T0 + timedelta(seconds=2))
    return fake


# termux-sms-list, script 0.59 (bash) ------------------------------------------------------
@pytest.mark.parametrize(("args", "stderr", "help_shown"), [
    (["--message-selection", "type = 1"],
     "termux-sms-list: No argument set for arg option '--message-selection'.\n", False),
    (["--message-selection="],
     "termux-sms-list: No argument set for arg option '--message-selection'.\n", False),
    (["--message-sort-order", "_id ASC"],
     "termux-sms-list: No argument set for arg option '--message-sort-order'.\n", False),
    (["--no-such-option"], "termux-sms-list: Unknown option: '--no-such-option'.\n", True),
    (["--quiet=1"], "termux-sms-list: Unknown option: '--quiet=1'.\n", True),
    (["-x"], "termux-sms-list: Unknown option: '-x'.\n", True),
    (["-l"], "termux-sms-list: No argument passed for arg option '-l'.\n", True),
    (["-vvvvv"], "termux-sms-list: Invalid option, max log level is 5.\n", False),
])
def test_script_059_argument_errors_exit_64(fake, args, stderr, help_shown):
    proc = run(fake, "termux-sms-list", *args)
    assert (proc.returncode, proc.stderr) == (64, stderr)
    assert proc.stdout.startswith("termux-sms-list command lists") is help_shown
    assert help_shown or proc.stdout == ""
    assert fake.call_count("termux-sms-list") == 1


def test_script_059_other_errors(fake):
    proc = run(fake, "termux-sms-list", "-t", "nope")
    assert proc.returncode == 1
    assert proc.stderr == ("termux-sms-list: Unsupported message type 'nope'. It must one of "
                           "following: all|inbox|sent|draft|outbox|failed|queued\n")
    proc = run(fake, "termux-sms-list", "-l", "1", "extra")
    assert proc.returncode == 64 and "logger__log_error: command not found" in proc.stderr
    proc = run(fake, "termux-sms-list", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("termux-sms-list command lists")


def test_script_059_takes_the_equals_form_and_debug_output_breaks_the_json(three_rows):
    assert [r["body"] for r in listed(three_rows, "--message-selection=type = 1",
                                      "--message-limit=5", "--message-type=all")] == [
        "in one", "in two"]
    out = run(three_rows, "termux-sms-list", "-v", "-l", "1").stdout
    assert out.startswith("termux-sms-list: Running command\n")
    assert out.endswith("termux-sms-list: Command successful\n")
    # The log level also comes from the environment; TermuxPhone never passes it on.
    out = run(three_rows, "termux-sms-list", env={"TERMUX_API__LOG_LEVEL": "2"}).stdout
    assert out.startswith("termux-sms-list: Running command\n")


def test_termux_phone_drops_the_log_level_from_the_environment(three_rows, monkeypatch):
    monkeypatch.setenv("TERMUX_API__LOG_LEVEL", "3")
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    assert phone.read_inbox(pos)[0] == []


def test_page_is_printed_reversed_for_any_sort_order(three_rows):
    ids = [r["_id"] for r in listed(three_rows, "--message-sort-order=_id ASC", "-l", "2")]
    assert ids == [2, 1]  # the page holds ids 1 and 2, the highest printed first
    ids = [r["_id"] for r in listed(three_rows, "--message-sort-order=_id ASC",
                                    "--message-return-no-order-reverse", "-l", "2")]
    assert ids == [1, 2]  # the real 0.59 script and app 0.51+ have this switch
    assert [r["body"] for r in listed(three_rows, "-l", "2")] == ["out", "in two"]


def test_failed_and_queued_types_list_every_message(three_rows):
    assert len(listed(three_rows, "-t", "failed")) == 3
    assert len(listed(three_rows, "-t", "queued")) == 3


def test_bad_selection_answers_nothing(three_rows):
    proc = run(three_rows, "termux-sms-list", "--message-selection=no_such_column = 1")
    assert (proc.returncode, proc.stdout) == (0, "")


def test_an_int_extra_am_refuses_hangs(fake):
    assert listed(fake, "-l", "0x5") == []  # Integer.decode takes hex
    assert hangs(fake, "termux-sms-list", "-l", "ten")
    assert hangs(fake, "termux-sms-list", "-o", "")


# termux-sms-list, script 0.58 (dash getopts) ----------------------------------------------
@pytest.mark.parametrize(("args", "stdout"), [
    (["--message-selection=type = 1"], "termux-sms-list: illegal option --\n"),
    (["-v"], "termux-sms-list: illegal option -v\n"),
    (["-l"], "termux-sms-list: illegal option -l\n"),
    (["-t", "failed"], "termux-sms-list: Unsupported type 'failed'. Use one of: "
                       "all|inbox|sent|draft|outbox\n"),
    (["-t", "queued"], "termux-sms-list: Unsupported type 'queued'. Use one of: "
                       "all|inbox|sent|draft|outbox\n"),
    (["-l", "1", "extra"], "termux-sms-list: too many arguments\n"),
])
def test_script_058_errors_exit_1_on_stdout(fake, args, stdout):
    fake.set_mode(script_version="0.58")
    proc = run(fake, "termux-sms-list", *args)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, stdout, "")


def test_old_version_is_the_oldest_pair(three_rows):
    three_rows.set_mode(old_version=1)
    proc = run(three_rows, "termux-sms-list", "--message-selection=type = 1")
    assert proc.returncode == 1
    (row,) = listed(three_rows, "-l", "1")
    assert "_id" not in row and "address" not in row
    three_rows.set_mode(script_version="0.59")  # an explicit version wins over the alias
    assert len(listed(three_rows, "--message-selection=type = 1")) == 3  # app 0.49 ignores it


# the app's versions -----------------------------------------------------------------------
@pytest.mark.parametrize(("app", "fields", "inbox_rows", "selected"), [
    ("0.49", ["threadid", "type", "read", "sender", "number", "received", "body"], 3, 3),
    ("0.50", ["threadid", "type", "read", "sender", "number", "received", "body", "_id"], 2, 3),
    ("0.51", ["threadid", "type", "read", "sender", "address", "number", "received", "body",
              "_id"], 2, 1),
    ("0.53", ["threadid", "type", "read", "sender", "address", "number", "received", "body",
              "_id"], 2, 1),
])
def test_app_versions(three_rows, app, fields, inbox_rows, selected):
    three_rows.set_mode(app_version=app)
    three_rows.add_contact("0700000002", "Bob")
    rows = listed(three_rows, "-l", "9")
    assert list(rows[1]) == fields
    assert rows[1]["sender"] == ("Bob" if app < "0.50" else "You")  # a sent row
    assert len(listed(three_rows, "-t", "inbox")) == inbox_rows  # 0.49: no inbox URI
    assert len(listed(three_rows, "--message-selection=_id = 1")) == selected
    # -f: a substring LIKE before 0.51, exact after.
    assert len(listed(three_rows, "-f", "70000000")) == (3 if app < "0.51" else 0)
    assert len(listed(three_rows, "-f", "+254700000003")) == 1


def test_fake_mode_versions_from_the_command_line(fake):
    run(fake, "fake-termux", "mode", "app_version=0.50", "script_version=0.58")
    assert fake.modes == {"clock": T0.isoformat(), "app_version": "0.50",
                          "script_version": "0.58"}


# permissions ------------------------------------------------------------------------------
def test_missing_permissions_print_indented_json_and_read_no_stdin(three_rows):
    three_rows.set_mode(permission_error=1)
    proc = run(three_rows, "termux-sms-send", "-n", "0700111222", stdin="hello")
    assert proc.returncode == 0
    assert proc.stdout == (
        '{\n  "error": "Please grant the following permissions to use this command: '
        'android.permission.READ_PHONE_STATE ,android.permission.SEND_SMS"\n}\n')
    assert three_rows.calls("termux-sms-send")[-1]["stdin_len"] is None
    assert len(three_rows.rows("sent")) == 1  # only the fixture's
    three_rows.set_mode(permission_error="READ_CONTACTS")
    assert json.loads(run(three_rows, "termux-sms-list").stdout) == {
        "error": "Please grant the following permission to use this command: "
                 "android.permission.READ_CONTACTS"}
    three_rows.set_mode(permission_error="READ_PHONE_STATE", app_version="0.50")
    run(three_rows, "termux-sms-send", "-n", "0700111222", stdin="before 0.51")
    assert three_rows.rows("sent")[-1]["body"] == "before 0.51"  # only SEND_SMS checked


# termux-sms-send ------------------------------------------------------------------------------
def test_send_script_errors(fake):
    for args, out in [([], "termux-sms-send: no recipient number given\n"),
                      (["-x"], "termux-sms-send: illegal option -x\n"),
                      (["-n"], "termux-sms-send: illegal option -n\n")]:
        proc = run(fake, "termux-sms-send", *args, stdin="hi")
        assert (proc.returncode, proc.stdout) == (1, out)
    assert fake.rows() == []


def test_send_text_that_trims_to_nothing_sends_nothing(fake):
    proc = run(fake, "termux-sms-send", "-n", "0700111222", stdin=" \t\n\x01\x1f ")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert fake.rows() == []
    run(fake, "termux-sms-send", "-n", "0700111222", stdin="\u00a0x\u3000\n")
    assert [r["body"] for r in fake.rows()] == ["\u00a0x\u3000"]


def test_send_text_arguments_go_through_dash_echo(fake):
    # echo "$@" | termux-api SmsSend: escapes are interpreted, \c ends the text.
    run(fake, "termux-sms-send", "-n", "0700111222", "a\\tb", "c\\cdropped", stdin="unread")
    assert [r["body"] for r in fake.rows()] == ["a\tb c"]
    assert fake.calls("termux-sms-send")[0]["stdin_len"] is None


def test_send_slots(fake):
    run(fake, "termux-sms-send", "-n", "0700000001", "-s", "1", stdin="slot 1")
    run(fake, "termux-sms-send", "-n", "0700000002", "-s", "-1", stdin="default SIM")
    run(fake, "termux-sms-send", "-n", "0700000003", "-s", "2", stdin="no such slot")
    assert [r["body"] for r in fake.rows()] == ["slot 1", "default SIM"]


@pytest.mark.parametrize("slot", ["one", "1 2"])
def test_send_with_a_slot_that_is_not_an_integer_hangs_in_its_group(fake, slot):
    started = time.monotonic()
    assert hangs(fake, "termux-sms-send", "-n", "0700111222", "-s", slot, stdin="hi")
    assert time.monotonic() - started < 10
    (call,) = fake.calls("termux-sms-send")
    assert call["stdin_len"] is None  # nothing connected back to read it
    assert fake.rows() == []
    deadline = time.monotonic() + 5
    while group_alive(call["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(call["pid"])  # the fake and its `sleep` were killed together


# rows termux-sms-list prints oddly -----------------------------------------------------------
def test_a_lone_surrogate_body_is_printed_as_its_json_escape(fake):
    row_id = fake.receive("+254700000001", "half \ud83d emoji")
    assert fake.rows()[0]["body"] == "half \ud83d emoji"
    proc = run(fake, "termux-sms-list", "-l", "1")
    assert proc.returncode == 0
    assert '"body": "half \\ud83d emoji"' in proc.stdout  # valid UTF-8 on stdout
    assert json.loads(proc.stdout)[0]["body"] == "half \ud83d emoji"
    # A surrogate pair stored as two code points comes out as one character.
    fake.receive("+254700000001", "\ud83d\ude00", at=T0 + timedelta(seconds=1))
    assert listed(fake, "-l", "1")[0]["body"] == "😀"
    assert row_id == 1


def test_add_raw_row_prints_a_real_row_oddly(fake):
    fake.receive("+254700000001", "plain", at=T0)
    dateless = fake.add_raw_row("+254700000002", "no date", at=T0 + timedelta(seconds=1),
                                drop=["received"])
    nulled = fake.add_raw_row("+254700000003", "x", at=T0 + timedelta(seconds=2),
                              fields={"body": None, "received": "yesterday"})
    fake.add_raw_row("+254700000004", "x", at=T0 + timedelta(seconds=3), entry="garbage")
    sent = fake.add_raw_row("+254700000005", "out", at=T0 + timedelta(seconds=4), kind="sent",
                            drop=["received"])
    out = listed(fake, "-l", "9")
    assert out[0]["body"] == "plain"
    assert "received" not in out[1] and out[1]["_id"] == dateless
    assert (out[2]["body"], out[2]["received"], out[2]["_id"]) == (None, "yesterday", nulled)
    assert out[3] == "garbage"
    assert (out[4]["type"], out[4]["_id"], "received" in out[4]) == ("sent", sent, False)
    # Real rows: type URIs, selections and sort orders see them as any row.
    assert [r["_id"] for r in listed(fake, "-t", "sent")] == [sent]
    selected = listed(fake, "-t", "inbox", f"--message-selection=_id = {dateless}")
    assert [r.get("_id") for r in selected] == [dateless]
    assert [r["type"] for r in fake.rows()] == [1, 1, 1, 1, 2]
    # A deleted row's oddity goes with it: a reused `_id` prints normally.
    assert fake.delete(sent)
    assert fake.receive("+254700000006", "reuses the id", at=T0 + timedelta(seconds=5)) == sent
    assert listed(fake, "-l", "1")[0]["received"] == "2026-03-10 09:15:47"


def test_add_raw_row_from_the_command_line(fake):
    proc = run(fake, "fake-termux", "raw", "inbox", "+254700000001", "b", "--at",
               T0.isoformat(), "--drop", "received", "--set", "body=12", "--entry", "[1]")
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = run(fake, "fake-termux", "raw", "inbox", "+254700000001", "b", "--drop", "received",
               "--set", "body=null", "--at", (T0 + timedelta(seconds=1)).isoformat())
    assert listed(fake, "-l", "2") == [[1], {
        "threadid": 1, "type": "inbox", "read": False, "address": "+254700000001",
        "number": "+254700000001", "body": None, "_id": int(proc.stdout)}]


@pytest.mark.parametrize(("digits", "received"), [
    ("arabic", "٢٠٢٦-٠٣-١٠ ٠٩:١٥:٤٢"), ("persian", "۲۰۲۶-۰۳-۱۰ ۰۹:۱۵:۴۲"),
    ("devanagari", "२०२६-०३-१० ०९:१५:४२"), ("bengali", "২০২৬-০৩-১০ ০৯:১৫:৪২"),
])
def test_locale_digits_format_every_received(fake, digits, received):
    fake.set_mode(locale_digits=digits)
    fake.receive("+254700000001", "in", at=T0)
    fake.add_row("sent", "+254700000001", "out", at=T0)
    assert [r["received"] for r in listed(fake)] == [received, received]
    proc = run(fake, "fake-termux", "mode", "locale_digits=")
    assert proc.returncode == 0
    assert listed(fake, "-l", "1")[0]["received"] == "2026-03-10 09:15:42"


# termux-battery-status and termux-telephony-deviceinfo (reality2 findings 10-13, 16) --------
def answer(fake, name: str) -> dict:
    proc = run(fake, name)
    assert proc.returncode == 0 and proc.stderr == "", proc
    return json.loads(proc.stdout)


@pytest.mark.parametrize(("app", "fields", "temperature"), [
    # BatteryStatusAPI 0.50.1: six fields, the temperature a float widened to double.
    ("0.50", ["health", "percentage", "plugged", "status", "temperature", "current"],
     29.399999618530273),
    # 0.51: String.format("%.1f") in the phone's locale; null where Android gives nothing.
    ("0.51", ["present", "technology", "health", "plugged", "status", "temperature",
              "voltage", "current", "current_average", "percentage", "level", "scale",
              "charge_counter", "energy", "cycle"], "29,4"),
    ("0.52", ["present", "technology", "health", "plugged", "status", "temperature",
              "voltage", "current", "current_average", "percentage", "level", "scale",
              "charge_counter", "energy", "cycle"], 29.4),
    # 0.53 (27a7599): no null values.
    ("0.53", ["present", "technology", "health", "plugged", "status", "temperature",
              "voltage", "current", "current_average", "percentage", "level", "scale",
              "charge_counter", "cycle"], 29.4),
])
def test_battery_status_by_app_version(fake, app, fields, temperature):
    fake.set_mode(app_version=app, temperature=29.4, locale_decimal=",")
    got = answer(fake, "termux-battery-status")
    assert list(got) == fields
    assert got["temperature"] == temperature
    assert got.get("energy", "absent") in (None, "absent")


@pytest.mark.parametrize(("app", "crashes"), [("0.50", False), ("0.51", True),
                                              ("0.52", True), ("0.53", False)])
def test_battery_status_without_a_current_reading(fake, app, crashes):
    fake.set_mode(app_version=app, battery_unsupported="current")
    proc = run(fake, "termux-battery-status")
    assert proc.returncode == 0 and proc.stderr == ""
    notes = json.loads(run(fake, "termux-notification-list").stdout)
    if crashes:  # the NullPointerException: nothing printed, an error notification
        assert proc.stdout == ""
        assert [(n["packageName"], n["title"]) for n in notes] == [
            ("com.termux.api", "Termux:API Error")]
    else:
        got = json.loads(proc.stdout)
        assert got.get("current", "absent") == (-(2 ** 63) if app == "0.50" else "absent")
        assert notes == []


def test_battery_status_without_a_battery_broadcast(fake):
    fake.set_mode(battery_broadcast=0, battery=40)
    got = answer(fake, "termux-battery-status")
    assert (got["plugged"], got["health"], got["status"], got["level"], got["scale"],
            got["temperature"]) == ("PLUGGED_-1", "-1", "UNKNOWN", -1, -1, -214748364.8)
    assert got["percentage"] == 40  # BatteryManager's property, not the broadcast
    fake.set_mode(app_version="0.52")
    assert run(fake, "termux-battery-status").stdout == ""
    fake.set_mode(battery_broadcast=None, battery_status="NOT_CHARGING", app_version="0.49",
                  plugged="PLUGGED_DOCK")
    got = answer(fake, "termux-battery-status")
    assert (got["status"], got["plugged"]) == ("NOT_CHARGING", "PLUGGED_8")


def test_deviceinfo_states_the_app_prints(fake):
    fake.set_mode(sim_state="6", network_type="hdspa")
    got = answer(fake, "termux-telephony-deviceinfo")
    assert (got["sim_state"], got["network_type"]) == ("6", "hdspa")
    fake.set_mode(mobile_data=0)
    got = answer(fake, "termux-telephony-deviceinfo")
    assert (got["network_type"], got["data_state"], got["data_enabled"],
            got["network_operator_name"]) == ("unknown", "disconnected", "false", "Safaricom")


def test_deviceinfo_permission_error_opens_the_permission_screen_every_time(fake):
    fake.set_mode(permission_error="READ_PHONE_STATE")
    for _ in range(2):
        assert "error" in answer(fake, "termux-telephony-deviceinfo")
    assert [s["name"] for s in fake.provider.screens()] == ["TermuxApiPermissionActivity"] * 2
    assert fake.provider.screens()[0]["extra"] == "android.permission.READ_PHONE_STATE"
    answer(fake, "termux-battery-status")  # needs no permission
    assert len(fake.provider.screens()) == 2


@pytest.mark.parametrize("name", ["termux-battery-status", "termux-telephony-deviceinfo"])
@pytest.mark.parametrize(("args", "code", "stdout"), [
    (["-h"], 0, "Usage: {name}\n"),
    (["-x"], 1, "{name}: illegal option -x\n"),
    (["--json"], 1, "{name}: illegal option --\n"),
    (["now"], 1, "{name}: too many arguments\n"),
    (["--", "now"], 1, "{name}: too many arguments\n"),
])
def test_plain_scripts_answer_their_arguments(fake, name, args, code, stdout):
    proc = run(fake, name, *args)
    assert (proc.returncode, proc.stderr) == (code, "")
    assert proc.stdout.startswith(stdout.format(name=name)), proc.stdout
    assert "{" not in proc.stdout  # the app was never asked
