"""One message, one record: what `smsgw retry`, `messages` and `status` show and change.

The state is built in-process (a gateway on a simulated phone against the reference
webapp), then the commands run as a user runs them, in a subprocess on the same folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import Clock
from runner import SmsgwRunner

from smsgw.config import Settings
from smsgw.gateway import Gateway
from smsgw.phone.simulated import SimulatedPhone
from smsgw.store import Store
from smsgw.testserver import ReferenceWebapp
from smsgw.webapp import WebappClient

pytestmark = pytest.mark.usefixtures("no_proxies")

NUMBER = "+254700000001"


class World:
    def __init__(self, tmp_path: Path, webapp: ReferenceWebapp, clock: Clock) -> None:
        self.smsgw = SmsgwRunner(tmp_path)
        self.webapp = webapp
        self.clock = clock
        self.phone = SimulatedPhone(clock)
        self.client = WebappClient(webapp.url)
        self.store = Store(self.smsgw.home / "state")
        self.gateway = Gateway(self.store, self.client, self.phone, Settings(url=webapp.url),
                               clock)

    def cycles(self, n: int) -> None:
        for _ in range(n):
            assert self.gateway.cycle().errors == []
            self.clock.advance(10)

    def snapshot(self) -> dict[str, bytes]:
        folder = self.smsgw.home / "state"
        return {str(p.relative_to(folder)): p.read_bytes()
                for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def world(tmp_path: Path, make_webapp: Callable[..., ReferenceWebapp]) -> World:
    # The real time: the commands in subprocesses use the real clock.
    w = World(tmp_path, make_webapp(), Clock(datetime.now(timezone.utc) - timedelta(days=2)))
    yield w
    w.client.close()


def test_retry_of_a_sent_message_changes_nothing_on_disk(world: World) -> None:
    msg_id = world.webapp.queue(NUMBER, "hello")
    world.cycles(4)
    assert world.webapp.status_of(msg_id) == "SENT"
    before = world.snapshot()
    assert any(name.startswith("archive/") for name in before)
    res = world.smsgw("retry", msg_id)
    assert res.returncode == 6, res.stderr
    assert f"{msg_id}: is SENT, not FAILED; nothing to retry" in res.stderr
    assert world.snapshot() == before
    summary = json.loads(world.smsgw("status", "--json").stdout)
    assert summary["queues"]["outgoing"]["SENT"] == 0
    listed = world.smsgw.messages()["from_webapp"]
    assert [m["id"] for m in listed] == [msg_id]


def test_failed_then_retried_then_sent_is_listed_once(world: World) -> None:
    world.phone.radio_off = True
    msg_id = world.webapp.queue(NUMBER, "hello")
    world.webapp.queue("12", "x", id="bad-number")  # another failure, left as it is
    for _ in range(200):
        world.cycles(1)
        world.clock.advance(600)
        if world.webapp.status_of(msg_id) == "FAILED":
            break
    assert world.webapp.status_of(msg_id) == "FAILED"
    world.clock.now = datetime.now(timezone.utc)
    world.cycles(1)  # archived
    status = json.loads(world.smsgw("status", "--json").stdout)
    assert msg_id in [f["id"] for f in status["last_failures"]]
    world.phone.radio_off = False
    res = world.smsgw("retry", msg_id)
    assert res.returncode == 0, res.stderr
    world.cycles(4)
    assert world.webapp.status_of(msg_id) == "SENT"
    listed = world.smsgw.messages()["from_webapp"]
    assert [(m["id"], m["state"]) for m in listed if m["id"] == msg_id] == [(msg_id, "SENT")]
    status = json.loads(world.smsgw("status", "--json").stdout)
    assert msg_id not in [f["id"] for f in status["last_failures"]]
    failed = world.smsgw("messages", "--state", "FAILED", "--json")
    assert msg_id not in failed.stdout


def test_state_filter_applies_before_the_limit(world: World) -> None:
    ids = [world.webapp.queue(NUMBER if n % 6 else "12", f"text {n}") for n in range(25)]
    world.cycles(5)
    failed = [i for n, i in enumerate(ids) if n % 6 == 0]
    assert len(failed) == 5
    res = world.smsgw("messages", "--state", "FAILED", "--limit", "20", "--json")
    assert res.returncode == 0, res.stderr
    assert sorted(m["id"] for m in json.loads(res.stdout)["from_webapp"]) == sorted(failed)
    res = world.smsgw("messages", "--state", "FAILED", "--limit", "3")
    assert "From webapp (3):" in res.stdout
    assert "... and 2 more (--limit)" in res.stdout
    res = world.smsgw("messages", "--limit", "20")
    assert "... and 5 more (--limit)" in res.stdout


@pytest.mark.parametrize("state", ['{"outgoing": 5}', '{"meta": {"1": {"version": "x"}}}',
                                   '{"outgoing": {"1": {"id": 7}}}',
                                   '{"incoming": {"1": {"id": "a", "state": "LOST"}}}'])
@pytest.mark.parametrize("command", [("status",), ("run", "--once", "--phone", "simulated"),
                                     ("messages",), ("retry", "--failed")])
def test_a_state_file_of_the_wrong_shape_is_refused_and_kept(
        tmp_path: Path, state: str, command: tuple[str, ...]) -> None:
    smsgw = SmsgwRunner(tmp_path)
    smsgw.state_file.parent.mkdir(parents=True)
    smsgw.state_file.write_text(state, encoding="utf-8")
    res = smsgw(*command, env={"SMSGW_URL": "http://127.0.0.1:9/"})
    assert res.returncode != 0
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f"smsgw: error: the state file {smsgw.state_file} is damaged: ")
    assert "Traceback" not in res.stderr + res.stdout
    assert smsgw.state_file.read_text(encoding="utf-8") == state
