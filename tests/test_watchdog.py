"""The watchdog, `smsgw stop`, the shell Tasker hook and doctor's job check, as on a phone.

The scripts in termux/ run as Termux runs them: a scheduled job executes the file itself
(exec bit and shebang; termux-exec maps /data/data/com.termux/files/usr to $PREFIX), with
HOME, PREFIX and PATH=$PREFIX/bin, nothing of smsgw (so its data folder is
~/.local/share/smsgw unless smsgw recorded another), stdin a pipe left open, and the job
ends when stdout and stderr reach EOF. $PREFIX/bin holds dash as `sh`, the tools the
scripts use, and `smsgw`, a one-line wrapper running this checkout; the fake termux-*
executables come first; the webapp is the reference webapp on 127.0.0.1.
Daemons started by the watchdog are not our children: they are found through their pid file
and stopped with SIGTERM at the end of each test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes import FakeTermux
from runner import REPO, TIMEOUT, clean_environ, wait_for

from smsgw.config import Paths
from smsgw.daemon import daemon_running
from smsgw.errors import ExitCode
from smsgw.testserver import ReferenceWebapp

SH = shutil.which("dash") or "sh"  # Termux's sh is dash
WATCHDOG = REPO / "termux" / "watchdog" / "smsgw-watchdog"
HOOK = REPO / "termux" / "tasker" / "smsgw-sms-received"
BOOT = REPO / "termux" / "boot" / "smsgw"
JOB_ID = 7674
TERMUX_SH = "#!/data/data/com.termux/files/usr/bin/sh\n"
# What Termux's $PREFIX/bin offers the scripts (coreutils, grep, sed, ...).
TOOLS = ("sed", "tr", "grep", "date", "wc", "mv", "mkdir", "touch", "dd", "sleep", "tail",
         "cat", "nohup", "rm", "dirname")


class Phone:
    """A Termux: HOME, PREFIX (its bin/ holds `smsgw`), the fake termux-api, smsgw's data
    folder where smsgw finds it without SMSGW_HOME."""

    def __init__(self, tmp: Path, fake: FakeTermux) -> None:
        self.fake = fake
        self.home = tmp / "home"
        self.home.mkdir()
        self.prefix = tmp / "usr"
        self.bin = self.prefix / "bin"
        self.bin.mkdir(parents=True)
        os.symlink(shutil.which(SH) or "/bin/sh", self.bin / "sh")
        for tool in TOOLS:
            found = shutil.which(tool)
            assert found, tool
            os.symlink(found, self.bin / tool)
        self.write_exe(self.bin / "smsgw",
                       f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" '
                       f'-c "from smsgw.cli import main; main()" "$@"\n')
        self.data = self.home / ".local" / "share" / "smsgw"
        self.paths = Paths(config_dir=self.home / ".config" / "smsgw", data_dir=self.data)
        env = {k: v for k, v in clean_environ().items() if k not in ("HOME", "PATH")}
        # What Termux gives a job (TermuxShellEnvironment): HOME, PREFIX, PATH=$PREFIX/bin.
        self.env = {**env, "HOME": str(self.home), "PREFIX": str(self.prefix),
                    "PATH": f"{fake.bin_dir}:{self.bin}",
                    "FAKE_TERMUX_DIR": str(fake.dir), "NO_PROXY": "127.0.0.1,localhost",
                    "PYTHONUNBUFFERED": "1"}

    @staticmethod
    def write_exe(path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
        return path

    def run(self, *argv: str | Path, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(a) for a in argv], env={**self.env, **(env or {})},
                              cwd=self.home, capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL)

    def smsgw(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.bin / "smsgw", *args)

    def install(self, script: Path, where: Path) -> Path:
        """`script` put at `where` as install.sh does; its Termux shebang mapped to this
        PREFIX as termux-exec maps it when the file is executed."""
        text = script.read_text(encoding="utf-8")
        assert text.startswith(TERMUX_SH) and os.access(script, os.X_OK), script
        return self.write_exe(where, f"#!{self.bin}/sh\n" + text[len(TERMUX_SH):])

    def job(self, script: Path, env: dict[str, str] | None = None,
            ) -> tuple[int, str, str]:
        """Execute `script` as Termux runs a job: the file itself, stdin a pipe kept open
        while it runs; it is done when stdout and stderr reach EOF (a child left holding
        them would keep the job running: a hang, caught by the timeout)."""
        proc = subprocess.Popen([str(script)], env={**self.env, **(env or {})}, cwd=self.home,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
        read: dict[str, bytes] = {}
        readers = [threading.Thread(target=lambda n=n, f=f: read.__setitem__(n, f.read()),
                                    daemon=True)
                   for n, f in (("out", proc.stdout), ("err", proc.stderr))]
        for t in readers:
            t.start()
        for t in readers:
            t.join(TIMEOUT)
        hung = any(t.is_alive() for t in readers)
        if hung:
            proc.kill()
        code = proc.wait(timeout=TIMEOUT)
        proc.stdin.close()
        assert not hung, f"{script}: its stdout/stderr never reached EOF (a child holds them)"
        return code, read["out"].decode(), read["err"].decode()

    def watchdog(self) -> tuple[int, str, str]:
        """One run of the job, as termux-job-scheduler's service runs it."""
        script = self.install(WATCHDOG, self.home / ".termux" / "watchdog" / "smsgw-watchdog")
        done = self.job(script)
        assert done[0] == 0, done
        return done

    def running(self) -> int | None:
        """The pid of the daemon holding the lock, or None."""
        info = daemon_running(self.paths)
        return int(info["pid"]) if info and info.get("pid") else None

    def wait_running(self, other_than: int | None = None) -> int:
        return wait_for(lambda: (pid := self.running()) and pid != other_than and pid,
                        TIMEOUT, "a daemon holding the lock")

    def log(self) -> str:
        path = self.data / "watchdog.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def boot_log(self) -> str:
        path = self.data / "boot.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        pid = self.running()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: self.running() is None, TIMEOUT, "the daemon stopped by SIGTERM")


@pytest.fixture
def phone(tmp_path: Path, make_webapp: Callable[..., ReferenceWebapp]) -> Iterator[Phone]:
    """A configured phone (URL saved, interval 600 s); no daemon runs yet."""
    fake = FakeTermux(tmp_path / "fake-termux")
    p = Phone(tmp_path, fake)
    webapp = make_webapp()
    p.webapp = webapp  # type: ignore[attr-defined]
    done = p.smsgw("config", "--url", webapp.url, "--interval", "600")
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield p
    finally:
        p.stop_all()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) is dead for us.
    with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def received(webapp: ReferenceWebapp) -> list[str]:
    return [m["content"] for m in webapp.snapshot()["received"]]


def inbox_reads(phone: Phone) -> int:
    return sum(1 for c in phone.fake.calls("termux-sms-list") if "inbox" in c["argv"])


def posts(webapp: ReferenceWebapp) -> int:
    return int(webapp.snapshot()["counters"]["posts"])


# the watchdog ------------------------------------------------------------------------------
def test_scripts_parse_with_dash() -> None:
    for script in (WATCHDOG, HOOK):
        proc = subprocess.run([SH, "-n", str(script)], capture_output=True, text=True,
                              timeout=10)
        assert proc.returncode == 0, proc.stderr


def test_watchdog_brings_back_a_killed_daemon_in_one_run(phone: Phone) -> None:
    phone.watchdog()
    # The job has ended (EOF, stdin closed) and the daemon it started keeps running.
    first = phone.wait_running()
    assert "smsgw was not running (no daemon.pid): started smsgw run" in phone.log()
    assert f"started smsgw run (pid {first})" in phone.log()  # it checked that it came up
    time.sleep(0.5)
    assert alive(first) and phone.running() == first

    os.kill(first, signal.SIGKILL)  # no clean-up: daemon.pid stays, naming a dead pid
    wait_for(lambda: not alive(first), TIMEOUT, "the killed daemon gone")
    assert json.loads((phone.data / "daemon.pid").read_text())["pid"] == first

    phone.watchdog()
    second = phone.wait_running(other_than=first)
    assert f"pid {first} in daemon.pid is not running smsgw (stale)" in phone.log()
    assert phone.log().count("started smsgw run") == 2
    assert (phone.data / "watchdog.log").stat().st_mode & 0o077 == 0
    # It works: the restarted daemon forwards an SMS.
    phone.fake.receive("+254700000001", "after the restart")
    assert phone.run(SH, HOOK).returncode == 0
    wait_for(lambda: "after the restart" in received(phone.webapp), TIMEOUT,  # type: ignore
             "the SMS at the webapp")
    assert phone.running() == second


def test_watchdog_never_starts_a_second_daemon(phone: Phone) -> None:
    phone.watchdog()
    pid = phone.wait_running()
    log = phone.log()
    phone.watchdog()
    phone.watchdog()
    assert phone.log() == log  # it saw the daemon and did nothing
    assert phone.running() == pid

    # Even when the pid file misleads it (here it names a process that is not smsgw), the
    # `smsgw run` it starts meets the daemon lock and refuses.
    other = subprocess.Popen(["sleep", "600"])
    try:
        (phone.data / "daemon.pid").write_text(json.dumps({"pid": other.pid}) + "\n")
        phone.watchdog()
        assert f"pid {other.pid} in daemon.pid is not running smsgw" in phone.log()
        wait_for(lambda: "smsgw is already running" in phone.boot_log(), TIMEOUT,
                 "the second `smsgw run` refused")
        assert alive(pid) and alive(other.pid)  # nobody was signalled
        assert daemon_running(phone.paths) is not None  # the first daemon holds the lock
    finally:
        other.kill()
        other.wait()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), TIMEOUT, "the first daemon stopped")


def test_after_smsgw_stop_it_stays_down(phone: Phone) -> None:
    phone.watchdog()
    pid = phone.wait_running()

    done = phone.smsgw("stop")
    assert done.returncode == 0, done.stderr
    assert f"stopped smsgw (pid {pid})" in done.stdout
    assert phone.running() is None and not alive(pid)
    assert (phone.data / "stopped").exists()
    events = (phone.data / "smsgw.log").read_text(encoding="utf-8")
    assert f"smsgw stop: stopping smsgw (pid {pid})" in events, events

    log, boot = phone.log(), phone.boot_log()
    phone.watchdog()
    phone.watchdog()
    assert phone.log() == log and phone.boot_log() == boot  # nothing started, nothing said
    assert phone.running() is None

    # The next `smsgw run` (here the user's own) clears the marker: the watchdog guards it
    # again.
    with open(phone.home / "run.out", "wb") as out:
        daemon = subprocess.Popen([str(phone.bin / "smsgw"), "run"], env=phone.env,
                                  stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    try:
        phone.wait_running()
        wait_for(lambda: not (phone.data / "stopped").exists(), TIMEOUT, "the marker removed")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=TIMEOUT) == 0


def test_smsgw_stop_without_a_daemon_still_keeps_the_watchdog_away(phone: Phone) -> None:
    done = phone.smsgw("stop")
    assert done.returncode == 0, done.stderr
    assert "not running" in done.stdout
    assert (phone.data / "stopped").stat().st_mode & 0o077 == 0
    phone.watchdog()
    assert phone.log() == "" and phone.running() is None


def test_watchdog_waits_for_smsgw_config(phone: Phone) -> None:
    config = phone.home / ".config" / "smsgw" / "config.json"
    assert config.exists()  # where smsgw saved it, and where the watchdog looks
    saved = config.read_bytes()
    config.unlink()
    phone.watchdog()
    assert phone.log() == "" and phone.running() is None  # `smsgw run` would only refuse
    config.write_bytes(saved)
    phone.watchdog()
    phone.wait_running()


def test_smsgw_stop_under_runit_says_sv_down(phone: Phone, tmp_path: Path) -> None:
    # runsv is the daemon's parent under runit; a script named runsv is one as well.
    runsv = phone.write_exe(tmp_path / "sv" / "runsv",
                            f'#!/bin/sh\n"{phone.bin / "smsgw"}" run\n')
    supervisor = subprocess.Popen([str(runsv)], env=phone.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        pid = phone.wait_running()
        done = phone.smsgw("stop")
        assert done.returncode == ExitCode.ERROR
        assert done.stderr.startswith("smsgw: error: ") and "sv down smsgw" in done.stderr
        assert alive(pid) and not (phone.data / "stopped").exists()
    finally:
        phone.stop_all()
        supervisor.wait(timeout=TIMEOUT)


def fake_sv(phone: Phone, status: str) -> Path:
    """An enabled runit service and an `sv` that answers `status` with `status`."""
    service = phone.prefix / "var" / "service" / "smsgw"
    (service / "supervise").mkdir(parents=True)
    phone.write_exe(phone.bin / "sv", f"#!/bin/sh\necho '{status}'\n")
    return service


def test_watchdog_leaves_a_service_that_runit_keeps_down(phone: Phone) -> None:
    fake_sv(phone, f"down: {phone.prefix}/var/service/smsgw: 300s, normally up")
    phone.watchdog()
    assert phone.log() == "" and phone.running() is None


def test_watchdog_starts_runit_when_runsv_died(phone: Phone) -> None:
    service = fake_sv(phone, f"warning: {phone.prefix}/var/service/smsgw: unable to open "
                             "supervise/ok: file does not exist")
    started = phone.home / "services-started"
    starter = phone.prefix / "etc" / "profile.d" / "start-services.sh"
    starter.parent.mkdir(parents=True)
    starter.write_text(f': > "{started}"\n', encoding="utf-8")
    # runsv's last record after the user's `sv down`: stat `down`, want 'd' (byte 17 of
    # supervise/status: 12 bytes of time, 4 of pid, paused, want, term, state).
    (service / "supervise" / "stat").write_text("down\n")
    (service / "supervise" / "status").write_bytes(bytes(16) + b"\0d\0\0")
    phone.watchdog()
    assert not started.exists() and phone.log() == ""

    (service / "supervise" / "stat").write_text("run\n")  # Termux was killed while running
    (service / "supervise" / "status").write_bytes(bytes(16) + b"\0u\0\1")
    phone.watchdog()
    assert started.exists()
    assert "runit was not running" in phone.log()
    assert phone.running() is None  # runit starts smsgw, not the watchdog


def test_watchdog_starts_runit_when_runsv_died_in_a_restart_gap(phone: Phone) -> None:
    # runsv writes `down` to supervise/stat whenever smsgw is down, also between smsgw's
    # exit and its restart; runsv killed then leaves that `down` with the wish still 'u'.
    service = fake_sv(phone, f"warning: {phone.prefix}/var/service/smsgw: unable to open "
                             "supervise/ok: file does not exist")
    started = phone.home / "services-started"
    starter = phone.prefix / "etc" / "profile.d" / "start-services.sh"
    starter.parent.mkdir(parents=True)
    starter.write_text(f': > "{started}"\n', encoding="utf-8")
    (service / "supervise" / "stat").write_text("down\n")
    (service / "supervise" / "status").write_bytes(bytes(16) + b"\0u\0\0")
    phone.watchdog()
    assert started.exists(), phone.log()
    assert "runit was not running" in phone.log()


# the shell Tasker hook ---------------------------------------------------------------------
def recording_smsgw(phone: Phone, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with an `smsgw` that only records its arguments (to see the fall-back)."""
    calls = tmp_path / "smsgw-calls"
    bin_dir = tmp_path / "recording"
    phone.write_exe(bin_dir / "smsgw", f'#!/bin/sh\necho "$*" >> "{calls}"\nexit 3\n')
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}, calls


def test_shell_hook_wakes_the_daemon_without_python(phone: Phone, tmp_path: Path) -> None:
    phone.watchdog()
    pid = phone.wait_running()
    webapp: ReferenceWebapp = phone.webapp  # type: ignore[attr-defined]
    wait_for(lambda: posts(webapp) >= 1, TIMEOUT, "the first cycle")
    env, calls = recording_smsgw(phone, tmp_path)
    phone.fake.receive("+254700000002", "woken by the shell hook")
    done = phone.run(SH, HOOK, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"woke smsgw (pid {pid})"
    assert not calls.exists()  # no `smsgw hook`: no Python start
    # The interval is 600 s: only the wake-up forwards it this soon.
    wait_for(lambda: "woken by the shell hook" in received(webapp), TIMEOUT,
             "the SMS at the webapp")


def test_shell_hook_falls_back_to_smsgw_hook(phone: Phone, tmp_path: Path) -> None:
    env, calls = recording_smsgw(phone, tmp_path)
    done = phone.run(SH, HOOK, env=env)  # no daemon.pid at all
    assert done.returncode == 3
    assert calls.read_text().splitlines() == ["hook"]

    # A stale pid now used by another process is never signalled (SIGUSR1 would end it).
    for argv in (["sleep", "600"], ["sh", "-c", "sleep 600; :", "smsgw"]):
        other = subprocess.Popen(argv)
        try:
            phone.data.mkdir(parents=True, exist_ok=True)
            (phone.data / "daemon.pid").write_text(json.dumps({"pid": other.pid}) + "\n")
            done = phone.run(SH, HOOK, env=env)
            time.sleep(0.2)  # a signal would have landed by now
            assert other.poll() is None, argv
        finally:
            other.kill()
            other.wait()
    assert calls.read_text().splitlines() == ["hook"] * 3

    # A real `smsgw hook` says no daemon runs.
    done = phone.run(SH, HOOK)
    assert done.returncode == ExitCode.DAEMON_DOWN
    assert "no daemon is running" in done.stderr


# doctor ------------------------------------------------------------------------------------
def doctor(phone: Phone) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    done = phone.smsgw("doctor", "--timeout", "5")
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = {}
    for line in done.stdout.splitlines():
        if line[:2] in ("✓ ", "✗ ", "- "):
            name, _, detail = line[2:].partition(": ")
            lines[name] = line[0] + " " + detail
    return done, lines


def test_doctor_reports_the_watchdog_job(phone: Phone) -> None:
    script = phone.home / ".termux" / "watchdog" / "smsgw-watchdog"
    phone.write_exe(script, WATCHDOG.read_text())  # as install.sh puts it
    done, checks = doctor(phone)
    assert checks["watchdog job"].startswith("✗ "), done.stdout
    assert "not registered" in checks["watchdog job"]
    fix = next(line for line in done.stdout.splitlines()
               if line.strip().startswith("fix:") and "termux-job-scheduler" in line)
    command = fix.split("fix: ", 1)[1]
    assert f"--job-id {JOB_ID}" in command and "--period-ms 900000" in command
    assert "--persisted true" in command

    # The fix, run as printed, registers the job.
    assert phone.run("sh", "-c", command).returncode == 0
    assert list(phone.fake.jobs()) == [JOB_ID]
    _, checks = doctor(phone)
    assert checks["watchdog job"].startswith("✓ "), checks
    assert f"job {JOB_ID}" in checks["watchdog job"]


def test_doctor_lists_the_checks_it_skipped(tmp_path: Path) -> None:
    # Off Termux: no termux-* commands on PATH.
    env = {**clean_environ(), "HOME": str(tmp_path), "SMSGW_HOME": str(tmp_path / "s"),
           "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", "from smsgw.cli import main; main()",
                           "doctor", "--timeout", "2"], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=tmp_path)
    skipped = [line for line in done.stdout.splitlines() if line.startswith("- ")]
    names = {line[2:].partition(": ")[0] for line in skipped}
    assert names == {"Termux:API app", "SMS permission", "wake lock", "sending limit",
                     "watchdog job"}, done.stdout
    assert all("skipped" in line and "termux-api" in line for line in skipped), done.stdout
    assert "5 skipped" in done.stdout.splitlines()[-1]


def test_doctor_when_another_job_hides_the_list(phone: Phone) -> None:
    # A job scheduled with --network none cannot be printed by Termux:API on Android 9+:
    # `--pending` then prints nothing at all, even with the watchdog registered.
    script = phone.write_exe(phone.home / ".termux" / "watchdog" / "smsgw-watchdog",
                             WATCHDOG.read_text())
    for extra in ([], ["--network", "none"]):
        done = phone.run("termux-job-scheduler", "--job-id", str(JOB_ID + len(extra)),
                         "--script", str(script), "--period-ms", "900000", "--persisted",
                         "true", *extra)
        assert done.returncode == 0, done.stderr
    done, checks = doctor(phone)
    assert checks["watchdog job"].startswith("✗ ") and "printed nothing" in checks["watchdog job"]
    assert "termux-job-scheduler --cancel --job-id ID" in done.stdout
    # Cancelling a `--network none` job crashes Termux:API the same way: the fix first
    # schedules that id again with a network, and has a way out when the id is unknown.
    assert "again with `--network any`" in done.stdout
    assert "force-stop Termux:API or clear its data" in done.stdout


def test_watchdog_says_when_smsgw_run_fails_to_start(phone: Phone) -> None:
    real = (phone.bin / "smsgw").read_text()
    phone.write_exe(phone.bin / "smsgw",
                    "#!/bin/sh\necho 'smsgw: error: something is wrong here' >&2\nexit 1\n")
    try:
        phone.watchdog()
    finally:
        phone.write_exe(phone.bin / "smsgw", real)
    log = phone.log()
    assert "started smsgw run" not in log
    assert "smsgw run failed to start" in log and "something is wrong here" in log


def test_watchdog_touches_its_trace_and_status_warns_when_it_is_old(phone: Phone) -> None:
    done = phone.smsgw("status")
    assert "watchdog" not in done.stdout  # not installed: nothing to say
    phone.watchdog()
    phone.wait_running()
    ran = phone.data / "watchdog.ran"
    assert ran.exists()
    assert phone.run("sh", "-c", doctor_watchdog_fix(phone)).returncode == 0  # registered
    two_hours_ago = time.time() - 7200
    os.utime(ran, (two_hours_ago, two_hours_ago))
    done = phone.smsgw("status")
    assert "warning:       the watchdog job last ran 2h00m ago" in done.stdout, done.stdout
    assert "battery optimisation" in done.stdout
    as_json = json.loads(phone.smsgw("status", "--json").stdout)
    assert "last ran 2h00m ago" in as_json["watchdog"]["warning"]
    _, checks = doctor(phone)
    assert checks["watchdog job"].startswith("✗ ") and "last ran 2h" in checks["watchdog job"]
    phone.watchdog()  # every run touches it, also with the daemon up
    assert ran.stat().st_mtime > two_hours_ago + 3600
    assert "watchdog" not in phone.smsgw("status").stdout


def test_scripts_use_the_folder_smsgw_recorded(phone: Phone, tmp_path: Path) -> None:
    # The user keeps smsgw in SMSGW_HOME (set in their shell); a job does not get it.
    own = tmp_path / "my-smsgw"
    webapp: ReferenceWebapp = phone.webapp  # type: ignore[attr-defined]
    done = phone.run(phone.bin / "smsgw", "config", "--url", webapp.url, "--interval", "600",
                     env={"SMSGW_HOME": str(own)})
    assert done.returncode == 0, done.stderr
    own_paths = Paths(config_dir=own, data_dir=own)
    try:
        phone.watchdog()
        pid = wait_for(lambda: (daemon_running(own_paths) or {}).get("pid"), TIMEOUT,
                       "the daemon in SMSGW_HOME")
        assert phone.running() is None  # not one in the default folder
        assert "started smsgw run" in (own / "watchdog.log").read_text()
        wait_for(lambda: posts(webapp) >= 1, TIMEOUT, "the first cycle")
        hook = phone.install(HOOK, phone.home / ".termux" / "tasker" / "smsgw-sms-received")
        code, out, _ = phone.job(hook)
        assert code == 0 and out.strip() == f"woke smsgw (pid {pid})"
    finally:
        info = daemon_running(own_paths)
        if info:
            os.kill(int(info["pid"]), signal.SIGTERM)
            wait_for(lambda: daemon_running(own_paths) is None, TIMEOUT, "the daemon stopped")
    # doctor, in the user's shell, sees the folders recorded; unrecorded, it says so.
    env = {"SMSGW_HOME": str(own)}
    done = phone.run(phone.bin / "smsgw", "doctor", "--timeout", "5", env=env)
    assert f"✓ folders for the scripts: {own}" in done.stdout, done.stdout
    (phone.home / ".smsgw-folders").unlink()
    done = phone.run(phone.bin / "smsgw", "doctor", "--timeout", "5", env=env)
    assert "✗ folders for the scripts: SMSGW_HOME set here" in done.stdout, done.stdout
    assert "run `smsgw config` once" in done.stdout


def test_boot_script_starts_smsgw_when_the_runit_service_is_disabled(phone: Phone) -> None:
    # termux-services installed, smsgw's service as install.sh leaves it: disabled (`down`).
    service = phone.prefix / "var" / "service" / "smsgw"
    service.mkdir(parents=True)
    (service / "down").touch()
    started = phone.home / "services-started"
    starter = phone.prefix / "etc" / "profile.d" / "start-services.sh"
    starter.parent.mkdir(parents=True)
    starter.write_text(f': > "{started}"\n', encoding="utf-8")
    boot = phone.install(BOOT, phone.home / ".termux" / "boot" / "smsgw")
    assert phone.job(boot)[0] == 0
    pid = phone.wait_running()  # runsv would honour `down`: the script starts smsgw itself
    assert not started.exists()
    phone.stop_all()
    wait_for(lambda: not alive(pid), TIMEOUT, "the daemon stopped")

    (service / "down").unlink()  # sv-enable smsgw: runit starts it
    assert phone.job(boot)[0] == 0
    assert started.exists()
    time.sleep(1)
    assert phone.running() is None


def assert_stored_by_the_follow_up(phone: Phone) -> None:
    """The last SMS stored was stored by the follow-up cycle of the last wake-up: the
    event log names that cycle, then the SMS, with no other wake-up between."""
    lines = (phone.data / "smsgw.log").read_text(encoding="utf-8").splitlines()
    stored = max(i for i, line in enumerate(lines) if "received SMS" in line
                 and "new -> WAITING" in line)
    woken = max(i for i, line in enumerate(lines[:stored]) if "woken for an immediate" in line)
    follow = [i for i, line in enumerate(lines) if "follow-up cycle after a wake-up" in line]
    assert any(woken < i < stored for i in follow), "\n".join(lines[woken:stored + 1])


def test_a_second_cycle_follows_a_wake_up(phone: Phone) -> None:
    # Tasker's "Received Text" can fire before the SMS app has written the message: the
    # woken cycle misses it, the one a few seconds later forwards it.
    phone.watchdog()
    phone.wait_running()
    webapp: ReferenceWebapp = phone.webapp  # type: ignore[attr-defined]
    wait_for(lambda: posts(webapp) >= 1, TIMEOUT, "the first cycle")
    hook = phone.install(HOOK, phone.home / ".termux" / "tasker" / "smsgw-sms-received")
    before = posts(webapp)
    assert phone.job(hook)[0] == 0
    wait_for(lambda: posts(webapp) > before, TIMEOUT, "the woken cycle")
    phone.fake.receive("+254700000003", "written after the event")
    wait_for(lambda: "written after the event" in received(webapp), TIMEOUT,
             "the SMS at the webapp")
    # The interval is 600 s: the cycle that stored it is the follow-up, not the next poll.
    assert_stored_by_the_follow_up(phone)


def test_the_follow_up_cycle_comes_though_the_woken_cycle_had_more_work(phone: Phone) -> None:
    # The woken cycle finds a new message (held by the rate limit): the cycle run at once
    # for it must not use up the follow-up, which forwards the SMS the SMS app wrote late.
    assert phone.smsgw("config", "--max-per-minute", "1").returncode == 0
    webapp: ReferenceWebapp = phone.webapp  # type: ignore[attr-defined]
    first = webapp.queue("+254700000004", "uses up the minute's budget")
    phone.watchdog()
    phone.wait_running()
    wait_for(lambda: webapp.status_of(first) == "SENT", TIMEOUT, "the first message sent")
    hook = phone.install(HOOK, phone.home / ".termux" / "tasker" / "smsgw-sms-received")
    webapp.queue("+254700000005", "waits for the next minute")
    before = inbox_reads(phone)
    assert phone.job(hook)[0] == 0
    # The woken cycle and the one at once after it (new work) have read the inbox; the next
    # is the follow-up, a few seconds after the wake-up (else the rate limit's, ~40 s on).
    wait_for(lambda: inbox_reads(phone) >= before + 2, TIMEOUT, "the woken cycles")
    phone.fake.receive("+254700000003", "written after the woken cycles")
    wait_for(lambda: "written after the woken cycles" in received(webapp), TIMEOUT,
             "the SMS at the webapp")
    # Not the cycle the rate limit plans a minute on, nor the next poll (600 s): the follow-up.
    assert_stored_by_the_follow_up(phone)


def test_doctor_flags_a_watchdog_job_that_waits_for_a_good_battery(phone: Phone) -> None:
    script = phone.install(WATCHDOG, phone.home / ".termux" / "watchdog" / "smsgw-watchdog")
    done = phone.run("termux-job-scheduler", "--job-id", str(JOB_ID), "--script", str(script),
                     "--period-ms", "900000", "--persisted", "true")  # Termux:API's defaults
    assert done.returncode == 0, done.stderr
    done, checks = doctor(phone)
    assert checks["watchdog job"].startswith("✗ ") and "(battery not low)" in \
        checks["watchdog job"], done.stdout
    assert "--battery-not-low false --network any" in done.stdout


def test_doctor_reads_the_jobs_of_an_older_termux_api(phone: Phone) -> None:
    phone.fake.set_mode(app_version="0.51")  # a tab after the path, `No pending jobs`
    script = phone.install(WATCHDOG, phone.home / ".termux" / "watchdog" / "smsgw-watchdog")
    _, checks = doctor(phone)
    assert "not registered" in checks["watchdog job"]
    command = doctor_watchdog_fix(phone)
    assert phone.run("sh", "-c", command).returncode == 0
    assert list(phone.fake.jobs()) == [JOB_ID] and phone.fake.jobs()[JOB_ID]["script"] == \
        str(script)
    done, checks = doctor(phone)
    assert checks["watchdog job"].startswith("✓ "), done.stdout
    assert "about every 15 to 30 min" in checks["watchdog job"]


def doctor_watchdog_fix(phone: Phone) -> str:
    done, _ = doctor(phone)
    fix = next(line for line in done.stdout.splitlines()
               if line.strip().startswith("fix:") and "termux-job-scheduler" in line)
    return fix.split("fix: ", 1)[1]


def test_a_trial_elsewhere_never_takes_the_scripts_from_the_configured_gateway(
        phone: Phone, tmp_path: Path) -> None:
    webapp: ReferenceWebapp = phone.webapp  # type: ignore[attr-defined]
    phone.install(HOOK, phone.home / ".termux" / "tasker" / "smsgw-sms-received")
    own = tmp_path / "my-smsgw"
    done = phone.run(phone.bin / "smsgw", "config", "--url", webapp.url, "--no-check",
                     env={"SMSGW_HOME": str(own)})
    assert done.returncode == 0, done.stderr
    record = phone.home / ".smsgw-folders"
    assert record.read_text() == f"SMSGW_HOME={own}\n"
    # A trial in another folder (a relative SMSGW_HOME, as the README's /tmp/smsgw-try)
    # leaves the record as it is, and says so.
    trial = phone.run(phone.bin / "smsgw", "config", "--url", webapp.url, "--no-check",
                      env={"SMSGW_HOME": "trial"})
    assert trial.returncode == 0, trial.stderr
    assert record.read_text() == f"SMSGW_HOME={own}\n"
    assert f"the watchdog, boot and Tasker scripts follow the smsgw in {own}" in trial.stderr
    # Nor does a gateway in the default folders remove it.
    default = phone.run(phone.bin / "smsgw", "config", "--url", webapp.url, "--no-check")
    assert default.returncode == 0, default.stderr
    assert record.read_text() == f"SMSGW_HOME={own}\n"
    # doctor in the default folders says the scripts follow another gateway, and how to switch
    done = phone.run(phone.bin / "smsgw", "doctor", "--timeout", "5")
    assert f"use {own}, not" in done.stdout and f"remove {record}" in done.stdout, done.stdout
    # Once the record is gone, a gateway in a relative folder is recorded absolute.
    record.unlink()
    again = phone.run(phone.bin / "smsgw", "config", "--interval", "60",
                      env={"SMSGW_HOME": "trial"})
    assert again.returncode == 0, again.stderr
    text = record.read_text() if record.exists() else ""
    assert text.startswith("SMSGW_HOME=/") and text.rstrip().endswith("/trial"), text
