"""Heartbeat pings (`--ping-url`, `--ping-every`) and the health object (`--report-health`).

As a user runs them: `smsgw` in subprocesses, the reference webapp and a small recording
HTTP server (the monitoring service) on 127.0.0.1, the simulated phone or the fake
termux-* executables.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeTermux
from runner import REPO, SmsgwRunner, wait_for

from smsgw import __version__
from smsgw.gateway import CycleReport
from smsgw.heartbeat import Heartbeat
from smsgw.testserver import ReferenceWebapp
from smsgw.webapp import Pinger

pytest_plugins = ["fakes.fixtures"]

PASSWORD = "WebappPassw0rd"
QUERY_SECRET = "WebappQuery77"
TOKEN = "5f3c0b0e-token-9a1d-4c2e8f7d6b5a"  # healthchecks.io puts its token in the path
PING_QUERY = "PingQuery42"
SECRETS = (PASSWORD, QUERY_SECRET, TOKEN, PING_QUERY)
HEALTH_KEYS = {"version", "uptime_s", "queued", "oldest_queued_s", "last_sent", "failed_24h",
               "battery", "phone_error"}


class PingTarget:
    """A monitoring service: records every request's path and query; `hold()` makes it
    keep requests waiting (no answer) until `release()`."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.answered = 0
        self.status = 200
        self._go = threading.Event()
        self._go.set()
        self._lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with target._lock:
                    target.requests.append(self.path)
                target._go.wait(120)
                body = b"OK"
                self.send_response(target.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with target._lock:
                    target.answered += 1

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/ping/{TOKEN}?k={PING_QUERY}"

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.requests)

    def hold(self) -> None:
        self._go.clear()

    def release(self) -> None:
        self._go.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


HEALTHY = f"/ping/{TOKEN}?k={PING_QUERY}"
FAILING = f"/ping/{TOKEN}/fail?k={PING_QUERY}"  # /fail appended to the path, query kept


def posts(webapp: ReferenceWebapp) -> int:
    return int(webapp.snapshot()["counters"]["posts"])


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked in:\n{text}"


def status_saying(smsgw: SmsgwRunner, words: str) -> str:
    """`smsgw status` once it says `words` (the ping thread records its result)."""
    def says() -> str | None:
        out = smsgw("status").stdout
        return out if words in out else None

    return wait_for(says, 10, f"status saying {words!r}")


@pytest.fixture
def target() -> Iterator[PingTarget]:
    t = PingTarget()
    yield t
    t.close()


@pytest.fixture
def smsgw(tmp_path: Path) -> SmsgwRunner:
    return SmsgwRunner(tmp_path)


@pytest.fixture
def webapp(make_webapp: Callable[..., ReferenceWebapp]) -> ReferenceWebapp:
    return make_webapp(username="smsgw", password=PASSWORD)


@pytest.fixture
def url(webapp: ReferenceWebapp) -> str:
    return f"{webapp.url}?key={QUERY_SECRET}"


def configure(smsgw: SmsgwRunner, *args: str) -> subprocess.CompletedProcess[str]:
    proc = smsgw("config", "--no-check", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_secret(proc.stdout, proc.stderr)
    return proc


# settings ------------------------------------------------------------------------------------
def test_config_shows_the_ping_url_without_its_token_and_refuses_bad_ones(
        smsgw: SmsgwRunner, target: PingTarget) -> None:
    shown = configure(smsgw, "--ping-url", target.url, "--ping-every", "10m",
                      "--report-health")
    port = target.server.server_address[1]
    assert f"http://127.0.0.1:{port}/***" in shown.stdout
    saved = json.loads(smsgw.config_file.read_text(encoding="utf-8"))
    assert saved["ping_url"] == target.url
    assert saved["ping_every"] == 600
    assert saved["report_health"] is True

    for bad in ("ftp://example.org/x", "hc-ping.com/abc", f"https://ex ample.org/{TOKEN}"):
        proc = smsgw("config", "--ping-url", bad)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("smsgw: error: --ping-url"), proc.stderr
        assert TOKEN not in proc.stderr and "Traceback" not in proc.stderr
    assert smsgw("config", "--ping-every", "5").returncode != 0  # below 10 s

    # '-': the URL from standard input, out of ps and the shell history
    piped = subprocess.run([*smsgw.argv, "config", "--ping-url", "-"], input=f"{target.url}\n",
                           env=smsgw.environ(), cwd=REPO, capture_output=True, text=True,
                           timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert_no_secret(piped.stdout, piped.stderr)
    assert json.loads(smsgw.config_file.read_text(encoding="utf-8"))["ping_url"] == target.url

    off = configure(smsgw, "--ping-url", "none", "--no-report-health")
    assert json.loads(smsgw.config_file.read_text(encoding="utf-8"))["ping_url"] is None
    assert "/***" not in off.stdout


# the heartbeat -------------------------------------------------------------------------------
def test_healthy_pings_are_rate_limited(smsgw: SmsgwRunner, webapp: ReferenceWebapp, url: str,
                                        target: PingTarget, tmp_path: Path) -> None:
    configure(smsgw, "--url", url, "--ping-url", target.url, "--ping-every", "10s")
    with smsgw.daemon("--phone", "simulated", "--interval", "1", out=tmp_path / "d.out"):
        wait_for(lambda: target.seen(), 30, "the first ping")
        start = posts(webapp)
        wait_for(lambda: posts(webapp) >= start + 3, 30, "three more cycles")
        pings = target.seen()
        if len(pings) == 1:  # else 10 s passed meanwhile (a very slow machine)
            assert pings == [HEALTHY]
        wait_for(lambda: len(target.seen()) >= 2, 30, "the ping after --ping-every")
        assert set(target.seen()) == {HEALTHY}
        # several cycles for each ping, never one ping per cycle
        assert posts(webapp) > len(target.seen())
        status = status_saying(smsgw, ": delivered")
        assert "heartbeat:" in status and "healthy ping at" in status
        data = json.loads(smsgw("status", "--json").stdout)
        assert data["heartbeat"]["last"]["ok"] is True
        assert data["heartbeat"]["last"]["result"] == "HTTP 200"
        assert_no_secret(status, json.dumps(data))
    assert_no_secret(smsgw.log_file.read_text(encoding="utf-8"))


def test_unhealthy_cycles_ping_fail_then_recovery_pings_at_once(
        smsgw: SmsgwRunner, webapp: ReferenceWebapp, url: str, target: PingTarget,
        tmp_path: Path) -> None:
    webapp.set_fault("status", count=1000, status=503)
    configure(smsgw, "--url", url, "--ping-url", target.url)  # every 5 min while healthy
    with smsgw.daemon("--phone", "simulated", "--interval", "1", out=tmp_path / "d.out"):
        wait_for(lambda: target.seen(), 30, "the first ping")
        assert target.seen()[0] == FAILING
        status = status_saying(smsgw, "/fail ping")
        assert ": delivered" in status
        webapp.clear_faults()
        assert smsgw("hook").returncode == 0
        # The change back to healthy is signalled at once, not 5 minutes later.
        wait_for(lambda: HEALTHY in target.seen(), 30, "the healthy ping")
        pings = target.seen()
        assert pings[:pings.index(HEALTHY)] == [FAILING] * pings.index(HEALTHY)
    assert_no_secret(smsgw.log_file.read_text(encoding="utf-8"))


def test_a_phone_error_pings_fail_and_run_once_waits_for_its_ping(
        tmp_path: Path, fake_termux: FakeTermux, webapp: ReferenceWebapp, url: str,
        target: PingTarget) -> None:
    smsgw = SmsgwRunner(tmp_path, {k: v for k, v in fake_termux.env.items()
                                   if k in ("PATH", "FAKE_TERMUX_DIR")})
    configure(smsgw, "--url", url, "--ping-url", target.url)
    fake_termux.set_mode(permission_error=1)  # the inbox cannot be read
    proc = smsgw("run", "--once")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert posts(webapp) == 1  # the webapp was fine: the phone made the cycle unhealthy
    assert target.seen() == [FAILING]  # sent before the process ended
    fake_termux.set_mode(permission_error="")
    assert smsgw("run", "--once").returncode == 0
    assert target.seen() == [FAILING, HEALTHY]
    assert_no_secret(smsgw.log_file.read_text(encoding="utf-8"))


def test_a_hanging_ping_never_delays_the_cycles(smsgw: SmsgwRunner, webapp: ReferenceWebapp,
                                                url: str, target: PingTarget,
                                                tmp_path: Path) -> None:
    target.hold()
    configure(smsgw, "--url", url, "--ping-url", target.url)
    # --debug: the most talkative log must not leak the token either
    proc = smsgw.popen("--debug", "run", "--phone", "simulated", "--interval", "1",
                       out=tmp_path / "d.out")
    try:
        wait_for(lambda: target.seen(), 30, "the first ping")
        start = posts(webapp)
        wait_for(lambda: posts(webapp) >= start + 3, 30, "cycles while the ping hangs")
        assert target.answered == 0  # those POSTs happened while the ping was held
        assert len(target.seen()) == 1  # at most one ping in flight
        # The ping is cut at its timeout, and the failure logged once.
        def log_says() -> str | None:
            text = smsgw.log_file.read_text(encoding="utf-8")
            return text if "no answer within" in text else None

        log = wait_for(log_says, 60, "the ping's failure in the log")
        assert log.count("heartbeat: a healthy ping to") == 1
        assert "NOT DELIVERED (no answer within 10 s)" in status_saying(smsgw, "NOT DELIVERED")
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    assert_no_secret(smsgw.log_file.read_text(encoding="utf-8"),
                     (tmp_path / "d.out").read_text(encoding="utf-8"))


def test_ping_failures_are_logged_once_per_streak(target: PingTarget,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pinger = Pinger(target.url, timeout=10)
    beat = Heartbeat(target.url, 0, pinger.get)  # 0: a ping after every cycle

    def cycle(report: CycleReport) -> None:
        beat.after_cycle(report)
        beat.join()

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    try:
        target.status = 503
        for _ in range(3):
            cycle(CycleReport())
        cycle(CycleReport(errors=["exchange: webapp answered HTTP 502"]))
        assert len(warnings()) == 1
        assert "answered HTTP 503" in warnings()[0]
        target.status = 200
        cycle(CycleReport())
        assert any("pings reach" in r.getMessage() for r in caplog.records)
        target.status = 500
        cycle(CycleReport())
        assert len(warnings()) == 2  # a new streak
    finally:
        pinger.close()
    assert target.seen() == [HEALTHY] * 3 + [FAILING] + [HEALTHY] * 2
    assert_no_secret(*(r.getMessage() for r in caplog.records))


# the health object ---------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", ["reference", "cht", "php"])
def test_report_health_is_accepted_by_every_flavour(
        smsgw: SmsgwRunner, make_webapp: Callable[..., ReferenceWebapp], flavour: str) -> None:
    webapp = make_webapp(flavour=flavour, username="smsgw", password=PASSWORD)
    if flavour == "reference":
        assert webapp.strict_headers  # strict mode
    webapp.queue("+254700000001", "good one", id="good-1")
    webapp.queue("not a number", "cannot be sent", id="bad-1")
    configure(smsgw, "--url", webapp.url, "--report-health")
    proc = smsgw("run", "--phone", "simulated", "--once")
    assert proc.returncode == 0, proc.stderr
    snap = webapp.snapshot()
    raw = [e for e in snap["raw"]]
    assert len(raw) >= 2
    assert all(e["status"] == 200 for e in raw), raw
    assert [p for p in snap["problems"] if "smsgw" in p] == []
    assert webapp.status_of("bad-1") == "FAILED"  # the POST carrying it was used
    bodies = [e["body"] for e in raw]
    assert all(set(b) == {"messages", "updates", "smsgw"} for b in bodies), bodies
    first, second = bodies[0]["smsgw"], bodies[1]["smsgw"]
    assert set(first) == HEALTH_KEYS
    assert first["version"] == __version__
    assert isinstance(first["uptime_s"], int) and first["uptime_s"] >= 0
    assert (first["queued"], first["oldest_queued_s"], first["failed_24h"]) == (0, None, 0)
    assert first["battery"] is None and first["phone_error"] is None
    assert first["last_sent"] is None
    # after the first answer: good-1 waits to be sent, bad-1 FAILED
    assert second["queued"] == 1
    assert isinstance(second["oldest_queued_s"], int) and second["oldest_queued_s"] >= 0
    assert second["failed_24h"] == 1
    # The next run's POSTs carry the battery the phone reported (the simulated phone: 80 %,
    # on AC), sampled by the health step of the first run.
    webapp.queue("+254700000002", "after a health sample", id="good-2")
    proc = smsgw("run", "--phone", "simulated", "--once")
    assert proc.returncode == 0, proc.stderr
    later = [e["body"]["smsgw"] for e in webapp.snapshot()["raw"][len(raw):]]
    assert later and all(h["battery"] == {"percentage": 80, "plugged": "PLUGGED_AC"}
                         for h in later), later


def test_without_report_health_the_post_is_byte_for_byte_the_protocols(
        tmp_path: Path, fake_termux: FakeTermux,
        make_webapp: Callable[..., ReferenceWebapp]) -> None:
    smsgw = SmsgwRunner(tmp_path, {k: v for k, v in fake_termux.env.items()
                                   if k in ("PATH", "FAKE_TERMUX_DIR")})
    webapp = make_webapp(username="smsgw", password=PASSWORD)
    configure(smsgw, "--url", webapp.url)
    fake_termux.receive("+254700000009", "Habari 😀 é \"quoted\" \\ tab\tend")
    webapp.queue("not a number", "cannot be sent", id="bad-1")
    for _ in range(2):
        proc = smsgw("run", "--once")
        assert proc.returncode == 0, proc.stderr
    bodies = webapp.raw_bodies()
    assert len(bodies) >= 2
    carried = {"messages": 0, "updates": 0}
    for raw in bodies:
        parsed = json.loads(raw)
        assert list(parsed) == ["messages", "updates"]
        # what WebappClient.exchange built before --report-health existed, for this batch
        today = json.dumps({"messages": parsed["messages"], "updates": parsed["updates"]},
                           ensure_ascii=False).encode("utf-8")
        assert raw == today
        carried["messages"] += len(parsed["messages"])
        carried["updates"] += len(parsed["updates"])
    assert carried["messages"] >= 1 and carried["updates"] >= 1  # a real batch was compared
