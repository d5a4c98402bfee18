"""smsgw against what real peers do: the reference webapp in cht-core and PHP-class flavours
over real HTTP, and the fake termux-api executables (see README.md, *Works with*,
and tests/fakes/README.md).

Each test here failed before the fix it names: a whole PHP-class answer refused for one raw
tab, a webapp id `local-1` taken for one of `smsgw send`'s, a text trimmed to nothing
handed to termux-sms-send, SMS received before the first inbox read dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock
from fakes import FakeTermux
from fakes.provider import ENV_DIR
from runner import SmsgwRunner

from smsgw.config import Settings
from smsgw.gateway import Gateway
from smsgw.phone.simulated import SimulatedPhone
from smsgw.phone.termux import TermuxPhone
from smsgw.store import Store
from smsgw.testserver import ReferenceWebapp
from smsgw.webapp import WebappClient

pytest_plugins = ["fakes.fixtures"]
pytestmark = pytest.mark.usefixtures("no_proxies")

NUMBER = "+254700000001"


class Rig:
    """A gateway over a reference webapp of some flavour, on a phone, with a virtual clock."""

    def __init__(self, webapp: ReferenceWebapp, phone: Any, folder: Path, clock: Clock,
                 settings: Settings | None = None) -> None:
        self.webapp = webapp
        self.phone = phone
        self.clock = clock
        self.client = WebappClient(webapp.url)
        self.store = Store(folder)
        self.gateway = Gateway(self.store, self.client, phone,
                               settings or Settings(url=webapp.url), clock)

    def cycle(self) -> Any:
        report = self.gateway.cycle()
        self.clock.advance(10)
        return report

    def run_until(self, done: Callable[[], bool], limit: int = 30) -> None:
        for _ in range(limit):
            report = self.cycle()
            assert report.errors == [], report.errors
            if done():
                return
        raise AssertionError(f"not done after {limit} cycles")


@pytest.fixture
def rig(tmp_path: Path, clock: Clock,
        make_webapp: Callable[..., ReferenceWebapp]) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(phone: Any = None, **server: Any) -> Rig:
        r = Rig(make_webapp(**server), phone or SimulatedPhone(clock),
                tmp_path / f"state{len(rigs)}", clock)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.client.close()


# --- the multiOTP PHP class -----------------------------------------------------------------

def test_php_class_answer_with_a_raw_tab_sends_all_three(rig: Callable[..., Rig]) -> None:
    r = rig(flavour="php")
    ids = [r.webapp.queue(NUMBER, text) for text in ("first", "col1\tcol2", "third")]
    r.run_until(lambda: all(r.webapp.status_of(i) == "SENT" for i in ids))
    assert sorted(text for _, text in r.phone.sends) == ["col1\tcol2", "first", "third"]
    raw_answers = [e for e in r.webapp.snapshot()["raw"] if e.get("offered")]
    assert raw_answers, "the PHP-class webapp offered nothing"


# --- one bad entry in an answer ---------------------------------------------------------------

@pytest.mark.parametrize("variant, bad_id, words", [
    ("to_list", True, "to is an array, not a string"),
    ("no_content", True, "missing content"),
    ("id_object", False, None),
    ("not_object", False, None),
])
def test_one_bad_entry_does_not_sink_the_answer(rig: Callable[..., Rig], variant: str,
                                                bad_id: bool, words: str | None) -> None:
    r = rig()
    good = [r.webapp.queue(NUMBER, f"good {n}") for n in range(2)]
    r.webapp.set_fault("bad_entry", variant=variant)
    r.run_until(lambda: all(r.webapp.status_of(i) == "SENT" for i in good))
    assert len(r.phone.sends) == 2
    failed = [u for u in r.webapp.updates() if u["status"] == "FAILED"]
    if bad_id:
        [update] = failed
        assert words in update["reason"]
    else:
        assert failed == []


# --- webapp ids are opaque --------------------------------------------------------------------

def test_a_webapp_id_local_1_is_the_webapps_and_smsgw_send_stays_private(
        rig: Callable[..., Rig]) -> None:
    r = rig()
    r.webapp.queue(NUMBER, "from the webapp", id="local-1")
    mine = r.store.add_local(NUMBER, "from smsgw send", r.clock())
    r.run_until(lambda: r.webapp.status_of("local-1") == "SENT")
    r.run_until(lambda: r.store.summary(r.clock())["outgoing"]["SENT"] == 0)
    assert sorted(text for _, text in r.phone.sends) == ["from smsgw send", "from the webapp"]
    assert r.webapp.statuses() == {"local-1": ["UNSENT", "PENDING", "SENT"]}
    assert mine.id not in json.dumps(r.webapp.snapshot()["raw"])
    assert r.webapp.snapshot()["queued"][0]["awaiting_status"] is False


def test_a_webapp_id_equal_to_a_local_id_is_still_sent(rig: Callable[..., Rig]) -> None:
    r = rig()
    mine = r.store.add_local(NUMBER, "mine", r.clock())
    r.webapp.queue(NUMBER, "theirs", id=mine.id)
    r.run_until(lambda: r.webapp.status_of(mine.id) == "SENT")
    assert sorted(text for _, text in r.phone.sends) == ["mine", "theirs"]


# --- text that Termux:API trims to nothing ------------------------------------------------------

@pytest.mark.parametrize("text", ["   ", "\t\n ", "\x00\x1f "])
def test_text_trimmed_to_nothing_fails_before_any_send(rig: Callable[..., Rig],
                                                       fake_termux: FakeTermux,
                                                       text: str) -> None:
    r = rig(phone=TermuxPhone(send_timeout=20, list_timeout=20))
    msg_id = r.webapp.queue(NUMBER, text)
    report = r.cycle()
    assert report.errors == []
    assert r.webapp.status_of(msg_id) == "FAILED"
    [update] = [u for u in r.webapp.updates() if u["status"] == "FAILED"]
    assert update["reason"] == "empty content"
    assert fake_termux.call_count("termux-sms-send") == 0


# --- SMS received between set-up and the first inbox read -------------------------------------

def _smsgw(tmp_path: Path, fake: FakeTermux) -> SmsgwRunner:
    return SmsgwRunner(tmp_path, extra_env={"PATH": fake.env["PATH"],
                                           ENV_DIR: fake.env[ENV_DIR]})


def test_sms_between_config_and_first_run_reach_the_webapp(
        tmp_path: Path, fake_termux: FakeTermux,
        make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp()
    smsgw = _smsgw(tmp_path, fake_termux)
    now = datetime.now(timezone.utc)
    fake_termux.receive("+254711111111", "old and private", at=now - timedelta(hours=2))
    res = smsgw("config", "--url", webapp.url)
    assert res.returncode == 0, res.stderr
    assert "from now on will be forwarded" in res.stdout
    fake_termux.set_clock(now + timedelta(minutes=5))
    fake_termux.receive("+254722222222", "after set-up")
    res = smsgw("run", "--once")
    assert res.returncode == 0, res.stderr
    assert [m["content"] for m in webapp.received()] == ["after set-up"]
    assert smsgw("run", "--once").returncode == 0
    assert [m["content"] for m in webapp.received()] == ["after set-up"]
    assert webapp.snapshot()["counters"]["duplicate_messages"] == 0


def test_forward_since_chooses_another_start(tmp_path: Path, fake_termux: FakeTermux,
                                             make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp()
    smsgw = _smsgw(tmp_path, fake_termux)
    now = datetime.now(timezone.utc)
    fake_termux.receive("+254711111111", "three days ago", at=now - timedelta(days=3))
    fake_termux.receive("+254711111112", "yesterday", at=now - timedelta(days=1))
    assert smsgw("config", "--url", webapp.url).returncode == 0
    assert smsgw("run", "--once").returncode == 0
    assert webapp.received() == []
    since = (now - timedelta(days=2)).astimezone().strftime("%Y-%m-%dT%H:%M")
    res = smsgw("config", "--forward-since", since)
    assert res.returncode == 0, res.stderr
    assert "forward_since" in res.stdout
    assert smsgw("run", "--once").returncode == 0
    assert [m["content"] for m in webapp.received()] == ["yesterday"]
    # Setting the same start again does not forward the same SMS twice.
    assert smsgw("config", "--forward-since", since).returncode == 0
    assert smsgw("run", "--once").returncode == 0
    assert [m["content"] for m in webapp.received()] == ["yesterday"]
    assert webapp.snapshot()["counters"]["duplicate_messages"] == 0


def test_forward_since_refuses_what_is_not_a_time(tmp_path: Path) -> None:
    res = SmsgwRunner(tmp_path)("config", "--forward-since", "last tuesday")
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        "smsgw: error: not a date and time: 'last tuesday' (use e.g. 2026-11-30T08:00, "
        "2026-11-30, or now)"]


# --- incoming SMS cht-core would drop ------------------------------------------------------------

def test_sms_without_sender_is_kept_not_forwarded_and_empty_sms_is_forwarded(
        rig: Callable[..., Rig]) -> None:
    r = rig(flavour="cht")
    r.cycle()
    r.phone.receive("", "who sent this?")
    r.phone.receive("+254733333333", "")
    r.phone.receive("+254733333334", "hello")
    r.run_until(lambda: len(r.webapp.snapshot()["raw"][-1]["body"]["messages"]) == 0
                and r.store.summary(r.clock())["incoming"]["WAITING"] == 0)
    posted = [m for e in r.webapp.snapshot()["raw"] if e["body"]
              for m in e["body"]["messages"]]
    assert sorted(m["content"] for m in posted) == ["", "hello"]
    assert all(m["from"] for m in posted)
    assert r.store.summary(r.clock())["incoming"]["SET_ASIDE"] == 1


# --- texts too long for a phone -------------------------------------------------------------------

def test_a_text_of_654_parts_is_refused_before_any_send(rig: Callable[..., Rig]) -> None:
    r = rig()
    msg_id = r.webapp.queue(NUMBER, "x" * 100_000)
    r.cycle()
    [update] = [u for u in r.webapp.updates() if u["id"] == msg_id]
    assert update == {"id": msg_id, "status": "FAILED", "reason": "too long: 654 parts (max 10)"}
    assert r.phone.sends == []


def test_cdma_parts_of_one_message_are_paced_within_the_budget(
        tmp_path: Path, clock: Clock, make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp()
    settings = Settings(url=webapp.url, cdma_mode=True, max_parts=60, max_parts_per_minute=30)
    r = Rig(webapp, SimulatedPhone(clock), tmp_path / "state", clock, settings)
    text = " ".join(f"word{n:04d}" for n in range(620))  # ~40 CDMA parts
    msg_id = webapp.queue(NUMBER, text)
    r.cycle()
    first = len(r.phone.sends)
    assert first == 30
    r.run_until(lambda: webapp.status_of(msg_id) == "SENT", limit=40)
    assert 35 <= len(r.phone.sends) <= 45
    assert webapp.statuses()[msg_id] == ["UNSENT", "PENDING", "SENT"]
    dates = sorted(row.date for row in r.phone.read_outgoing(clock() - timedelta(days=1)))
    assert len(dates) == len(r.phone.sends)
    assert max(sum(1 for d in dates if start <= d < start + timedelta(seconds=60))
               for start in dates) <= 30  # no minute held more than the budget
    r.client.close()


def test_an_sms_with_half_a_character_is_set_aside_and_the_others_flow(
        rig: Callable[..., Rig]) -> None:
    r = rig(flavour="php")  # PHP's json_decode refuses a lone surrogate: all would be lost
    r.cycle()
    for n in range(5):
        r.phone.receive("+254733333330", f"good {n}")
    r.phone.receive("+254733333339", "half an emoji \ud83d")
    r.run_until(lambda: r.store.summary(r.clock())["incoming"]["WAITING"] == 0)
    r.cycle()
    assert r.store.summary(r.clock())["incoming"]["SET_ASIDE"] == 1
    listed = r.store.messages(r.clock(), 50).incoming
    [aside] = [m for m in listed if m.state.value == "SET_ASIDE"]
    assert aside.reason == "the text holds half a character"
    assert aside.content == "half an emoji \\ud83d"
    assert sorted(m["content"] for m in r.webapp.received()) == [f"good {n}" for n in range(5)]


@pytest.mark.parametrize("app", ["0.53", "0.49"])  # by _id with a selection, and by date
def test_a_surrogate_body_and_a_dateless_row_among_ten_good_ones(
        rig: Callable[..., Rig], fake_termux: FakeTermux, app: str) -> None:
    fake_termux.set_mode(app_version=app)
    if app == "0.49":
        fake_termux.add_row("sent", "+254799999999", "setup", at=datetime.now(timezone.utc)
                            - timedelta(days=1))
    r = rig(phone=TermuxPhone(send_timeout=20, list_timeout=20), flavour="cht")
    r.cycle()
    for n in range(5):
        fake_termux.receive("+254744444440", f"good {n}")
    fake_termux.add_raw_row("+254744444441", "placeholder", fields={"body": "half \ud83d"})
    fake_termux.add_raw_row("+254744444442", "no date here", drop=("received",))
    for n in range(5, 10):
        fake_termux.receive("+254744444440", f"good {n}")
    for _ in range(3):
        assert r.cycle().errors == []
    assert sorted(m["content"] for m in r.webapp.received()) == sorted(
        f"good {n}" for n in range(10))
    summary = r.store.summary(r.clock())
    assert summary["incoming"]["SET_ASIDE"] == 2
    reasons = sorted(m.reason for m in r.store.messages(r.clock(), 50).incoming
                     if m.state.value == "SET_ASIDE")
    assert reasons[0] == "the text holds half a character"
    assert reasons[1].startswith("unreadable row: ")
    for _ in range(2):
        r.cycle()
    assert r.store.summary(r.clock())["incoming"]["SET_ASIDE"] == 2  # each once
