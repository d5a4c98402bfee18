"""Phone chaos: the gateway over TermuxPhone and the fake termux-* executables, with the phone
misbehaving part way through a run, then recovering.

Wired in this process: the reference webapp on 127.0.0.1, WebappClient, TermuxPhone with
small timeouts (1 s), a Store, a Gateway, and one virtual clock shared with the fake phone
(20 s a cycle). The misbehaviours: a termux command that hangs (fakes' `hang`), one that
answers `{"error": ...}` (`permission_error`, lost mid-run and given back), one that prints
garbage or exits non-zero or dies from a signal (tiny shims of our own placed first on
PATH, wrapping the fakes), an old Termux:API (`old_version`, from the start and as a
downgrade mid-run), and the Termux:API app missing (`app_missing`).

For each: every cycle returns within a bound (a hung command is killed with its process
group), `smsgw status` has something clear to show (the store summary's phone_error, the
message's reason), and once the phone is healthy again no incoming SMS is lost and no
message goes out twice: an SMS whose send may have reached the phone is never sent again
automatically (it is confirmed from the phone's rows, or ends FAILED "outcome unknown").

Every message goes to its own number, so the fakes' call log and SMS provider tell per
message how often termux-sms-send ran and how many SMS really went out.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock
from fakes import BIN_DIR, FakeTermux

from smsgw.config import Settings
from smsgw.gateway import UNKNOWN_OUTCOME, CycleReport, Gateway
from smsgw.phone.termux import TermuxPhone
from smsgw.store import Store
from smsgw.testserver import ReferenceWebapp
from smsgw.webapp import WebappClient

pytest_plugins = ["fakes.fixtures"]
pytestmark = [pytest.mark.usefixtures("no_proxies"), pytest.mark.timeout(300)]

STEP = 20  # virtual seconds per cycle
TIMEOUT = 1.0  # seconds for each termux-api call
CYCLE_BOUND = 30  # seconds: a cycle taking longer has hung (three calls time out at most)
CONFIRM_TIMEOUT = 120  # virtual seconds before a send without a phone record is given up


@dataclass
class PhoneRig:
    fake: FakeTermux
    webapp: ReferenceWebapp
    client: WebappClient
    phone: TermuxPhone
    store: Store
    gateway: Gateway
    clock: Clock
    shims: Path
    sms: list[str] = field(default_factory=list)  # texts received on the phone
    numbers: dict[str, str] = field(default_factory=dict)  # message id -> its number
    longest: float = 0.0  # seconds, the slowest cycle

    def cycle(self) -> CycleReport:
        """One cycle at the current time, bounded; then the clock (and the phone's) move on."""
        self.fake.set_clock(self.clock.now)
        started = time.monotonic()
        report = self.gateway.cycle()
        elapsed = time.monotonic() - started
        self.longest = max(self.longest, elapsed)
        assert elapsed < CYCLE_BOUND, f"a cycle took {elapsed:.1f} s: something hung"
        self.clock.advance(STEP)
        self.fake.set_clock(self.clock.now)
        self.assert_no_hung_calls()
        return report

    def receive(self, text: str) -> None:
        self.fake.receive(f"+2547110{len(self.sms):05d}", text)
        self.sms.append(text)

    def queue(self, content: str) -> str:
        number = f"+2547000{len(self.numbers):05d}"
        msg_id = self.webapp.queue(number, content)
        self.numbers[msg_id] = number
        return msg_id

    def summary(self) -> dict[str, Any]:
        return self.store.summary(self.clock())

    def reason(self, msg_id: str) -> str | None:
        with self.store.unit(self.clock()) as u:
            msg = u.get(msg_id)
            return None if msg is None else msg.reason

    def state(self, msg_id: str) -> str | None:
        with self.store.unit(self.clock()) as u:
            msg = u.get(msg_id)
            return None if msg is None else msg.state.value

    def send_calls(self, msg_id: str) -> int:
        number = self.numbers[msg_id]
        return sum(1 for c in self.fake.calls("termux-sms-send") if number in c["argv"])

    def sms_out(self, msg_id: str) -> int:
        """SMS the phone really sent (or tried to) for this message: its provider rows."""
        number = self.numbers[msg_id]
        return sum(1 for r in self.fake.rows() if r["address"] == number)

    def assert_no_hung_calls(self) -> None:
        """Every termux-api call has ended, with its whole process group."""
        pgids = {c["pid"] for c in self.fake.calls()}
        alive = [pid for pid in live_processes() if _pgid(pid) in pgids]
        assert not alive, f"termux-api calls still running: {alive}"

    def shim(self, name: str, body: str) -> Path:
        """Our own `name`, first on PATH, wrapping the fake (REAL is the fake's path)."""
        path = self.shims / name
        path.write_text(f'#!/bin/sh\nREAL="{BIN_DIR / name}"\n{body}\n', encoding="utf-8")
        path.chmod(0o755)
        return path

    def settle(self, limit: int = 30) -> int:
        """Cycle with a healthy phone until nothing waits anywhere; returns the cycles used."""
        for n in range(1, limit + 1):
            report = self.cycle()
            assert report.errors == [], report.errors
            s = self.summary()
            if not (s["incoming"]["WAITING"] or s["updates_queued"]
                    or any(s["outgoing"].values())):
                return n
        raise AssertionError(f"not settled after {limit} cycles: {self.summary()}")

    def assert_no_loss(self, outcomes: dict[str, str]) -> None:
        """Every SMS reached the webapp once; each message ended as `outcomes` says
        ("SENT", or "FAILED:<words of the reason>") with at most one SMS on the phone."""
        self.settle()
        assert self.summary()["phone_error"] is None  # the status is clean again
        received = Counter(m["content"] for m in self.webapp.received())
        assert sorted(received) == sorted(self.sms), (received, self.sms)
        assert all(c == 1 for c in received.values()), received
        for msg_id, outcome in outcomes.items():
            updates = [u for u in self.webapp.updates() if u["id"] == msg_id]
            last = updates[-1]
            want, _, words = outcome.partition(":")
            assert last["status"] == want, (msg_id, updates)
            assert words in (last["reason"] or ""), (msg_id, last)
            assert self.sms_out(msg_id) == (1 if want == "SENT" else self.sms_out(msg_id))
            assert self.sms_out(msg_id) <= 1, f"{msg_id} went out {self.sms_out(msg_id)} times"
        assert self.webapp.snapshot()["header_violations"] == []


def live_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2:].split()[0] != "Z":
                found.append(int(entry.name))
    return found


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.fixture
def make_rig(fake_termux: FakeTermux, clock: Clock, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Builds the rig, with fake-phone `modes` on from the start; one per test."""
    built: list[PhoneRig] = []

    def make(**modes: Any) -> PhoneRig:
        shims = tmp_path / "shims"
        shims.mkdir()
        monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
        fake_termux.set_mode(**modes)
        fake_termux.set_clock(clock.now)
        webapp = ReferenceWebapp()
        url = webapp.start()
        client = WebappClient(url, read_timeout=10)
        phone = TermuxPhone(send_timeout=TIMEOUT, list_timeout=TIMEOUT)
        store = Store(tmp_path / "state")
        settings = Settings(url=url, confirm_timeout=CONFIRM_TIMEOUT, send_timeout=TIMEOUT,
                            list_timeout=TIMEOUT)
        gateway = Gateway(store, client, phone, settings, clock)
        r = PhoneRig(fake_termux, webapp, client, phone, store, gateway, clock, shims)
        built.append(r)
        fake_termux.receive("+254799999999", "old SMS, before smsgw was installed",
                            at=clock.now - timedelta(hours=1))
        assert r.cycle().errors == []  # first start: the inbox position is set after it
        return r

    yield make
    for r in built:
        r.client.close()
        r.webapp.stop()
        print(f"\n  {request.node.name}: slowest cycle {r.longest:.1f} s, "
              f"termux-api calls {r.phone.calls}")


@pytest.fixture
def rig(make_rig: Any) -> PhoneRig:
    return make_rig()


def healthy_start(rig: PhoneRig) -> str:
    """Some normal traffic first, so the fault hits a gateway in the middle of its work."""
    msg_id = rig.queue("before the fault")
    rig.receive("SMS before the fault")
    rig.cycle()
    return msg_id


# --- a command that hangs, the Termux:API app missing ------------------------------------------

@pytest.mark.parametrize("modes, words", [
    ({"hang": 1}, "did not answer within 1 s"),
    ({"app_missing": 1}, "is the Termux:API app installed"),
])
def test_every_command_hangs(rig: PhoneRig, modes: dict[str, Any], words: str) -> None:
    """Termux:API frozen, or not installed: cycles end in bounded time, the send that timed out
    is never repeated, and it ends FAILED "outcome unknown" (it never reached Android)."""
    first = healthy_start(rig)
    rig.fake.set_mode(**modes)
    stuck = rig.queue("handed over while Termux:API hangs")
    rig.receive("SMS while Termux:API hangs")
    for _ in range(2):
        report = rig.cycle()
        assert any(e.startswith("read_inbox") for e in report.errors), report.errors
    error = rig.summary()["phone_error"]
    assert error is not None and words in error["text"], error
    assert rig.state(stuck) == "SENDING"  # the intent is recorded; the outcome is unknown
    assert rig.send_calls(stuck) == 1  # not tried again while unknown

    rig.fake.set_mode(hang=None, app_missing=None)
    after = rig.queue("queued once the phone is back")
    rig.assert_no_loss({first: "SENT", stuck: f"FAILED:{UNKNOWN_OUTCOME}", after: "SENT"})
    assert rig.send_calls(stuck) == 1
    assert rig.sms_out(stuck) == 0


def test_listing_hangs_but_sending_works(rig: PhoneRig) -> None:
    """Only termux-sms-list hangs: sends go out, and are confirmed SENT once it answers."""
    first = healthy_start(rig)
    rig.fake.set_mode(hang="termux-sms-list")
    during = rig.queue("sent while listing hangs")
    rig.receive("SMS while listing hangs")
    for _ in range(2):
        report = rig.cycle()
        assert {e.split(":")[0] for e in report.errors} == {"read_inbox", "reconcile"}, report
    assert "termux-sms-list did not answer" in rig.summary()["phone_error"]["text"]
    assert rig.state(during) == "PENDING"
    rig.fake.set_mode(hang=None)
    rig.assert_no_loss({first: "SENT", during: "SENT"})
    assert rig.send_calls(during) == 1


# --- {"error": ...}: a permission lost in the middle of a run -----------------------------------

def test_permission_lost_mid_run_and_given_back(rig: PhoneRig) -> None:
    first = healthy_start(rig)
    rig.fake.set_mode(permission_error=1)
    refused = rig.queue("refused by a missing SEND_SMS")
    rig.receive("SMS while READ_SMS is missing")
    report = rig.cycle()
    assert any(e.startswith("read_inbox") and "READ_SMS" in e for e in report.errors), report
    assert "Please grant the following permission" in rig.summary()["phone_error"]["text"]
    # The refusal is a failed try: retried later, never sent while refused.
    assert rig.state(refused) == "UNSENT"
    assert "SEND_SMS" in (rig.reason(refused) or "")
    for _ in range(5):
        rig.cycle()
    assert rig.sms_out(refused) == 0
    tries = rig.send_calls(refused)
    assert tries >= 2  # retried when due (after 1 min), refused again
    rig.fake.set_mode(permission_error=None)
    rig.assert_no_loss({first: "SENT", refused: "SENT"})
    assert rig.sms_out(refused) == 1


# --- garbage, non-zero exits, death by signal (our own shims) ---------------------------------

def test_send_prints_garbage_after_sending(rig: PhoneRig) -> None:
    """The SMS went out but the answer is garbage: unknown, so never sent again; the phone's
    row then confirms it."""
    first = healthy_start(rig)
    shim = rig.shim("termux-sms-send", '"$REAL" "$@"\nprintf \'\\377\\376 Killed\\n<html>\\n\'')
    garbled = rig.queue("answered with garbage")
    report = rig.cycle()
    assert report.errors == []  # a send problem is not a cycle error: it is in the status
    assert "not JSON" in rig.summary()["phone_error"]["text"]
    assert rig.state(garbled) == "SENDING"
    shim.unlink()
    rig.assert_no_loss({first: "SENT", garbled: "SENT"})
    assert rig.send_calls(garbled) == 1


def test_list_prints_garbage(rig: PhoneRig) -> None:
    first = healthy_start(rig)
    shim = rig.shim("termux-sms-list",
                    "printf '[{\"threadid\": 1, \"type\": \"inbox\", \"bo'\nexit 0")
    during = rig.queue("sent while listing prints garbage")
    rig.receive("SMS while listing prints garbage")
    for _ in range(2):
        report = rig.cycle()
        assert {e.split(":")[0] for e in report.errors} == {"read_inbox", "reconcile"}, report
    assert "not JSON" in rig.summary()["phone_error"]["text"]
    shim.unlink()
    rig.assert_no_loss({first: "SENT", during: "SENT"})
    assert rig.send_calls(during) == 1


def test_send_exits_non_zero(rig: PhoneRig) -> None:
    """A non-zero exit means the command refused before sending: a failed try, retried."""
    first = healthy_start(rig)
    shim = rig.shim("termux-sms-send",
                    "cat >/dev/null\necho 'termux-api: cannot connect to the app' >&2\nexit 1")
    refused = rig.queue("refused with exit status 1")
    rig.cycle()
    assert "exit status 1" in rig.summary()["phone_error"]["text"]
    assert "cannot connect to the app" in (rig.reason(refused) or "")
    assert rig.state(refused) == "UNSENT"
    shim.unlink()
    rig.assert_no_loss({first: "SENT", refused: "SENT"})
    assert rig.sms_out(refused) == 1


def test_send_killed_by_a_signal_after_sending(rig: PhoneRig) -> None:
    """Killed by a signal: the SMS may have gone out, so it is never sent again automatically."""
    first = healthy_start(rig)
    shim = rig.shim("termux-sms-send", '"$REAL" "$@"\nkill -9 $$')
    killed = rig.queue("the sender was killed")
    rig.cycle()
    assert "exit status -9" in rig.summary()["phone_error"]["text"]
    assert rig.state(killed) == "SENDING"
    shim.unlink()
    rig.assert_no_loss({first: "SENT", killed: "SENT"})
    assert rig.send_calls(killed) == 1


def test_list_exits_non_zero(rig: PhoneRig) -> None:
    first = healthy_start(rig)
    shim = rig.shim("termux-sms-list",
                    "echo 'java.lang.RuntimeException: provider busy' >&2\nexit 2")
    during = rig.queue("sent while listing fails")
    rig.receive("SMS while listing fails")
    for _ in range(2):
        report = rig.cycle()
        assert {e.split(":")[0] for e in report.errors} == {"read_inbox", "reconcile"}, report
    assert "provider busy" in rig.summary()["phone_error"]["text"]
    shim.unlink()
    rig.assert_no_loss({first: "SENT", during: "SENT"})


# --- an old Termux:API ----------------------------------------------------------------------------

def test_old_termux_api_from_the_start(make_rig: Any) -> None:
    rig = make_rig(old_version=1)
    assert rig.phone.supports_selection is False
    ids = [rig.queue(f"old app message {k}") for k in range(3)]
    for k in range(3):
        rig.receive(f"SMS {k} on an old app")
    rig.cycle()
    rig.receive("SMS 3 on an old app")
    rig.assert_no_loss({msg_id: "SENT" for msg_id in ids})


def test_termux_api_downgraded_mid_run(rig: PhoneRig) -> None:
    first = healthy_start(rig)
    assert rig.phone.supports_selection is True
    rig.fake.set_mode(old_version=1)
    after = rig.queue("after the downgrade")
    rig.receive("SMS after the downgrade")
    report = rig.cycle()
    assert report.errors == []
    assert rig.phone.supports_selection is False  # noticed, and read by date from then on
    rig.receive("another SMS after the downgrade")
    rig.assert_no_loss({first: "SENT", after: "SENT"})
