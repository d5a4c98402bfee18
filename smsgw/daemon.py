"""The loop behind `smsgw run`: a schedule.Scheduler, signals, wake-ups, one daemon per folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Paths, atomic_write_text
from .errors import Error, ExitCode, StateError, UserError
from .models import to_iso, utcnow

if TYPE_CHECKING:  # only a running daemon needs these, not `smsgw status` or `smsgw hook`
    import schedule

    from .gateway import CycleReport, Gateway

logger = logging.getLogger(__name__)

MAX_BACKOFF = 600  # seconds between polls after repeated webapp errors
CONFIRM_RECHECK = 15  # seconds between checks while sends await the phone's record
MAX_IMMEDIATE = 20  # back-to-back cycles while work remains, before pausing for the interval
# A wake-up (Tasker's "Received Text") may come before the SMS app has written the message:
# one more cycle this many seconds after the woken one.
WAKE_FOLLOW_UP = 5


class AlreadyRunning(UserError):
    exit_code = ExitCode.ALREADY_RUNNING


class DaemonLock:
    """An exclusive lock on daemon.lock held for the daemon's life, plus the pid file."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._fd: int | None = None
        self._pid_file = False

    def acquire(self, info: dict[str, Any] | None) -> None:
        """Take the lock, or raise AlreadyRunning; write `info` as the pid file. With None,
        no pid file: a short command (`smsgw restore`) only keeps daemons out meanwhile."""
        try:
            fd = os.open(self.paths.daemon_lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StateError(f"cannot write in {self.paths.data_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = (read_pid_info(self.paths) or {}).get("pid", "?")
            raise AlreadyRunning(
                f"smsgw is already running for {self.paths.data_dir} (pid {pid}); "
                "stop it first, or use another SMSGW_HOME"
            ) from None
        self._fd = fd
        if info is None:
            return
        self._pid_file = True
        try:
            atomic_write_text(self.paths.pid_file, json.dumps(info) + "\n")
        except OSError as exc:
            self.release()
            raise StateError(f"cannot write {self.paths.pid_file}: {exc.strerror}") from None

    def release(self) -> None:
        if self._fd is not None:
            if self._pid_file:
                with contextlib.suppress(FileNotFoundError):
                    self.paths.pid_file.unlink()
                self._pid_file = False
            os.close(self._fd)
            self._fd = None


def read_pid_info(paths: Paths) -> dict[str, Any] | None:
    """The pid file's content, or None."""
    try:
        data = json.loads(paths.pid_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def daemon_running(paths: Paths) -> dict[str, Any] | None:
    """The pid info of the running daemon, judged by its lock (not by a stale pid file)."""
    if not paths.daemon_lock.exists():
        return None
    fd = os.open(paths.daemon_lock, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid_info(paths) or {"pid": None}
    finally:
        os.close(fd)
    return None


STOP_MARKER = "stopped"  # in the data folder: `smsgw stop` was on purpose (the watchdog reads it)


def stop_marker(paths: Paths) -> Path:
    """The file `smsgw stop` leaves so the watchdog keeps smsgw down; `smsgw run` removes it."""
    return paths.data_dir / STOP_MARKER


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()  # the name may hold spaces and ")"


def parent_name(pid: int) -> str | None:
    """The command name of `pid`'s parent (e.g. `runsv` under runit), or None."""
    try:
        ppid = int((_proc_stat(pid) or [])[1])
        return Path(f"/proc/{ppid}/comm").read_text(encoding="utf-8",
                                                     errors="replace").strip()
    except (OSError, ValueError, IndexError):
        return None


def _exited(pid: int) -> bool:
    """Whether process `pid` is gone (a zombie, awaiting its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except OSError:  # gone, or not ours: the released lock has to do
        return True
    fields = _proc_stat(pid)
    return fields is None or fields[:1] == ["Z"]  # no /proc: the released lock has to do


def wake(paths: Paths) -> int | None:
    """Ask a running daemon for an immediate cycle. Returns its pid, or None if none runs."""
    info = daemon_running(paths)
    if not info or not info.get("pid"):
        return None
    try:
        os.kill(int(info["pid"]), signal.SIGUSR1)
    except ProcessLookupError:
        return None
    return int(info["pid"])


def _mark_stopped(paths: Paths) -> None:
    try:
        atomic_write_text(stop_marker(paths), f"{to_iso(utcnow())}\n")
    except OSError as exc:
        raise UserError(f"cannot write {stop_marker(paths)}: {exc.strerror}") from None


def stop_daemon(paths: Paths, timeout: float) -> int | None:
    """Stop smsgw on purpose (`smsgw stop`): leave the stop marker (the watchdog then
    keeps it down until the next `smsgw run`), SIGTERM the daemon and wait up to
    `timeout` s for it to exit. Returns its pid, or None when none runs (the marker is
    left all the same). Under runit, refuse: runsv would start it again."""
    info = daemon_running(paths)
    pid = info.get("pid") if info else None
    if pid and parent_name(int(pid)) == "runsv":
        raise UserError(f"smsgw (pid {pid}) runs under runit, which would start it again: "
                        "stop it with `sv down smsgw` (and `sv up smsgw` to start it)")
    _mark_stopped(paths)
    if info is None:
        logger.info("smsgw stop: smsgw is not running; it stays down until `smsgw run`")
        return None
    if not pid:
        raise UserError(f"smsgw runs for {paths.data_dir} but its pid file is unreadable: "
                        "stop it with `kill PID` (find it with `ps -ef | grep smsgw`)")
    pid = int(pid)
    logger.info("smsgw stop: stopping smsgw (pid %d); it stays down until `smsgw run`", pid)
    with contextlib.suppress(ProcessLookupError):  # it just exited: the lock says so below
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while daemon_running(paths) is not None or not _exited(pid):
        if time.monotonic() > deadline:
            raise UserError(f"smsgw (pid {pid}) did not stop within {timeout:g} s (it "
                            f"finishes a send before it stops): run `smsgw stop` again, or "
                            f"`kill -9 {pid}` to cut it short")
        time.sleep(0.1)
    _mark_stopped(paths)  # again: a daemon that was just starting may have removed it
    return pid


class Daemon:
    """Runs gateway cycles on a schedule until told to stop."""

    def __init__(self, gateway: Gateway, paths: Paths, interval: int,
                 clock: Callable[[], datetime] = utcnow, max_cycles: int | None = None) -> None:
        self.gateway = gateway
        self.paths = paths
        self.interval = max(1, int(interval))
        self.clock = clock
        self.max_cycles = max_cycles
        self.cycles = 0
        import schedule

        self.scheduler = schedule.Scheduler()
        self._job: schedule.Job | None = None
        self._due: float | None = None  # when the cycle job is due, on the monotonic clock
        self._stop_signal: int | None = None
        self._stops = 0  # stop signals received
        self._woken = False
        self._pipe: tuple[int, int] | None = None
        self._failures = 0
        self._immediate = 0
        # After a wake-up, one cycle at this time (monotonic) or later, whatever comes between.
        self._follow_up_at: float | None = None
        self.last_report: CycleReport | None = None
        self.heartbeat: Callable[[CycleReport | None], None] | None = None  # after each cycle

    # signals ----------------------------------------------------------------
    # Handlers only set plain flags and write a byte to a pipe: no locks, no logging,
    # so a signal arriving anywhere (even inside another handler) cannot deadlock.
    def _poke(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._pipe[1], b"x")

    def _on_stop(self, signum: int, _frame: Any) -> None:
        self._stops += 1
        self._stop_signal = signum
        # An exchange is safe to cut (what it carried stays queued); a send is not, until
        # its intent is recorded: the first signal stops at the next safe point, between
        # steps or messages; the second also ends the phone call in progress (its send is
        # then recorded as awaiting the phone's record, like any unknown outcome).
        name = "stop" if self._stops == 1 else "stop_now"
        stop = getattr(self.gateway, name, None)
        if stop is not None:
            stop()
        # os.write is safe in a signal handler; logging is not
        with contextlib.suppress(OSError):
            if self._stops == 1:
                os.write(2, b"smsgw: stopping after the current step (Ctrl-C again to "
                            b"stop now)\n")
            elif self._stops == 2:
                os.write(2, b"smsgw: stopping now: a phone call in progress is ended; a send "
                            b"it carried is checked on the phone by the next run\n")
        self._poke()

    def _on_wake(self, _signum: int, _frame: Any) -> None:
        self._woken = True
        self._poke()

    def request_wake(self) -> None:
        """Wake the loop for an immediate cycle (used by watchers and hooks)."""
        self._woken = True

    def _wait(self, seconds: float) -> None:
        """Sleep until the timeout, a wake-up or a stop signal."""
        if self._woken or self._stop_signal is not None or self._pipe is None:
            return
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self._pipe[0]], [], [], seconds)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._pipe[0], 512):
                        pass

    def add_watcher(self, every: float, check: Callable[[], bool]) -> None:
        """Run `check` every `every` seconds; when it returns True, cycle at once."""
        def job() -> None:
            if self._guard(check):
                self.request_wake()
        self.scheduler.every(every).seconds.do(job)

    # loop -------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT or max_cycles. Returns the exit code."""
        lock = DaemonLock(self.paths)
        # The shell hook may signal as soon as the pid file names us: SIGUSR1's default
        # action would end the daemon, so catch it before the pid file is written.
        early_wake = signal.signal(signal.SIGUSR1, self._on_wake)
        try:
            lock.acquire({"pid": os.getpid(), "started": to_iso(self.clock()),
                          "interval": self.interval,
                          "phone": getattr(self.gateway.phone, "name", None)})
        except BaseException:
            signal.signal(signal.SIGUSR1, early_wake)
            raise
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        self._pipe = (rfd, wfd)
        previous = {s: signal.signal(s, self._on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGUSR1] = early_wake
        logger.info("smsgw started (pid %d, every %ds)", os.getpid(), self.interval)
        with contextlib.suppress(FileNotFoundError):  # started again: no longer stopped
            stop_marker(self.paths).unlink()
        try:
            self._plan(0)
            while self._stop_signal is None:
                self._catch_up()
                self.scheduler.run_pending()
                if self._stop_signal is not None or self._done():
                    break
                self._wait(self._idle())
                if self._woken and self._stop_signal is None:
                    self._woken = False
                    logger.info("woken for an immediate cycle")
                    self._follow_up_at = time.monotonic() + WAKE_FOLLOW_UP
                    self._plan(0)
            if self._stop_signal is not None:
                logger.info("signal %s: stopping after the current cycle",
                            signal.Signals(self._stop_signal).name)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            lock.release()
            os.close(rfd)
            os.close(wfd)
            self._pipe = None
            logger.info("smsgw stopped after %d cycles", self.cycles)
        return ExitCode.OK

    def _catch_up(self) -> None:
        """Keep schedule to the monotonic clock though the wall clock steps (set by hand,
        by the network, DST): schedule plans on naive datetime.now(), which would hold
        the cycle for as long as the clock went back (or run it early when it jumps on)."""
        now = datetime.now()
        for job in self.scheduler.jobs:
            if job is self._job:
                if self._due is not None:
                    job.next_run = now + timedelta(seconds=max(0.0, self._due - time.monotonic()))
            elif job.next_run is not None and job.unit == "seconds" and \
                    job.next_run - now > timedelta(seconds=float(job.interval) + 1):
                job.next_run = now  # a watcher, late by the step: check it now

    def _idle(self) -> float:
        """Seconds until the next job is due: the cycle by the monotonic clock."""
        idle = self.scheduler.idle_seconds
        wait = float(self.interval) if idle is None else max(0.0, idle)
        if self._due is not None:
            wait = min(wait, max(0.0, self._due - time.monotonic()))
        return wait

    def _done(self) -> bool:
        return self.max_cycles is not None and self.cycles >= self.max_cycles

    def _guard(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Error as exc:  # one bad job never kills the daemon
            logger.error("%s failed: %s", getattr(fn, "__name__", "job"), exc)
            logger.debug("traceback", exc_info=True)
            return None
        except Exception as exc:  # noqa: BLE001 - a bug of ours: logged whole, never fatal
            logger.error("internal error in %s (a bug in smsgw, please report it): %s: %s",
                         getattr(fn, "__name__", "job"), type(exc).__name__, exc,
                         exc_info=True)
            return None

    def _cycle_job(self) -> Any:
        started = time.monotonic()
        self._due = None
        # The follow-up is the first cycle at its time or later (a little early counts:
        # schedule's clock and the monotonic one tick apart); the cycles before it, such
        # as those run at once while work remains, do not use it up.
        if self._follow_up_at is not None and started >= self._follow_up_at - 0.5:
            self._follow_up_at = None
            logger.info("follow-up cycle after a wake-up (an SMS app may store the SMS late)")
        report = self._guard(self.gateway.cycle)
        self.last_report = report
        self.cycles += 1
        if self.heartbeat is not None:  # returns at once: the ping runs in a thread
            self._guard(lambda: self.heartbeat(report))  # type: ignore[misc]
        # The interval runs from the start of a cycle, so an SMS waits at most one interval
        # (plus the cycle that picks it up), however long the phone took to answer.
        delay = self._next_delay(report)
        if delay > 0:
            # Start a little early so the work of the next cycle (an inbox call, a POST)
            # also fits within the interval.
            margin = min(1.0, 0.05 * delay)
            delay = max(0.5, delay - (time.monotonic() - started) - margin)
        if self._follow_up_at is not None:
            delay = min(delay, max(0.0, self._follow_up_at - time.monotonic()))
        self._plan(delay)
        import schedule

        return schedule.CancelJob

    def _plan(self, delay: float) -> None:
        """Replace the cycle job by one due in `delay` seconds."""
        if self._job is not None:
            self.scheduler.cancel_job(self._job)
        self._job = self.scheduler.every(max(1, round(delay))).seconds.do(self._cycle_job)
        # schedule counts whole seconds from now: set the exact time (naive local, as it keeps).
        self._job.next_run = datetime.now() + timedelta(seconds=max(0.0, delay))
        # and the monotonic one, which the wall clock stepping back cannot move (_catch_up)
        self._due = time.monotonic() + max(0.0, delay)

    def _next_delay(self, report: CycleReport | None) -> float:
        """When to cycle next: at once while work remains, later while the webapp fails."""
        if report is None or any(e.startswith("exchange") for e in report.errors):
            self._failures += 1
            self._immediate = 0
            delay = max(self.interval, min(MAX_BACKOFF, self.interval * 2 ** (self._failures - 1)))
            if self._failures > 1:
                logger.info("%d failed cycles in a row: next try in %ds", self._failures, delay)
            return delay
        self._failures = 0
        if report.more and self._immediate < MAX_IMMEDIATE:
            self._immediate += 1
            return 0
        self._immediate = 0
        delay = float(self.interval)
        if report.awaiting:
            delay = min(delay, CONFIRM_RECHECK)
        if report.next_send is not None:
            until = (report.next_send - self.clock()).total_seconds()
            delay = min(delay, max(1.0, until))
        return delay
