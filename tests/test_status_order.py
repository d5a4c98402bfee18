"""The statuses a webapp receives for a message never go backwards (property test).

cht-core applies statuses in the order received and lets a message's state go backwards
(a PENDING posted after a SENT makes it "forwarded-by-gateway" again). So over random
interleavings of offers, re-offers, sends that fail, crashes of smsgw and POSTs that fail
(before or after the webapp recorded them), the sequence received for each id must be
non-decreasing in UNSENT < PENDING < SENT < FAILED, with one exception: `smsgw retry` of a
FAILED message starts a new attempt, from UNSENT.

The gateway runs in-process over a Store on disk, a SimulatedPhone and a webapp object that
behaves like cht-core's (re-offers every message until it has a status for it); a "crash"
drops every object and builds new ones over the same state folder.
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsgw.config import Settings
from smsgw.errors import WebappError
from smsgw.gateway import Gateway
from smsgw.models import Offered
from smsgw.phone.base import FAILED, SENT, java_trim, normalize_number
from smsgw.phone.simulated import SimulatedPhone
from smsgw.store import Store

RANK = {"UNSENT": 0, "PENDING": 1, "SENT": 2, "DELIVERED": 3, "FAILED": 4}
START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


class Crash(BaseException):
    """smsgw dies here (a BaseException: no `except Exception` in smsgw catches it)."""


class ChtLikeWebapp:
    """Offers each queued message on every POST until a status arrives; records statuses."""

    def __init__(self) -> None:
        self.queued: dict[str, tuple[str, str]] = {}
        self.awaiting: list[str] = []
        self.received: dict[str, list[str]] = {}
        self.fault: str | None = None  # "before" (not recorded), "after" (recorded, lost)

    def queue(self, msg_id: str) -> None:
        self.queued[msg_id] = ("+254700000001", f"text of {msg_id}")
        if msg_id not in self.awaiting:
            self.awaiting.append(msg_id)

    def exchange(self, messages: list[dict[str, Any]],
                 updates: list[dict[str, Any]]) -> list[Offered]:
        fault, self.fault = self.fault, None
        if fault == "before":
            raise WebappError("webapp answered HTTP 503", 503)
        for update in updates:
            self.received.setdefault(update["id"], []).append(update["status"])
            if update["id"] in self.awaiting:
                self.awaiting.remove(update["id"])
        if fault == "after":
            raise WebappError("the connection broke")
        return [Offered(i, *self.queued[i]) for i in self.awaiting[:25]]


class CrashingPhone(SimulatedPhone):
    """A simulated phone whose rows appear late, as Android's do (a row is written only
    when the last part has a result), and that can kill smsgw around a send."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.crash: str | None = None
        self.held: list[tuple[str, str, bool]] = []

    def send(self, number: str, text: str) -> None:
        crash, self.crash = self.crash, None
        if crash == "before":
            raise Crash
        number = normalize_number(number)
        with self._lock:
            self.sends.append((number, text))
            failing = self.radio_off or self._fail_next > 0
            self._fail_next = max(0, self._fail_next - 1)
            self.held.append((number, java_trim(text), failing))
        if crash == "after":
            raise Crash

    def settle(self) -> None:
        """The phone writes the rows of the sends it took: sent, or failed."""
        with self._lock:
            for number, body, failing in self.held:
                self._add(FAILED if failing else SENT, number, body)
            self.held.clear()


class World:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.now = START
        self.webapp = ChtLikeWebapp()
        self.phone = CrashingPhone(clock=lambda: self.now)
        self.settings = Settings(confirm_timeout=900)
        self.retried: dict[str, int] = {}
        self.next_id = 0
        self.restart()

    def restart(self) -> None:
        self.store = Store(self.folder)
        self.gateway = Gateway(self.store, self.webapp, self.phone, self.settings,
                               clock=lambda: self.now)

    def step(self, op: tuple[str, Any]) -> None:
        kind, arg = op
        if kind == "offer":
            self.webapp.queue(f"m{self.next_id}")
            self.next_id += 1
        elif kind == "reoffer" and self.webapp.queued:
            ids = sorted(self.webapp.queued)
            self.webapp.queue(ids[arg % len(ids)])
        elif kind == "fail_sends":
            self.phone.fail_next_sends(arg)
        elif kind == "post_fault":
            self.webapp.fault = arg
        elif kind == "phone_crash":
            self.phone.crash = arg
        elif kind == "settle":
            self.phone.settle()
        elif kind == "advance":
            self.now += timedelta(seconds=arg)
        elif kind == "retry":
            result = self.store.retry([], True, self.now)
            for msg_id in result.retried:
                self.retried[msg_id] = self.retried.get(msg_id, 0) + 1
        elif kind == "cycle":
            try:
                self.gateway.cycle()
            except Crash:
                self.restart()
            self.now += timedelta(seconds=10)

    def check(self) -> None:
        for msg_id, statuses in self.webapp.received.items():
            new_attempts = self.retried.get(msg_id, 0)
            for before, after in zip(statuses, statuses[1:]):  # noqa: B905
                if RANK[after] >= RANK[before]:
                    continue
                assert (before, after) == ("FAILED", "UNSENT") and new_attempts > 0, (
                    f"{msg_id} went back from {before} to {after}: {statuses}")
                new_attempts -= 1


OPS = st.one_of(
    st.tuples(st.just("offer"), st.none()),
    st.tuples(st.just("reoffer"), st.integers(0, 50)),
    st.tuples(st.just("fail_sends"), st.integers(1, 3)),
    st.tuples(st.just("post_fault"), st.sampled_from(["before", "after"])),
    st.tuples(st.just("phone_crash"), st.sampled_from(["before", "after"])),
    st.tuples(st.just("advance"), st.sampled_from([5, 60, 300, 1000, 3600])),
    st.tuples(st.just("retry"), st.none()),
    st.tuples(st.just("settle"), st.none()),
    st.tuples(st.just("cycle"), st.none()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, min_size=5, max_size=40))
def test_statuses_never_go_backwards(ops: list[tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        for op in ops + [("settle", None), ("advance", 10)] + [("cycle", None)] * 3:
            world.step(op)
        world.check()


def test_the_checker_sees_a_status_going_back() -> None:
    """The property is not vacuous: a PENDING after a SENT is caught."""
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        world.webapp.received["x"] = ["UNSENT", "SENT", "PENDING"]
        try:
            world.check()
        except AssertionError as exc:
            assert "went back from SENT to PENDING" in str(exc)
        else:
            raise AssertionError("a backwards status was not caught")


def test_a_failed_try_is_not_reported_as_unsent_after_pending() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        for op in [("offer", None), ("fail_sends", 1), ("cycle", None), ("cycle", None),
                   ("settle", None), ("cycle", None), ("advance", 120), ("cycle", None),
                   ("settle", None), ("cycle", None), ("cycle", None), ("cycle", None)]:
            world.step(op)
        assert world.webapp.received["m0"] == ["UNSENT", "PENDING", "SENT"]
        world.check()
