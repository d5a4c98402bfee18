"""Alerts sent by the phone itself, and the phone's health (issue #14 items 2 and 5).

- the policy (smsgw.alerts) on its own: conditions in, alerts out, the clock a parameter;
- an in-process Gateway (SimulatedPhone, the reference webapp over HTTP, a Clock): a webapp
  failing longer than --alert-after gives one alert SMS then one recovery SMS, through the
  send path and the rate budget, never posted to the webapp; a low battery alerts;
- TermuxPhone.read_health over the fake termux-battery-status and
  termux-telephony-deviceinfo: the real output shapes, a hang, a permission error;
- `smsgw config --alert-*`, `smsgw run --once` and `smsgw status --json` in subprocesses over
  the fakes, the clock moved with SMSGW_TEST_CLOCK_OFFSET.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import T0, Clock
from fakes import FakeTermux
from fakes.faketermux import script
from runner import SmsgwRunner

from smsgw import alerts
from smsgw.alerts import AlertState, decide
from smsgw.config import Settings
from smsgw.errors import ExitCode
from smsgw.gateway import HEALTH_CALLS, HEALTH_EVERY, Gateway
from smsgw.health import PhoneHealth
from smsgw.phone.simulated import SimulatedPhone
from smsgw.phone.termux import TermuxPhone
from smsgw.store import Store
from smsgw.testserver import ReferenceWebapp
from smsgw.webapp import WebappClient

pytest_plugins = ["fakes.fixtures"]

ALERT_TO = "+254711000999"
AFTER = timedelta(minutes=30)
EVERY = timedelta(hours=6)
MIN = timedelta(minutes=1)


# the policy ----------------------------------------------------------------------------------
def run_policy(steps: list[tuple[timedelta, dict[str, str]]]
               ) -> list[tuple[timedelta, alerts.Alert]]:
    """Feed the policy the problems seen at each offset from T0; the alerts with their offset."""
    state, out = AlertState(), []
    for offset, problems in steps:
        state, sent = decide(state, problems, T0 + offset, after=AFTER, every=EVERY)
        out += [(offset, a) for a in sent]
        # What the gateway stores survives a restart: the state round-trips.
        assert AlertState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    return out


def test_a_webapp_problem_alerts_after_it_lasted_alert_after_then_recovers_once() -> None:
    down = {"webapp": "HTTP 503"}
    steps = [(k * 5 * MIN, down) for k in range(13)] + [(65 * MIN, {}), (70 * MIN, {})]
    sent = run_policy(steps)
    assert [(at, a.condition, a.recovery) for at, a in sent] == [
        (30 * MIN, "webapp", False), (65 * MIN, "webapp", True)]
    assert sent[0][1].text == "smsgw alert: webapp failing for 30 min: HTTP 503"
    assert sent[1][1].text == "smsgw ok: webapp failing recovered after 65 min"


def test_a_blip_shorter_than_alert_after_pages_nobody() -> None:
    steps = [(k * 5 * MIN, {"webapp": "timeout"}) for k in range(6)] + [(30 * MIN, {})]
    assert run_policy(steps) == []


def test_at_most_one_alert_per_condition_per_alert_every() -> None:
    down = {"webapp": "HTTP 500"}
    # Down 7 h: an alert at 30 min, a reminder 6 h later, nothing in between.
    steps = [(k * 10 * MIN, down) for k in range(43)]
    assert [at for at, _ in run_policy(steps)] == [30 * MIN, 30 * MIN + EVERY]
    # Flapping: down, alert, up (recovery), down again: the second alert waits for `every`,
    # and its episode, never alerted, ends without a recovery SMS.
    flap = ([(k * 10 * MIN, down) for k in range(4)] + [(40 * MIN, {})]
            + [(50 * MIN + k * 10 * MIN, down) for k in range(6)] + [(2 * 60 * MIN, {})])
    assert [(at, a.recovery) for at, a in run_policy(flap)] == [(30 * MIN, False),
                                                                 (40 * MIN, True)]


def test_battery_and_stuck_alert_at_once_and_each_condition_has_its_own_budget() -> None:
    steps = [(0 * MIN, {"battery": "12% and not plugged in"}),
             (1 * MIN, {"battery": "11% and not plugged in", "stuck": "1 message ..."}),
             (2 * MIN, {"stuck": "1 message ..."})]
    assert [(at, a.condition, a.recovery) for at, a in run_policy(steps)] == [
        (0 * MIN, "battery", False), (1 * MIN, "stuck", False), (2 * MIN, "battery", True)]


def test_a_clock_that_goes_back_neither_silences_nor_repeats_alerts() -> None:
    down = {"phone": "termux-sms-list did not answer"}
    state, first = decide(AlertState(), down, T0, after=AFTER, every=EVERY)
    state, first = decide(state, down, T0 + AFTER, after=AFTER, every=EVERY)
    assert len(first) == 1
    # The clock jumps a day back: the episode counts from then, the last alert is "future".
    state, again = decide(state, down, T0 - timedelta(days=1), after=AFTER, every=EVERY)
    assert again == [] and state.active["phone"].since == T0 - timedelta(days=1)
    assert state.active["phone"].alerted is not None  # its recovery will still be sent
    state, later = decide(state, {}, T0 - timedelta(days=1) + MIN, after=AFTER, every=EVERY)
    assert [a.recovery for a in later] == [True]


def test_an_alert_is_one_sms_of_printable_text() -> None:
    _, sent = decide(AlertState(), {"battery": "x\n\x1b[2J" + "y" * 300}, T0,
                     after=AFTER, every=EVERY)
    assert len(sent[0].text) == alerts.SMS_CHARS and "\n" not in sent[0].text
    assert "\x1b" not in sent[0].text


def health(percent: int | None, plugged: str | None, at_offset: timedelta = timedelta(0),
           status: str | None = None) -> PhoneHealth:
    return PhoneHealth(battery_percent=percent, plugged=plugged, battery_status=status,
                       at=T0 + at_offset)


@pytest.mark.parametrize(("sample", "was_low", "low"), [
    (health(15, "UNPLUGGED"), False, True),
    (health(16, "UNPLUGGED"), False, False),
    (health(5, "PLUGGED_USB"), False, False),
    (health(5, "PLUGGED_WIRELESS"), True, False),
    (health(5, None, status="CHARGING"), False, False),
    (health(5, None, status="DISCHARGING"), False, True),
    (health(18, "UNPLUGGED"), True, True),  # low until 20 %: no flapping at 15-16 %
    (health(20, "UNPLUGGED"), True, False),
    (health(5, "UNPLUGGED", at_offset=-alerts.SAMPLE_STALE - MIN), True, False),  # stale
    (health(None, "UNPLUGGED"), False, False),
    (None, True, False),
])
def test_battery_low_means_at_most_15_percent_on_battery(sample: PhoneHealth | None,
                                                         was_low: bool, low: bool) -> None:
    assert (alerts.battery_problem(sample, T0, was_low) is not None) is low


def test_stuck_sends_are_told_by_their_age_against_confirm_timeout() -> None:
    confirm = timedelta(minutes=15)
    assert alerts.stuck_problem(T0, [T0 - 14 * MIN, None], 0, 0, confirm) is None
    assert alerts.stuck_problem(T0, [T0 - 16 * MIN], 0, 0, confirm) == (
        "1 SMS part with no record on the phone after 15 min")
    assert alerts.stuck_problem(T0, [], 3, 1, confirm) == (
        "1 message failed with an unknown outcome; 3 messages due but not sent for over 15 min")


# an in-process gateway -----------------------------------------------------------------------
@dataclass
class Rig:
    webapp: ReferenceWebapp
    phone: SimulatedPhone
    store: Store
    gateway: Gateway
    clock: Clock

    def cycle(self, minutes: float = 0) -> Any:
        self.clock.advance(minutes * 60)
        return self.gateway.cycle()

    def alerts_sent(self) -> list[str]:
        return [text for number, text in self.phone.sends if number == ALERT_TO]

    def summary(self) -> dict[str, Any]:
        return self.store.summary(self.clock())


@pytest.fixture
def make_rig(tmp_path: Path, clock: Clock, no_proxies: None,
             make_webapp: Callable[..., ReferenceWebapp]) -> Iterator[Callable[..., Rig]]:
    clients: list[WebappClient] = []

    def make(**settings: Any) -> Rig:
        webapp = make_webapp()
        client = WebappClient(webapp.url)
        clients.append(client)
        phone = SimulatedPhone(clock)
        store = Store(tmp_path / f"state{len(clients)}")
        # Polls every 15 s: the health is read every 15 min (HEALTH_EVERY).
        settings = {"alert_to": ALERT_TO, "interval": 15, **settings}
        gateway = Gateway(store, client, phone, Settings(url=webapp.url, **settings), clock)
        rig = Rig(webapp, phone, store, gateway, clock)
        assert rig.cycle().errors == []
        return rig

    yield make
    for client in clients:
        client.close()


def test_webapp_down_longer_than_alert_after_one_alert_then_one_recovery(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(alert_after=30 * 60)
    rig.webapp.set_fault("status", count=1000, status=503)
    first_failure = rig.clock.advance(5 * 60)
    assert rig.gateway.cycle().errors
    while rig.clock() < first_failure + AFTER - 5 * MIN:
        rig.cycle(5)
        assert rig.alerts_sent() == [], rig.clock()
    rig.cycle(5)
    assert rig.clock() - first_failure == AFTER
    [alert] = rig.alerts_sent()
    assert alert.startswith("smsgw alert: webapp failing for 30 min: "), alert
    assert "503" in alert
    # Through the send path: a local message, counted in the rate budget like any send.
    assert rig.summary()["parts_last_minute"] == 1
    assert rig.summary()["alerts"]["last_sent"]["text"] == alert

    # Still down for two more hours: no second alert within --alert-every.
    for _ in range(24):
        rig.cycle(5)
    assert rig.alerts_sent() == [alert]

    rig.webapp.clear_faults()
    report = rig.cycle(5)
    assert report.errors == [] and report.posts >= 1
    assert rig.alerts_sent() == [alert, "smsgw ok: webapp failing recovered after 3 h"]  # 155 min
    summary = rig.summary()
    assert summary["alerts"]["active"] == {}
    for _ in range(3):
        rig.cycle(5)
    assert len(rig.alerts_sent()) == 2

    # The webapp never heard of them: no status update, no incoming SMS, nothing offered.
    snap = rig.webapp.snapshot()
    assert snap["received"] == []
    assert snap["updates"] == [] and snap["statuses"] == {}
    assert ALERT_TO not in json.dumps(snap["raw"])


def test_a_low_battery_alerts_once_and_recovers_when_plugged_in(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    assert rig.summary()["phone_health"]["battery_percent"] == 80  # sampled in cycle 1
    rig.phone.health = PhoneHealth(battery_percent=12, plugged="UNPLUGGED",
                                   battery_status="DISCHARGING")
    rig.cycle(5)  # the sample is 5 min old: not read again yet
    assert rig.alerts_sent() == []
    rig.cycle(10)
    assert rig.alerts_sent() == ["smsgw alert: battery low: 12% and not plugged in"]
    assert rig.summary()["phone_health"]["battery_percent"] == 12
    for _ in range(8):  # two hours, still low
        rig.cycle(15)
    assert len(rig.alerts_sent()) == 1
    rig.phone.health = PhoneHealth(battery_percent=13, plugged="PLUGGED_USB")
    rig.cycle(15)
    assert rig.alerts_sent()[1:] == ["smsgw ok: battery low recovered after 2 h"]


def test_health_is_sampled_at_most_every_15_minutes_and_kept_across_restarts(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    reads = []
    rig.phone.read_health = lambda: reads.append(rig.clock()) or PhoneHealth(  # type: ignore[method-assign]
        battery_percent=50, plugged="UNPLUGGED")
    for _ in range(30):
        rig.cycle(1)
    assert reads == [T0 + HEALTH_EVERY, T0 + 2 * HEALTH_EVERY]
    # A new Gateway (a restarted daemon) reads the last sample's time from the store.
    again = Gateway(rig.store, None, rig.phone, rig.gateway.settings, rig.clock)
    again.cycle()
    assert len(reads) == 2
    assert rig.summary()["phone_health"]["at"] == (T0 + 2 * HEALTH_EVERY).isoformat()


def test_health_costs_at_most_a_twentieth_of_a_termux_call_per_cycle(
        make_rig: Callable[..., Rig]) -> None:
    # At the default interval (60 s) a sample every 15 min would add 2 calls per 15 cycles;
    # it is read every 40 min instead: 2 calls per 40 cycles.
    rig = make_rig(interval=60)
    assert rig.gateway.health_period() == timedelta(minutes=40)
    reads = []
    rig.phone.read_health = lambda: reads.append(rig.clock()) or None  # type: ignore[method-assign]
    for _ in range(200):
        rig.cycle(1)
    assert reads == [T0 + k * timedelta(minutes=40) for k in (1, 2, 3, 4, 5)]
    assert HEALTH_CALLS * len(reads) / 200 <= 0.05


def test_no_alert_number_no_alert(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(alert_to=None)
    rig.phone.health = PhoneHealth(battery_percent=3, plugged="UNPLUGGED")
    rig.webapp.set_fault("status", count=1000, status=500)
    for _ in range(12):
        rig.cycle(10)
    assert rig.phone.sends == []
    assert rig.summary()["phone_health"]["battery_percent"] == 3  # still sampled


def test_a_send_refused_by_the_phone_every_cycle_alerts_as_a_phone_problem(
        make_rig: Callable[..., Rig]) -> None:
    # The inbox reads fine each cycle (which clears the recorded phone error), but every
    # send is refused: the condition must still be seen as lasting.
    from smsgw.errors import PhoneError

    rig = make_rig(alert_after=10 * 60)
    refused: list[str] = []
    real_send = rig.phone.send

    def send(number: str, text: str) -> None:
        if number != ALERT_TO:
            refused.append(text)
            raise PhoneError("termux-sms-send: Please grant the following permission to use "
                             "this command: android.permission.SEND_SMS")
        real_send(number, text)

    rig.phone.send = send  # type: ignore[method-assign]
    for k in range(8):
        rig.webapp.queue("+254700000123", f"hello {k}", id=f"w{k}")
        rig.cycle(3)
    assert len(refused) >= 4
    [alert] = rig.alerts_sent()
    assert alert.startswith("smsgw alert: phone not answering for "), alert
    assert "SEND_SMS" in alert


def test_a_send_with_no_record_on_the_phone_alerts_as_stuck(
        make_rig: Callable[..., Rig]) -> None:
    # A phone that takes the text and never records it (a stalled send): after
    # --confirm-timeout the message fails with an unknown outcome, and the operator hears.
    rig = make_rig(confirm_timeout=300)
    real_send = rig.phone.send
    rig.phone.send = lambda number, text: (  # type: ignore[method-assign]
        real_send(number, text) if number == ALERT_TO else None)
    rig.webapp.queue("+254700000555", "never recorded", id="w-stuck")
    for _ in range(5):
        rig.cycle(2)
    assert rig.webapp.status_of("w-stuck") == "FAILED"
    [alert] = rig.alerts_sent()
    assert alert == "smsgw alert: sends stuck: 1 SMS part with no record on the phone after 5 min"
    for _ in range(4):
        rig.cycle(2)
    assert rig.alerts_sent()[1:] == ["smsgw ok: sends stuck recovered after 6 min"]


# TermuxPhone.read_health over the fakes ----------------------------------------------------
def test_termux_health_reads_battery_sim_and_network(fake_termux: FakeTermux) -> None:
    fake_termux.set_mode(battery=14, plugged="UNPLUGGED")
    phone = TermuxPhone()
    got = phone.read_health()
    assert got == PhoneHealth(battery_percent=14, plugged="UNPLUGGED",
                              battery_status="DISCHARGING", battery_health="GOOD",
                              temperature=29.5, sim_state="ready", network_operator="Safaricom",
                              network_type="lte", data_state="connected")
    assert got.on_power is False
    assert [c["name"] for c in fake_termux.calls()] == ["termux-battery-status",
                                                        "termux-telephony-deviceinfo"]
    assert phone.calls == 2
    fake_termux.set_mode(no_sim=1)
    assert phone.read_health().sim_state == "absent"


@pytest.mark.parametrize(("battery", "expected"), [
    # Android before 5 or a phone without BATTERY_PROPERTY_CAPACITY: no `percentage`, only
    # `level`/`scale`; no temperature extra: the app prints Integer.MIN_VALUE / 10.
    ('{"present": true, "health": "OVERHEAT", "plugged": "UNPLUGGED", "status": '
     '"DISCHARGING", "temperature": -214748364.8, "voltage": 3700, "level": 37, "scale": 50}',
     {"battery_percent": 74, "plugged": "UNPLUGGED", "battery_status": "DISCHARGING",
      "battery_health": "OVERHEAT", "temperature": None}),
    # Termux:API 0.50's BatteryStatusAPI: fewer fields, an unknown plug type as PLUGGED_<n>.
    ('{"health": "GOOD", "percentage": 100, "plugged": "PLUGGED_8", "status": "FULL", '
     '"temperature": 31.0, "current": 0}',
     {"battery_percent": 100, "plugged": "PLUGGED_8", "battery_status": "FULL",
      "battery_health": "GOOD", "temperature": 31.0}),
    # Fields of the wrong type are unknown, never an error.
    ('{"percentage": "50", "plugged": 1, "status": null, "health": ["GOOD"]}',
     {"battery_percent": None, "plugged": "1", "battery_status": None, "battery_health": None,
      "temperature": None}),
])
def test_termux_health_parses_the_shapes_the_app_prints(
        fake_termux: FakeTermux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        battery: str, expected: dict[str, Any]) -> None:
    script(tmp_path, monkeypatch, "termux-battery-status", f"cat <<'EOF'\n{battery}\nEOF")
    got = TermuxPhone().read_health()
    assert {k: getattr(got, k) for k in expected} == expected
    assert got.problem is None and got.sim_state == "ready"


def test_termux_health_survives_a_hang(fake_termux: FakeTermux) -> None:
    fake_termux.set_mode(hang="termux-battery-status")
    got = TermuxPhone(list_timeout=1).read_health()
    assert got.battery_percent is None and got.sim_state is None
    assert got.problem is not None and "termux-battery-status did not answer within 1 s" in \
        got.problem
    # The app is not answering: the second call is not tried (it would hang too).
    assert fake_termux.call_count("termux-telephony-deviceinfo") == 0
    assert got.timed_out is True  # "phone not answering", for the alerts


def test_termux_health_survives_a_permission_error(fake_termux: FakeTermux) -> None:
    # termux-battery-status needs no permission; deviceinfo needs READ_PHONE_STATE and the
    # app answers {"error": "Please grant ..."}, exit 0.
    fake_termux.set_mode(permission_error=1)
    got = TermuxPhone().read_health()
    assert got.battery_percent == 85 and got.plugged == "PLUGGED_AC"
    assert got.sim_state is None and got.network_operator is None
    # (reality2 finding 13: the text now also says the permission is not asked again)
    assert got.problem == ("termux-telephony-deviceinfo: Please grant the following permission "
                           "to use this command: android.permission.READ_PHONE_STATE (not asked "
                           "again until smsgw restarts)")
    assert got.timed_out is False  # the phone answered: it refused


def test_termux_health_survives_garbage(fake_termux: FakeTermux, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    script(tmp_path, monkeypatch, "termux-telephony-deviceinfo", "echo garbage")
    got = TermuxPhone().read_health()
    assert got.battery_percent == 85
    assert got.problem is not None and "not JSON" in got.problem


# the commands, as a user runs them ----------------------------------------------------------
class Smsgw(SmsgwRunner):
    def __init__(self, tmp: Path, fake: FakeTermux) -> None:
        super().__init__(tmp, {k: v for k, v in fake.env.items()
                               if k in ("PATH", "FAKE_TERMUX_DIR")})


@pytest.fixture
def smsgw(tmp_path: Path, fake_termux: FakeTermux) -> Smsgw:
    return Smsgw(tmp_path, fake_termux)


def test_config_alert_options(smsgw: Smsgw) -> None:
    res = smsgw("config", "--alert-to", "+254 711-000.999", "--alert-after", "45m",
                "--alert-every", "2h")
    assert res.returncode == 0, res.stderr
    saved = json.loads(smsgw.config_file.read_text())
    assert (saved["alert_to"], saved["alert_after"], saved["alert_every"]) == (
        ALERT_TO, 2700, 7200)
    assert ["alert_to", ALERT_TO] in [line.split() for line in res.stdout.splitlines()]

    for args, words in [
        (("--alert-to", "call me"), "--alert-to must be a phone number"),
        (("--alert-to", "+2547;reboot"), "--alert-to must be a phone number"),
        (("--alert-after", "30s"), "--alert-after must be a duration"),
        (("--alert-every", "40d"), "--alert-every must be a duration"),
    ]:
        bad = smsgw("config", *args)
        assert bad.returncode == ExitCode.ERROR, bad.stderr
        assert bad.stderr.startswith(f"smsgw: error: {words}"), bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert json.loads(smsgw.config_file.read_text())["alert_to"] == ALERT_TO  # unchanged

    off = smsgw("config", "--alert-to", "none")
    assert off.returncode == 0, off.stderr
    assert json.loads(smsgw.config_file.read_text())["alert_to"] is None


def test_status_shows_the_phone_health(smsgw: Smsgw, fake_termux: FakeTermux,
                                       make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp()
    assert smsgw("config", "--url", webapp.url).returncode == 0
    fake_termux.set_mode(battery=12, plugged="UNPLUGGED")
    for _ in range(2):
        res = smsgw("run", "--once")
        assert res.returncode == 0, res.stderr
    # Sampled once: the second run found the sample of the first in the state.
    assert fake_termux.call_count("termux-battery-status") == 1

    code, data = smsgw.status_json()
    assert code == ExitCode.DAEMON_DOWN
    for key in ("healthy", "daemon", "webapp", "queues", "last_failures", "phone", "rate",
                "clock_jump"):
        assert key in data
    health = data["phone_health"]
    assert {k: health[k] for k in ("battery_percent", "plugged", "battery_status",
                                   "sim_state", "network_operator", "network_type")} == {
        "battery_percent": 12, "plugged": "UNPLUGGED", "battery_status": "DISCHARGING",
        "sim_state": "ready", "network_operator": "Safaricom", "network_type": "lte"}
    assert health["problem"] is None and health["at"]
    assert data["alerts"]["to"] is None

    text = smsgw("status").stdout
    line = next(x for x in text.splitlines() if x.startswith("phone health:"))
    assert "battery 12% UNPLUGGED (DISCHARGING, GOOD, 29.5 °C); SIM ready; network " \
           "Safaricom lte" in line


def test_an_alert_sent_by_the_phone_over_the_fakes(
        smsgw: Smsgw, fake_termux: FakeTermux,
        make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp(username="smsgw", password="Pa55word")
    assert smsgw("config", "--url", webapp.url).returncode == 0  # the URL holds the password
    assert smsgw("config", "--alert-to", ALERT_TO, "--alert-after", "10m").returncode == 0
    webapp.set_fault("status", count=1000, status=503)

    def run_at(minutes: int) -> Any:
        # The phone's clock and smsgw's move together.
        fake_termux.set_mode(clock_offset=minutes * 60)
        return smsgw("run", "--once", env={"SMSGW_TEST_CLOCK_OFFSET": str(minutes * 60)})

    assert run_at(0).returncode == ExitCode.WEBAPP_FAILING
    assert run_at(5).returncode == ExitCode.WEBAPP_FAILING
    assert fake_termux.rows("sent") == []
    assert run_at(11).returncode == ExitCode.WEBAPP_FAILING
    [alert] = fake_termux.rows("sent")
    assert alert["address"] == ALERT_TO
    assert alert["body"].startswith("smsgw alert: webapp failing for 11 min: ")
    assert "Pa55word" not in alert["body"]
    assert run_at(20).returncode == ExitCode.WEBAPP_FAILING
    assert len(fake_termux.rows("sent")) == 1

    webapp.clear_faults()
    assert run_at(25).returncode == ExitCode.OK
    bodies = [r["body"] for r in fake_termux.rows("sent")]
    assert bodies[1:] == ["smsgw ok: webapp failing recovered after 25 min"]
    assert webapp.snapshot()["statuses"] == {}

    code, data = smsgw.status_json()
    assert data["alerts"]["to"] == ALERT_TO and data["alerts"]["active"] == {}
    assert data["alerts"]["last_sent"]["recovery"] is True
    log = smsgw.log_file.read_text()
    assert "alert SMS" in log and "recovery SMS" in log and "Pa55word" not in log


# review findings 4, 6, 12, 15 ----------------------------------------------------------------
def test_an_alert_is_queued_with_its_state_so_a_failed_write_never_sends_it_twice(
        make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    # The disk fills up just as the alert's state is saved (a rare OS error, mocked at the
    # file write): the alert SMS must not already be queued in an earlier write, or the
    # next cycle decides it again and the operator gets it twice.
    import errno

    from smsgw.errors import StateError
    from smsgw.store import storage

    rig = make_rig()
    rig.phone.health = PhoneHealth(battery_percent=12, plugged="UNPLUGGED",
                                   battery_status="DISCHARGING")
    real_write = storage.atomic_write_text
    failed: list[str] = []

    def write(path: Any, text: str, *args: Any, **kwargs: Any) -> None:
        if not failed and '"last_sent":{' in text:  # the first write of a sent alert
            failed.append(text)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, text, *args, **kwargs)

    monkeypatch.setattr(storage, "atomic_write_text", write)
    with pytest.raises(StateError, match="No space left on device"):
        rig.cycle(15)  # the sample is due: the battery is low
    assert failed
    for _ in range(5):
        rig.cycle(5)
    assert rig.alerts_sent() == ["smsgw alert: battery low: 12% and not plugged in"]
    queued = [m for m in rig.store.messages(rig.clock(), 100).outgoing if m.to == ALERT_TO]
    assert len(queued) == 1, queued


def test_the_store_loads_neither_the_alert_policy_nor_the_health_types() -> None:
    # `smsgw status` imports smsgw.store at start-up: the gateway's alert policy is not the
    # store's business, and the health types are loaded when a unit reads them.
    import subprocess
    import sys

    from runner import REPO, clean_environ

    code = ("import sys, smsgw.store\n"
            "print(sorted(m for m in ('smsgw.alerts', 'smsgw.health') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, env={**clean_environ(), "PYTHONPATH": str(REPO)},
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(("modes", "alerted"), [
    # deviceinfo refused (no READ_PHONE_STATE): status shows it; the phone answers, so it
    # is no "phone not answering" alert, re-sent every --alert-every
    ({"permission_error": "READ_PHONE_STATE"}, False),
    ({"hang": "termux-battery-status"}, True),  # the app does not answer at all
])
def test_only_a_health_read_that_hangs_alerts_as_phone_not_answering(
        smsgw: Smsgw, fake_termux: FakeTermux, make_webapp: Callable[..., ReferenceWebapp],
        modes: dict[str, str], alerted: bool) -> None:
    webapp = make_webapp()
    assert smsgw("config", "--url", webapp.url).returncode == 0
    assert smsgw("config", "--alert-to", ALERT_TO, "--alert-after", "10m").returncode == 0
    config = json.loads(smsgw.config_file.read_text())
    smsgw.config_file.write_text(json.dumps({**config, "list_timeout": 1}))  # a short hang
    fake_termux.set_mode(**modes)
    # One hang is a blip: it alerts once the next sample (40 min later at the default
    # interval) hangs too, counted from the first.
    for minutes in (0, 11, 41, 50):
        fake_termux.set_mode(clock_offset=minutes * 60)
        res = smsgw("run", "--once", env={"SMSGW_TEST_CLOCK_OFFSET": str(minutes * 60)})
        assert "Traceback" not in res.stderr, res.stderr
    code, data = smsgw.status_json()
    assert data["phone_health"]["problem"], data["phone_health"]  # shown, either way
    sent = [r["body"] for r in fake_termux.rows("sent") if r["address"] == ALERT_TO]
    if alerted:
        [alert] = sent
        assert alert.startswith("smsgw alert: phone not answering for 41 min: "
                                "termux-battery-status did not answer within 1 s"), alert
    else:
        assert sent == []
        assert data["alerts"]["active"] == {} and data["alerts"]["last_sent"] is None
    assert data["phone_health"]["timed_out"] is alerted


def test_the_event_log_tells_a_health_sample_when_it_changed_not_every_time(
        smsgw: Smsgw, fake_termux: FakeTermux,
        make_webapp: Callable[..., ReferenceWebapp]) -> None:
    # Without --alert-to the sample is kept for `smsgw status`; the event log gets a line
    # when the power, SIM or network changed, not one every 40 minutes.
    webapp = make_webapp()
    assert smsgw("config", "--url", webapp.url).returncode == 0

    def run_at(minutes: int, battery: int, plugged: str) -> None:
        fake_termux.set_mode(battery=battery, plugged=plugged, clock_offset=minutes * 60)
        res = smsgw("run", "--once", env={"SMSGW_TEST_CLOCK_OFFSET": str(minutes * 60)})
        assert res.returncode == 0, res.stderr

    run_at(0, 60, "UNPLUGGED")
    run_at(41, 58, "UNPLUGGED")
    run_at(82, 57, "PLUGGED_AC")
    assert fake_termux.call_count("termux-battery-status") == 3  # sampled each time
    lines = [x for x in smsgw.log_file.read_text().splitlines() if "phone health:" in x]
    assert len(lines) == 2, lines
    assert "battery 60% UNPLUGGED" in lines[0] and "PLUGGED_AC" in lines[1]
    _, data = smsgw.status_json()
    assert data["phone_health"]["battery_percent"] == 57  # the status shows every sample


# reality2 findings 10-13: the health read over the real Termux:API 0.50-0.53 ------------------
def status_health_line(smsgw: Smsgw, webapp: ReferenceWebapp, *config: str) -> str:
    """`smsgw run --once` then the `phone health:` line of `smsgw status`."""
    assert smsgw("config", "--url", webapp.url, *config).returncode == 0
    res = smsgw("run", "--once")
    assert "Traceback" not in res.stderr, res.stderr
    text = smsgw("status").stdout
    return next(x for x in text.splitlines() if x.startswith("phone health:"))


@pytest.mark.parametrize(("modes", "shown"), [
    # App 0.51 prints the temperature as a string in the phone's locale.
    ({"app_version": "0.51", "locale_decimal": ","}, "(CHARGING, GOOD, 29.4 °C)"),
    ({"app_version": "0.51", "locale_decimal": "\u066b", "locale_digits": "arabic"},
     "(CHARGING, GOOD, 29.4 °C)"),
    # App 0.50 prints a float widened to double.
    ({"app_version": "0.50"}, "(CHARGING, GOOD, 29.4 °C)"),
])
def test_status_shows_the_temperature_every_app_version_prints(
        smsgw: Smsgw, fake_termux: FakeTermux, make_webapp: Callable[..., ReferenceWebapp],
        modes: dict[str, str], shown: str) -> None:
    fake_termux.set_mode(temperature=29.4, **modes)
    line = status_health_line(smsgw, make_webapp())
    assert f"battery 85% PLUGGED_AC {shown}; SIM ready" in line, line


@pytest.mark.parametrize("app", ["0.51", "0.52"])
def test_a_battery_read_the_old_app_crashes_on_says_to_update_termux_api(
        smsgw: Smsgw, fake_termux: FakeTermux, make_webapp: Callable[..., ReferenceWebapp],
        app: str) -> None:
    # A phone that gives no battery current: 0.51/0.52 print nothing, exit 0 (and post an
    # error notification); SIM and network are still read.
    fake_termux.set_mode(app_version=app, battery_unsupported="current")
    line = status_health_line(smsgw, make_webapp())
    assert "SIM ready; network Safaricom lte; not read: termux-battery-status gave no answer" \
        in line, line
    assert "update Termux:API to 0.53 or later" in line, line


def test_a_low_battery_alerts_when_android_gives_no_battery_broadcast(
        smsgw: Smsgw, fake_termux: FakeTermux,
        make_webapp: Callable[..., ReferenceWebapp]) -> None:
    # App 0.53 answers an empty Intent: `plugged` PLUGGED_-1 and status UNKNOWN. That is not
    # "plugged in": the power is unknown, and a low battery must still page the operator.
    fake_termux.set_mode(battery_broadcast=0, battery=12)
    webapp = make_webapp()
    assert smsgw("config", "--url", webapp.url, "--alert-to", ALERT_TO).returncode == 0
    for _ in range(2):
        assert smsgw("run", "--once").returncode == 0
    sent = [r["body"] for r in fake_termux.rows("sent") if r["address"] == ALERT_TO]
    assert sent and sent[0].startswith("smsgw alert: battery low: 12%"), sent
    # and it does not claim to know the phone is unplugged
    assert "does not say whether it is plugged in" in sent[0], sent
    _, data = smsgw.status_json()
    assert data["phone_health"]["plugged"] is None
    assert data["phone_health"]["battery_status"] == "UNKNOWN"


@pytest.mark.parametrize(("plugged", "status", "on_power"), [
    ("PLUGGED_-1", "UNKNOWN", None),   # stored by an older smsgw
    (None, "NOT_CHARGING", None),      # plugged in at a charge limit, or too hot
    (None, "UNKNOWN", None),
    ("PLUGGED_8", "NOT_CHARGING", True),  # app < 0.51's dock
    ("PLUGGED_USB", "NOT_CHARGING", True),
    ("UNPLUGGED", "NOT_CHARGING", False),
    (None, "FULL", True),
    (None, "DISCHARGING", False),
])
def test_on_power_is_unknown_when_the_app_cannot_tell(plugged: str | None, status: str,
                                                      on_power: bool | None) -> None:
    assert PhoneHealth(battery_percent=10, plugged=plugged,
                       battery_status=status).on_power is on_power


def test_status_shows_sim_states_without_a_name_and_no_data_network_as_nothing_wrong(
        smsgw: Smsgw, fake_termux: FakeTermux,
        make_webapp: Callable[..., ReferenceWebapp]) -> None:
    # deviceinfo describes the phone's default SIM; `network_type` is the data network's,
    # `unknown` with mobile data off while SMS work; SIM_STATE_NOT_READY prints as "6".
    fake_termux.set_mode(sim_state="6", mobile_data=0)
    line = status_health_line(smsgw, make_webapp(), "--sim-slot", "1")
    assert "; SIM not_ready (the default SIM; smsgw sends with slot 1); network Safaricom; " \
        in line, line
    assert "unknown" not in line
    fake_termux.set_mode(sim_state=None, mobile_data=None, network_type="hdspa",
                         clock_offset=3600)
    res = smsgw("run", "--once", env={"SMSGW_TEST_CLOCK_OFFSET": "3600"})
    assert res.returncode == 0, res.stderr
    _, data = smsgw.status_json()
    assert (data["phone_health"]["sim_state"], data["phone_health"]["network_type"],
            data["phone_health"]["sim_slot"]) == ("ready", "hsdpa", 1)


def test_deviceinfo_is_not_asked_again_after_a_permission_refusal(
        fake_termux: FakeTermux) -> None:
    # Without READ_PHONE_STATE the app opens its permission screen at every call: one
    # refusal, then no more deviceinfo calls (diagnose included) until smsgw restarts. The
    # battery needs no permission: it is still read.
    fake_termux.set_mode(permission_error="READ_PHONE_STATE")
    phone = TermuxPhone()
    first = phone.read_health()
    for _ in range(2):
        again = phone.read_health()
        assert again.problem == first.problem and again.battery_percent == 85
    assert phone.diagnose() is None
    assert fake_termux.call_count("termux-telephony-deviceinfo") == 1
    assert fake_termux.call_count("termux-battery-status") == 3
    assert len(fake_termux.provider.screens()) == 1
    assert TermuxPhone().read_health().problem == first.problem  # a restart asks again
    assert len(fake_termux.provider.screens()) == 2


def test_the_daemon_opens_the_permission_screen_once(
        smsgw: Smsgw, fake_termux: FakeTermux, make_webapp: Callable[..., ReferenceWebapp],
        tmp_path: Path) -> None:
    # Termux:API 0.50 sends without READ_PHONE_STATE; deviceinfo needs it, and each call
    # opens the permission screen on the phone. The daemon reads it for the health sample
    # and to diagnose failed sends: after the first refusal, never again.
    from runner import wait_for

    fake_termux.set_mode(app_version="0.50", permission_error="READ_PHONE_STATE", fail_next=2)
    webapp = make_webapp()
    for i in range(2):
        webapp.queue("+254700000001", f"hello {i}")
    assert smsgw("config", "--url", webapp.url).returncode == 0
    with smsgw.daemon("--interval", "1", out=tmp_path / "daemon.out"):
        wait_for(lambda: smsgw.log_file.read_text().count("failed (cause: ") == 2, 60,
                 "both sends failed")
    assert fake_termux.call_count("termux-telephony-deviceinfo") == 1
    assert len(fake_termux.provider.screens()) == 1
    _, data = smsgw.status_json()
    assert "not asked again until smsgw restarts" in data["phone_health"]["problem"]


# final review findings 1-3 --------------------------------------------------------------------
HANG = PhoneHealth(problem="termux-battery-status did not answer within 10 s", timed_out=True)


def test_one_health_read_that_hangs_is_a_blip_two_in_a_row_alert(
        make_rig: Callable[..., Rig]) -> None:
    # The default interval: a sample every 40 min, longer than --alert-after (30 min).
    rig = make_rig(interval=60)
    rig.phone.health = HANG
    rig.cycle(40)  # this sample hangs; the phone answers every other call
    assert rig.summary()["phone_health"]["timed_out"] is True
    rig.phone.health = PhoneHealth(battery_percent=80, plugged="UNPLUGGED")
    for _ in range(45):  # past --alert-after, and the next sample answers
        rig.cycle(1)
    assert rig.alerts_sent() == []
    assert rig.summary()["alerts"]["active"] == {}
    # Two samples in a row hang: the app does not answer; counted from the first.
    rig.phone.health = HANG
    rig.cycle(40)
    assert rig.alerts_sent() == []
    rig.cycle(40)
    assert rig.alerts_sent() == ["smsgw alert: phone not answering for 40 min: "
                                 "termux-battery-status did not answer within 10 s"]
    rig.cycle(10)  # between samples the episode lasts while the sample still hangs
    assert list(rig.summary()["alerts"]["active"]) == ["phone"]
    rig.phone.health = PhoneHealth(battery_percent=80, plugged="UNPLUGGED")
    rig.cycle(30)
    assert rig.alerts_sent()[1:] == ["smsgw ok: phone not answering recovered after 80 min"]


def test_a_health_read_cut_by_a_stop_is_not_saved(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    before = rig.summary()["phone_health"]

    def read() -> PhoneHealth:
        rig.gateway.stop_now()  # the second Ctrl-C arrives during the read
        return replace(HANG, problem="termux-battery-status: stopping now")

    rig.phone.read_health = read  # type: ignore[method-assign]
    rig.cycle(20)
    assert rig.summary()["phone_health"] == before
    assert rig.alerts_sent() == []


def test_a_failed_battery_read_is_no_recovery(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.phone.health = PhoneHealth(battery_percent=10, plugged="UNPLUGGED")
    rig.cycle(15)
    assert rig.alerts_sent() == ["smsgw alert: battery low: 10% and not plugged in"]
    rig.phone.health = PhoneHealth(problem="termux-battery-status: no answer")
    for _ in range(4):
        rig.cycle(15)
    assert rig.summary()["phone_health"]["battery_percent"] is None
    assert len(rig.alerts_sent()) == 1
    assert list(rig.summary()["alerts"]["active"]) == ["battery"]
    rig.phone.health = PhoneHealth(battery_percent=60, plugged="PLUGGED_AC")
    rig.cycle(15)
    assert rig.alerts_sent()[1:] == ["smsgw ok: battery low recovered after 75 min"]


def test_a_low_battery_lasts_between_samples_with_a_long_interval(
        make_rig: Callable[..., Rig]) -> None:
    # --interval 240: a sample every 160 min, longer than SAMPLE_STALE (2 h).
    rig = make_rig(interval=240)
    period = rig.gateway.health_period()
    assert period > alerts.SAMPLE_STALE
    rig.phone.health = PhoneHealth(battery_percent=10, plugged="UNPLUGGED")
    rig.cycle(period.total_seconds() / 60)
    assert rig.alerts_sent() == ["smsgw alert: battery low: 10% and not plugged in"]
    for _ in range(39):  # every 4 min until just before the next sample
        rig.cycle(4)
    assert len(rig.alerts_sent()) == 1
    assert list(rig.summary()["alerts"]["active"]) == ["battery"]


def test_a_backlog_paced_by_the_rate_limit_is_not_stuck_and_alerts_go_first(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(interval=60, max_parts_per_minute=10, confirm_timeout=300)
    for k in range(400):
        rig.webapp.queue("+254700000123", f"backlog {k}", id=f"b{k}")
    rig.cycle(1)
    rig.webapp.set_fault("status", count=10000, status=503)
    for _ in range(30):  # the first failure, then 29 min
        rig.cycle(1)
    assert rig.alerts_sent() == []
    sent = len(rig.phone.sends)
    rig.cycle(1)  # the webapp has failed for 30 min: the alert is queued
    assert rig.summary()["alerts"]["last_sent"]["condition"] == "webapp"
    for _ in range(2):  # the next send the rate budget allows is the alert
        rig.cycle(1)
    [alert] = rig.alerts_sent()
    assert alert.startswith("smsgw alert: webapp failing for 30 min"), alert
    assert rig.phone.sends[sent] == (ALERT_TO, alert)
    with rig.store.unit(rig.clock()) as u:
        assert len(u.due(rig.clock())) > 50  # a backlog was still waiting behind it
    for _ in range(10):
        rig.cycle(1)
    assert rig.alerts_sent() == [alert]  # never "sends stuck"


def test_a_queue_that_does_not_move_is_still_stuck(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(confirm_timeout=300)
    rig.gateway.send_due = lambda report: None  # type: ignore[method-assign]  # a send step that never runs
    for k in range(3):
        rig.webapp.queue("+254700000123", f"waits {k}", id=f"s{k}")
    for _ in range(4):
        rig.cycle(2)
    assert rig.summary()["alerts"]["last_sent"]["text"] == (
        "smsgw alert: sends stuck: 3 messages due but not sent for over 5 min")
