"""The daemon loop: guarded jobs, back-off after webapp errors, pacing, stop on signal."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import types

import schedule

from smsgw.config import Paths
from smsgw.daemon import MAX_BACKOFF, Daemon, daemon_running
from smsgw.gateway import CycleReport


class FlakyGateway:
    """Raises on the first cycles, then reports a failing exchange, then succeeds."""

    phone = None  # the daemon records the gateway's phone kind in its pid file

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.calls = 0

    def cycle(self) -> CycleReport:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if step == "raise":
            raise RuntimeError("boom")
        report = CycleReport()
        if step == "webapp-down":
            report.errors.append("exchange: webapp answered HTTP 502")
        return report


def make(tmp_path, gateway, interval=60, max_cycles=None) -> Daemon:
    paths = Paths(config_dir=tmp_path, data_dir=tmp_path)
    paths.ensure()
    return Daemon(gateway, paths, interval, max_cycles=max_cycles)  # type: ignore[arg-type]


def test_a_job_that_raises_is_logged_and_the_loop_goes_on(tmp_path, caplog):
    gateway = FlakyGateway(["raise", "raise", "ok"])
    daemon = make(tmp_path, gateway, interval=1, max_cycles=3)
    assert daemon.run() == 0
    assert gateway.calls == 3
    # A RuntimeError is a bug in smsgw: logged whole as an internal error, never fatal.
    bugs = [r for r in caplog.records if "internal error in cycle" in r.getMessage()
            and "RuntimeError: boom" in r.getMessage()]
    assert len(bugs) == 2 and all(r.exc_info for r in bugs)
    assert daemon_running(daemon.paths) is None  # the lock is released on exit


def test_polling_backs_off_after_webapp_errors_and_recovers(tmp_path):
    daemon = make(tmp_path, FlakyGateway(["ok"]), interval=60)
    down = CycleReport(errors=["exchange: webapp answered HTTP 502"])
    delays = [daemon._next_delay(down) for _ in range(6)]
    assert delays == [60, 120, 240, 480, MAX_BACKOFF, MAX_BACKOFF]
    assert daemon._next_delay(CycleReport()) == 60  # the first success: normal again
    assert daemon._next_delay(down) == 60


def test_work_left_cycles_at_once_and_awaiting_sends_recheck_soon(tmp_path):
    daemon = make(tmp_path, FlakyGateway(["ok"]), interval=60)
    assert daemon._next_delay(CycleReport(remaining=3)) == 0
    assert daemon._next_delay(CycleReport(awaiting=1)) == 15


def test_sigterm_finishes_the_cycle_and_exits_zero(tmp_path):
    gateway = FlakyGateway(["ok"])
    daemon = make(tmp_path, gateway, interval=3600)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert daemon.run() == 0
    finally:
        timer.cancel()
    assert gateway.calls == 1  # the first cycle ran; the hour-long wait was cut short
    assert not daemon.paths.pid_file.exists()


class SteppedBack(dt.datetime):
    """The wall clock as schedule and the daemon read it (naive datetime.now()), moved back
    by `back` (the one mock allowed: time)."""

    back = dt.timedelta(0)

    @classmethod
    def now(cls, tz=None):  # type: ignore[override]
        return dt.datetime.now(tz) - cls.back


def test_the_wall_clock_stepping_back_does_not_hold_the_next_cycle(tmp_path, monkeypatch):
    # A phone's clock set back an hour (by hand, the network, DST) while the daemon waits:
    # the next cycle still comes one interval after the last, not an hour later.
    monkeypatch.setattr(SteppedBack, "back", dt.timedelta(0))
    stepped = types.ModuleType("datetime")
    stepped.__dict__.update(vars(dt))
    stepped.datetime = SteppedBack  # type: ignore[attr-defined]
    monkeypatch.setattr(schedule, "datetime", stepped)
    monkeypatch.setattr("smsgw.daemon.datetime", SteppedBack)

    class StepsTheClock(FlakyGateway):
        def cycle(self) -> CycleReport:
            if self.calls == 0:  # while the daemon waits for the second cycle
                step = threading.Timer(0.5, setattr, (SteppedBack, "back",
                                                      dt.timedelta(hours=1)))
                step.daemon = True
                step.start()
            return super().cycle()

    gateway = StepsTheClock(["ok"])
    daemon = make(tmp_path, gateway, interval=3, max_cycles=2)
    checks: list[dt.timedelta] = []  # a watcher (every 1 s): checks after the step too
    daemon.add_watcher(1, lambda: checks.append(SteppedBack.back) and False)
    guard = threading.Timer(60, os.kill, (os.getpid(), signal.SIGTERM))  # a hang guard
    guard.start()
    try:
        assert daemon.run() == 0
    finally:
        guard.cancel()
    assert SteppedBack.back == dt.timedelta(hours=1)  # the clock did step back meanwhile
    assert gateway.calls == 2  # the second cycle ran, not cut short by the hang guard
    assert dt.timedelta(hours=1) in checks  # and the watcher ran after the step
