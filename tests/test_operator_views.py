"""What the operator sees: the event log (`smsgw log`), `smsgw status` with its counters and
retries, `smsgw stats`, and the wording of issue #13.

Commands run as a user runs them (tests/runner.py); a Gateway is driven in-process only
to build a state the CLI then shows (the simulated phone lives in one process).
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeTermux
from runner import REPO, TIMEOUT, SmsgwRunner, wait_for

from smsgw.config import Settings
from smsgw.errors import ExitCode
from smsgw.gateway import Gateway
from smsgw.models import COUNTED_DAYS, Counters, Tally
from smsgw.phone.simulated import SimulatedPhone
from smsgw.store import Store
from smsgw.testserver import ReferenceWebapp
from smsgw.webapp import WebappClient

pytest_plugins = ["fakes.fixtures"]
pytestmark = pytest.mark.usefixtures("no_proxies")

PASSWORD = "Zq7SecretPw"
UTC_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
LONG_TEXT = "A long one " + "x" * 300  # GSM-7, 311 characters: 3 SMS parts


@pytest.fixture
def smsgw(tmp_path: Path) -> SmsgwRunner:
    return SmsgwRunner(tmp_path)


@pytest.fixture
def webapp(make_webapp: Callable[..., ReferenceWebapp]) -> ReferenceWebapp:
    return make_webapp(username="smsgw", password=PASSWORD)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class InProcess:
    """A Gateway over the CLI's own state folder, a simulated phone and the webapp, with a
    clock that moves only when told (started near the real time, so that the CLI's
    "today" is the gateway's)."""

    def __init__(self, smsgw: SmsgwRunner, webapp: ReferenceWebapp,
                 start: datetime | None = None, retention_days: int = 30) -> None:
        self.now = start or now_utc()
        self.phone = SimulatedPhone(lambda: self.now)
        self.store = Store(smsgw.home / "state", retention_days=retention_days)
        self.client = WebappClient(webapp.url)
        self.gateway = Gateway(self.store, self.client, self.phone, Settings(url=webapp.url),
                               lambda: self.now)

    def cycle(self, advance: float = 10) -> Any:
        report = self.gateway.cycle()
        assert report.errors == [] and report.internal_errors == [], report
        self.now += timedelta(seconds=advance)
        return report


@pytest.fixture
def in_process(smsgw: SmsgwRunner, webapp: ReferenceWebapp) -> Iterator[
        Callable[..., InProcess]]:
    made: list[InProcess] = []

    def make(**kwargs: Any) -> InProcess:
        rig = InProcess(smsgw, webapp, **kwargs)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.client.close()


# the event log -----------------------------------------------------------------------------
def test_the_log_tells_what_the_operator_did_in_utc_with_the_message_ids(
        smsgw: SmsgwRunner, webapp: ReferenceWebapp) -> None:
    ok(smsgw("config", "--url", webapp.url))
    ok(smsgw("config", "--interval", "30"))
    webapp.queue("not a number", "never sent", id="bad-1")
    webapp.queue("+15551230001", "hello", id="ok-1")
    ok(smsgw("run", "--phone", "simulated", "--once"))
    assert "bad-1: queued again" in ok(smsgw("retry", "bad-1"))
    local_id = ok(smsgw("send", "+15551230002", "a local test")).split()[1]

    text = smsgw.log_file.read_text(encoding="utf-8")
    assert PASSWORD not in text
    lines = text.splitlines()
    assert lines and all(UTC_LINE.match(line) for line in lines), text
    assert any("config: url changed: None -> http://smsgw:***@127.0.0.1:" in line
               for line in lines), text
    assert any("config: interval changed: 60 -> 30" in line for line in lines), text
    # every state change, once, with the id
    for change in ("message bad-1: new -> FAILED (invalid phone number",
                   "message bad-1: FAILED -> UNSENT (retry requested)",
                   "message ok-1: new -> UNSENT", "message ok-1: UNSENT -> SENDING",
                   "message ok-1: SENDING -> PENDING", f"message {local_id}: new -> UNSENT"):
        assert sum(change in line for line in lines) == 1, (change, text)
    # the context once said on lines of their own is on the change's one line
    assert any("message bad-1: FAILED -> UNSENT (retry requested): by a person" in line
               for line in lines)
    assert any(f"message {local_id}: new -> UNSENT: local message queued, to +15551230002"
               in line for line in lines)

    by_id = ok(smsgw("log", "--id", "bad-1")).splitlines()
    # its two changes, a line each (the refusal was a third line of its own before)
    assert len(by_id) == 2 and all("bad-1" in line for line in by_id), by_id
    assert not any("ok-1" in line for line in by_id)
    warnings = ok(smsgw("log", "--level", "warning")).splitlines()
    assert any("message bad-1: new -> FAILED" in line for line in warnings), warnings
    assert not any(" INFO " in line for line in warnings), warnings


def write_log(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_log_reads_the_rotated_files_oldest_first_and_filters_them(
        smsgw: SmsgwRunner) -> None:
    recent = now_utc() - timedelta(hours=1)
    older = now_utc() - timedelta(hours=3)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    # written by an older smsgw: local time, no zone
    write_log(smsgw.home / "smsgw.log.3", [
        "2026-11-20 10:00:00 INFO message m-7: new -> UNSENT (old format)"])
    write_log(smsgw.home / "smsgw.log.1", [
        "2026-11-25T08:00:00Z WARNING message m-70: SENDING -> UNSENT (no SIM)",
        "2026-11-25T08:00:01Z INFO message m-7: UNSENT -> SENDING"])
    write_log(smsgw.log_file, [
        f"{older.strftime(stamp)} ERROR internal error in send_due: boom",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in m-7',
        f"{recent.strftime(stamp)} INFO message m-7: SENDING -> PENDING"])

    every = ok(smsgw("log", "-n", "1000")).splitlines()
    assert every[0] == "2026-11-20 10:00:00 INFO message m-7: new -> UNSENT (old format)"
    assert every[1].startswith("2026-11-25T08:00:00Z") and len(every) == 7
    assert every[-1].endswith("SENDING -> PENDING")

    assert ok(smsgw("log", "-n", "2")).splitlines() == every[-2:]
    since = ok(smsgw("log", "--since", "2026-11-24")).splitlines()
    assert since == every[1:], since
    assert ok(smsgw("log", "--since", "2h")).splitlines() == every[-1:]

    m7 = ok(smsgw("log", "--id", "m-7")).splitlines()
    assert not any("m-70" in line for line in m7), m7
    assert [line for line in m7 if "Traceback" in line], m7  # the event naming it, whole
    assert len(m7) == 6

    errors = ok(smsgw("log", "--level", "WARNING")).splitlines()
    assert errors == every[1:2] + every[3:6], errors

    bad = smsgw("log", "--since", "yesterday")
    assert bad.returncode == ExitCode.USAGE  # as `smsgw messages --since yesterday`
    assert bad.stderr.startswith("smsgw: error: --since:") and len(
        bad.stderr.splitlines()) == 1, bad.stderr

    helped = ok(smsgw("log", "--help"))
    assert "-n INTEGER" in helped and "last N lines" in " ".join(helped.split())


def test_log_follow_shows_new_events_it_keeps_and_follows_the_rotation(
        smsgw: SmsgwRunner, tmp_path: Path) -> None:
    stamp = now_utc().strftime("%Y-%m-%dT%H:%M:%SZ")
    write_log(smsgw.log_file, [f"{stamp} INFO message f-1: new -> UNSENT"])
    out = tmp_path / "follow.out"
    proc = smsgw.popen("log", "-f", "--id", "f-1", out=out)
    try:
        wait_for(lambda: "new -> UNSENT" in out.read_text(), TIMEOUT, "the last line")
        with open(smsgw.log_file, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} INFO message f-2: new -> UNSENT\n")
            fh.write(f"{stamp} INFO message f-1: UNSENT -> SENDING\n")
        wait_for(lambda: "UNSENT -> SENDING" in out.read_text(), TIMEOUT, "a new line")
        smsgw.log_file.rename(smsgw.home / "smsgw.log.1")
        write_log(smsgw.log_file, [f"{stamp} INFO message f-1: SENDING -> PENDING"])
        wait_for(lambda: "SENDING -> PENDING" in out.read_text(), TIMEOUT,
                 "the first line of the new file")
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
    assert out.read_text().splitlines() == [
        f"{stamp} INFO message f-1: new -> UNSENT",
        f"{stamp} INFO message f-1: UNSENT -> SENDING",
        f"{stamp} INFO message f-1: SENDING -> PENDING"]


def test_log_follow_shows_the_lines_written_just_before_a_rotation(
        smsgw: SmsgwRunner, tmp_path: Path) -> None:
    # The daemon writes its last lines to the old file and rotates at once: `log -f`,
    # between two polls, must read them from the old file before moving to the new one.
    stamp = now_utc().strftime("%Y-%m-%dT%H:%M:%SZ")
    write_log(smsgw.log_file, [f"{stamp} INFO message r-0: new -> UNSENT"])
    out = tmp_path / "follow.out"
    proc = smsgw.popen("log", "-f", out=out)
    expected = [f"{stamp} INFO message r-0: new -> UNSENT"]
    try:
        wait_for(lambda: "r-0" in out.read_text(), TIMEOUT, "the last line")
        for n in range(1, 4):
            with open(smsgw.log_file, "a", encoding="utf-8") as fh:
                fh.write(f"{stamp} INFO message r-{n}: last line of the old file\n")
            smsgw.log_file.rename(smsgw.home / f"smsgw.log.{n}")
            write_log(smsgw.log_file, [f"{stamp} INFO message r-{n}: first of the new file"])
            expected += [f"{stamp} INFO message r-{n}: last line of the old file",
                         f"{stamp} INFO message r-{n}: first of the new file"]
            wait_for(lambda n=n: f"r-{n}: first of the new file" in out.read_text(),
                     TIMEOUT, "the first line of the new file")
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
    assert out.read_text().splitlines() == expected


# status ------------------------------------------------------------------------------------
def test_status_counts_a_real_run(smsgw: SmsgwRunner, webapp: ReferenceWebapp) -> None:
    ok(smsgw("config", "--url", webapp.url))
    for k in range(4):
        webapp.queue(f"+1555123000{k}", f"message {k}", id=f"m-{k}")
    webapp.queue("12ab", "to nowhere", id="m-bad")
    ok(smsgw("run", "--phone", "simulated", "--once"))

    code, data = smsgw.status_json()
    assert code == ExitCode.DAEMON_DOWN
    for span in ("today", "last_7_days", "all_time"):
        assert data["counters"][span] == {"sent": 0, "failed": 1, "received": 0, "parts": 0,
                                          "phone_errors": 0}, data["counters"]
    queues = data["queues"]
    assert queues["outgoing"]["PENDING"] == 4 and queues["outgoing"]["FAILED"] == 0
    assert queues["by_state"]["PENDING"]["count"] == 4
    assert queues["retrying"] == []

    text = smsgw("status").stdout
    assert re.search(r"outgoing: +PENDING 4 \(oldest \d+s\)", text), text
    assert re.search(r"failed +1 +1 +1", text), text
    assert "4 status updates queued" in text


def test_retrying_messages_show_with_their_next_try(
        smsgw: SmsgwRunner, webapp: ReferenceWebapp,
        in_process: Callable[..., InProcess]) -> None:
    rig = in_process()
    rig.cycle()  # first start
    webapp.queue("+15551230009", "try me", id="r-1")
    rig.phone.fail_next_sends(1)
    rig.cycle()  # handed over; the phone records it as failed
    rig.cycle()  # reconciled: a retry, due a minute after the failure

    code, data = smsgw.status_json()
    assert data["queues"]["outgoing"]["UNSENT"] == 1  # today's key, kept
    (retrying,) = data["queues"]["retrying"]
    assert retrying["id"] == "r-1" and retrying["retries"] == 1
    assert retrying["reason"] == "the phone recorded the SMS as failed"
    next_try = datetime.fromisoformat(retrying["next_try"])
    assert next_try > rig.now - timedelta(seconds=10)
    assert data["queues"]["by_state"]["RETRYING"]["count"] == 1
    assert "UNSENT" not in data["queues"]["by_state"]

    text = smsgw("status").stdout
    assert re.search(r"outgoing: +retrying 1 \(oldest", text), text
    assert re.search(r"retrying r-1 to \+15551230009: retry #1 due \d{4}-\d\d-\d\d "
                     r"\d\d:\d\d:\d\d UTC \(in \d+s\); last try: the phone recorded", text), \
        text


def test_counters_count_sent_parts_received_and_survive_archive_retention(
        smsgw: SmsgwRunner, webapp: ReferenceWebapp,
        in_process: Callable[..., InProcess]) -> None:
    start = now_utc() - timedelta(days=40)
    rig = in_process(start=start)
    rig.cycle()
    webapp.queue("+15551230001", "short", id="c-1")
    webapp.queue("+15551230002", LONG_TEXT, id="c-2")
    webapp.queue("x", "bad number", id="c-3")
    rig.phone.receive("+15551239999", "hello gateway")
    rig.phone.receive("+15551239998", "second")
    for _ in range(3):
        rig.cycle()
    with rig.store.unit(rig.now) as u:
        counted = u.counters
    assert counted.total() == Tally(sent=2, failed=1, received=2, parts=4, phone_errors=0)
    assert counted.since(rig.now, 1) == counted.total()
    assert webapp.status_of("c-1") == webapp.status_of("c-2") == "SENT"

    first_file = f"{start.date().isoformat()}.jsonl"
    assert first_file in rig.store.archive.file_names()
    # a day at a time to today, 40 days on (retention 30): that archive is gone, the
    # counts are not
    for day in range(1, 41):
        rig.now = start + timedelta(days=day)
        rig.cycle()
    assert first_file not in rig.store.archive.file_names()
    code, data = smsgw.status_json()
    assert data["counters"]["all_time"] == {"sent": 2, "failed": 1, "received": 2, "parts": 4,
                                            "phone_errors": 0}
    assert data["counters"]["today"] == data["counters"]["last_7_days"] == {
        "sent": 0, "failed": 0, "received": 0, "parts": 0, "phone_errors": 0}
    assert re.search(r"SMS parts +0 +0 +4", smsgw("status").stdout)


def test_counters_keep_seven_days_and_fold_the_rest_into_all_time() -> None:
    day0 = datetime(2026, 12, 1, 23, 59, tzinfo=timezone.utc)
    counters = Counters()
    for n in range(10):
        counters = counters.add(day0 + timedelta(days=n), sent=1, parts=n)
    last = day0 + timedelta(days=9)
    assert len(counters.days) == COUNTED_DAYS
    assert counters.since(last, 1) == Tally(sent=1, parts=9)
    assert counters.since(last, 7) == Tally(sent=7, parts=sum(range(3, 10)))
    assert counters.total() == Tally(sent=10, parts=sum(range(10)))
    # the clock went back a year: nothing is lost, the later days are folded
    back = counters.add(last - timedelta(days=365), failed=1)
    assert back.total() == Tally(sent=10, failed=1, parts=sum(range(10)))
    assert back.since(last - timedelta(days=365), 7) == Tally(failed=1)
    assert Counters.from_dict(back.to_dict()) == back


def test_phone_errors_are_counted(smsgw: SmsgwRunner, webapp: ReferenceWebapp,
                                  in_process: Callable[..., InProcess]) -> None:
    rig = in_process()
    rig.cycle()
    webapp.queue("+15551230001", "hello", id="p-1")

    def broken(*_: Any, **__: Any) -> None:
        from smsgw.errors import PhoneError

        raise PhoneError("termux-api did not answer")

    rig.phone.read_inbox = broken  # type: ignore[method-assign]
    report = rig.gateway.cycle()
    assert report.errors
    _, data = smsgw.status_json()
    assert data["counters"]["today"]["phone_errors"] == 1
    assert data["phone"]["last_error"]["text"].startswith("reading the inbox")


# stats -------------------------------------------------------------------------------------
def build_history(webapp: ReferenceWebapp, in_process: Callable[..., InProcess]) -> InProcess:
    """Three days: two days ago two messages SENT (10 s and 20 s after arrival) and an SMS
    received; yesterday one message FAILED; today a long message SENT 10 s after arrival
    (3 parts), kept in the queue (not archived yet)."""
    now = now_utc()
    today = max(now - timedelta(seconds=30), now.replace(hour=0, minute=0, second=0))
    rig = in_process(start=today - timedelta(days=2))
    rig.cycle()
    webapp.queue("+15551230001", "first", id="s-1")
    rig.phone.receive("+15551239999", "an answer")
    rig.cycle()  # s-1 arrives, handed over
    webapp.queue("+15551230002", "second", id="s-2")
    rig.cycle(advance=20)  # s-1 SENT 10 s after arrival; s-2 arrives, handed over
    rig.cycle()  # s-2 SENT 20 s after arrival
    rig.now = today - timedelta(days=1)
    webapp.queue("x", "bad", id="s-3")
    rig.cycle()
    rig.now = today
    webapp.queue("+15551230003", LONG_TEXT, id="s-4")
    rig.cycle()
    rig.gateway.housekeeping = lambda report: None  # type: ignore[method-assign]
    rig.cycle()
    with rig.store.unit(rig.now) as u:
        assert u.get("s-4").state.value == "SENT"  # type: ignore[union-attr]
    return rig


def test_stats_per_day_as_a_table_csv_and_json(
        smsgw: SmsgwRunner, webapp: ReferenceWebapp,
        in_process: Callable[..., InProcess]) -> None:
    rig = build_history(webapp, in_process)
    days = [(rig.now - timedelta(days=n)).date().isoformat() for n in (2, 1, 0)]

    data = json.loads(ok(smsgw("stats", "--days", "3", "--json")))
    assert data["by"] == "day" and data["from"] == days[0] and data["to"] == days[2]
    rows = {r["day"]: r for r in data["rows"]}
    assert list(rows) == days
    assert rows[days[0]] == {"day": days[0], "sent": 2, "failed": 0, "received": 1,
                             "sms_parts": 2, "median_seconds_to_sent": 15.0}
    assert rows[days[1]] == {"day": days[1], "sent": 0, "failed": 1, "received": 0,
                             "sms_parts": 0, "median_seconds_to_sent": None}
    assert rows[days[2]] == {"day": days[2], "sent": 1, "failed": 0, "received": 0,
                             "sms_parts": 3, "median_seconds_to_sent": 10.0}
    assert data["total"] == {"day": "total", "sent": 3, "failed": 1, "received": 1,
                             "sms_parts": 5, "median_seconds_to_sent": 10.0}

    table = ok(smsgw("stats", "--days", "3")).splitlines()
    assert table[0].split() == ["day", "(UTC)", "sent", "failed", "received", "SMS", "parts",
                                "median", "to", "SENT"]
    assert table[1].split() == [days[0], "2", "0", "1", "2", "15", "s"]
    assert table[2].split() == [days[1], "0", "1", "0", "0", "-"]
    assert table[4].split() == ["total", "3", "1", "1", "5", "10", "s"]

    rows_csv = list(csv.reader(io.StringIO(ok(smsgw("stats", "--days", "3", "--csv")))))
    assert rows_csv[0] == ["day", "sent", "failed", "received", "sms_parts",
                           "median_seconds_to_sent"]
    assert rows_csv[1:] == [[days[0], "2", "0", "1", "2", "15.0"],
                            [days[1], "0", "1", "0", "0", ""],
                            [days[2], "1", "0", "0", "3", "10.0"]]

    weekly = json.loads(ok(smsgw("stats", "--days", "14", "--week", "--json")))
    assert weekly["by"] == "week" and all(re.fullmatch(r"\d{4}-W\d\d", r["week"])
                                          for r in weekly["rows"])
    assert sum(r["sent"] for r in weekly["rows"]) == 3
    assert len(weekly["rows"]) in (2, 3)

    both = smsgw("stats", "--csv", "--json")
    assert both.returncode == ExitCode.USAGE


# wording ------------------------------------------------------------------------------------
def test_the_last_error_says_the_webapps_words_once(
        smsgw: SmsgwRunner, webapp: ReferenceWebapp) -> None:
    ok(smsgw("config", "--url", webapp.url))
    webapp.set_fault("status", status=500, body={"error": True,
                                                  "message": "database is down"})
    assert smsgw("run", "--phone", "simulated", "--once").returncode == ExitCode.WEBAPP_FAILING
    text = smsgw("status").stdout
    (line,) = [line for line in text.splitlines() if line.startswith("last error:")]
    assert line.count("database is down") == 1, line
    assert "HTTP 500" in line


def test_one_status_update_is_said_in_the_singular(
        smsgw: SmsgwRunner, webapp: ReferenceWebapp) -> None:
    ok(smsgw("config", "--url", webapp.url))
    webapp.queue("+15551230001", "hello", id="one")
    ok(smsgw("run", "--phone", "simulated", "--once"))
    text = smsgw("status").stdout
    assert "; 1 status update queued" in text, text


def test_every_exit_code_is_documented(smsgw: SmsgwRunner) -> None:
    helped = ok(smsgw("--help"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("### Exit codes"):]
    for code in ExitCode:
        assert re.search(rf"^\s+{int(code)}  \S", helped, re.M), (code, helped)
        assert re.search(rf"^\| {int(code)} \|", table, re.M), code
    assert "3 no daemon is running" in ok(smsgw("hook", "--help")).replace(",", "")
    assert "7 when a daemon already runs" in " ".join(ok(smsgw("run", "--help")).split())


def test_demo_says_when_an_sms_was_received_as_a_time(smsgw: SmsgwRunner) -> None:
    out = ok(smsgw("demo"))
    got = [line for line in out.splitlines() if "reached the webapp" in line]
    assert got and all(re.search(r"\(received \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)$", line)
                       for line in got), got
    assert " ms)" not in out


# over the fake Termux:API: SENT, with SMS parts, across two runs ---------------------------
def test_sent_messages_count_their_sms_parts_over_the_fakes(
        tmp_path: Path, fake_termux: FakeTermux, webapp: ReferenceWebapp) -> None:
    smsgw = SmsgwRunner(tmp_path, {k: v for k, v in fake_termux.env.items()
                                   if k in ("PATH", "FAKE_TERMUX_DIR")})
    smsgw.env["PREFIX"] = str(tmp_path / "usr")
    ok(smsgw("config", "--url", webapp.url))
    webapp.queue("+15551230001", "short", id="f-1")
    webapp.queue("+15551230002", LONG_TEXT, id="f-2")
    ok(smsgw("run", "--once"))  # sent: PENDING until the phone's sent rows settle
    subprocess.run(["fake-termux", "receive", "+15551239999", "hi there"], env=smsgw.env,
                   check=True, capture_output=True, timeout=TIMEOUT)
    ok(smsgw("run", "--once", env={"SMSGW_TEST_CLOCK_OFFSET": "60"}))  # SENT
    ok(smsgw("run", "--once", env={"SMSGW_TEST_CLOCK_OFFSET": "60"}))  # reported
    assert webapp.status_of("f-1") == webapp.status_of("f-2") == "SENT"

    _, data = smsgw.status_json()
    assert data["counters"]["today"] == {"sent": 2, "failed": 0, "received": 1, "parts": 4,
                                         "phone_errors": 0}
    log = ok(smsgw("log", "--id", "f-2"))
    assert "message f-2: SENDING -> PENDING: handed to the phone, to +15551230002, 3 SMS " \
        "parts" in log, log
    assert "message f-2: PENDING -> SENT" in log, log


def test_log_id_takes_a_unique_prefix_as_retry_and_cancel_do(smsgw: SmsgwRunner) -> None:
    first = ok(smsgw("send", "+15550001111", "first")).split()[1]
    second = ok(smsgw("send", "+15550002222", "second")).split()[1]
    prefix = next(first[:n] for n in range(7, len(first)) if not second.startswith(first[:n]))
    lines = ok(smsgw("log", "--id", prefix)).splitlines()
    assert lines and all(first in line for line in lines), lines
    assert not any(second in line for line in lines), lines
    # "local-" names both: refused in one line, the candidates listed (exit 5, as retry)
    both = smsgw("log", "--id", "local-")
    assert both.returncode == ExitCode.NOT_FOUND, both.stderr
    assert both.stderr.startswith("smsgw: error: local-: ambiguous id prefix, matches 2")
    assert first in both.stderr and second in both.stderr
    # an id the state does not know (older than the archive) is looked for as given
    assert ok(smsgw("log", "--id", "gone-1")) == ""
