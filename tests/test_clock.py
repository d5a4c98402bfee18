"""Wrong clocks: a jump ahead or back never sends a message twice nor blocks sending."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Clock

from smsgw.config import Settings
from smsgw.gateway import Gateway
from smsgw.phone.simulated import SimulatedPhone
from smsgw.store import Store
from smsgw.testserver import ReferenceWebapp
from smsgw.webapp import WebappClient

pytest_plugins = ["fakes.fixtures"]
pytestmark = pytest.mark.usefixtures("no_proxies")

NUMBER = "+254700000001"


class Mono:
    """A monotonic clock that moves with the tests' steps, whatever the wall clock does."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def rig(tmp_path: Path, clock: Clock, make_webapp: Callable[..., ReferenceWebapp]):
    webapp = make_webapp()
    client = WebappClient(webapp.url)
    mono = Mono()
    phone = SimulatedPhone(clock)
    store = Store(tmp_path / "state")
    gateway = Gateway(store, client, phone, Settings(url=webapp.url), clock, monotonic=mono)

    def cycle(step: float = 10) -> None:
        assert gateway.cycle().errors == []
        clock.advance(step)
        mono.t += step

    yield webapp, phone, store, gateway, clock, mono, cycle
    client.close()


def test_a_clock_60_days_ahead_for_a_cycle_then_a_reoffer_is_not_sent_again(rig, caplog):
    webapp, phone, store, _, clock, mono, cycle = rig
    ids = [webapp.queue(NUMBER, f"text {n}") for n in range(3)]
    for _ in range(5):
        cycle()
    assert all(webapp.status_of(i) == "SENT" for i in ids)
    sends = len(phone.sends)
    clock.advance(60 * 86400)  # the phone's clock jumps ahead for one cycle
    cycle()
    assert "the clock jumped ahead by 60 days" in caplog.text
    assert store.summary(clock())["clock_jump"]["seconds"] == 60 * 86400
    clock.advance(-60 * 86400)  # corrected
    for msg_id in ids:
        webapp.offer_again(msg_id)
    for _ in range(3):
        cycle()
    assert len(phone.sends) == sends
    assert all(webapp.status_of(i) == "SENT" for i in ids)


def test_sends_made_while_the_clock_was_far_behind_are_not_sent_again(rig):
    webapp, phone, _, _, clock, mono, cycle = rig
    clock.advance(-400 * 86400)  # a phone that booted a year in the past
    ids = [webapp.queue(NUMBER, f"text {n}") for n in range(3)]
    for _ in range(5):
        cycle()
    assert all(webapp.status_of(i) == "SENT" for i in ids)
    sends = len(phone.sends)
    clock.advance(400 * 86400)  # the network corrects it
    for _ in range(2):
        cycle()
    clock.advance(86400)
    cycle()
    for msg_id in ids:
        webapp.offer_again(msg_id)
    for _ in range(3):
        cycle()
    assert len(phone.sends) == sends


def test_after_a_one_day_backward_jump_sending_resumes_within_a_minute(rig):
    webapp, phone, _, _, clock, mono, cycle = rig
    for n in range(30):  # the default budget: 30 parts a minute
        webapp.queue(NUMBER, f"burst {n}")
    cycle()
    assert len(phone.sends) == 30
    clock.advance(-86400)  # the rate log now holds entries dated a day in the future
    webapp.queue(NUMBER, "after the jump")
    waited = 0
    while not any(text == "after the jump" for _, text in phone.sends) and waited < 600:
        cycle(5)
        waited += 5
    assert waited <= 70  # within the 62 s rate window of the monotonic clock


def test_a_clock_jumping_ahead_does_not_empty_the_rate_window(rig):
    webapp, phone, _, _, clock, mono, cycle = rig
    for n in range(31):
        webapp.queue(NUMBER, f"burst {n}")
    cycle(0)
    assert len(phone.sends) == 30
    clock.advance(3600)  # the wall clock says an hour passed; no time did
    cycle(0)
    assert len(phone.sends) == 30


def test_a_whole_process_with_its_clock_60_days_ahead_sends_nothing_twice(
        tmp_path: Path, make_webapp: Callable[..., ReferenceWebapp], fake_termux) -> None:
    from fakes.provider import ENV_DIR
    from runner import SmsgwRunner

    webapp = make_webapp()
    smsgw = SmsgwRunner(tmp_path, extra_env={"PATH": fake_termux.env["PATH"],
                                            ENV_DIR: fake_termux.env[ENV_DIR]})
    assert smsgw("config", "--url", webapp.url, "--no-check").returncode == 0
    ids = [webapp.queue(NUMBER, f"text {n}") for n in range(3)]
    res = smsgw("run", "--interval", "1", "--max-cycles", "12")
    assert res.returncode == 0, res.stderr
    assert all(webapp.status_of(i) == "SENT" for i in ids), webapp.statuses()
    sends = fake_termux.call_count("termux-sms-send")
    ahead = smsgw("run", "--once", env={"SMSGW_TEST_CLOCK_OFFSET": str(60 * 86400)})
    assert ahead.returncode == 0, ahead.stderr
    for msg_id in ids:
        webapp.offer_again(msg_id)
    assert smsgw("run", "--once").returncode == 0
    assert fake_termux.call_count("termux-sms-send") == sends
    assert all(webapp.status_of(i) == "SENT" for i in ids)
