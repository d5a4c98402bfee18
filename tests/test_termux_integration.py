"""smsgw over the fake Termux:API, run as a user runs it.

Every smsgw command runs in a subprocess (PYTHONPATH = this checkout, SMSGW_HOME and HOME in
a temporary folder, the fake termux-* executables first on PATH); the webapp is the reference
webapp on 127.0.0.1. The Termux scripts in termux/ run under `sh`/`dash` with fake
`termux-wake-lock` and `smsgw` executables that record how they were called.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeTermux
from runner import REPO, TIMEOUT, SmsgwRunner, clean_environ, wait_for

from smsgw.config import default_paths
from smsgw.errors import ExitCode
from smsgw.testserver import ReferenceWebapp

pytest_plugins = ["fakes.fixtures"]

TERMUX_DIR = REPO / "termux"
PASSWORD = "Pa55word"
PERMISSION_WORDS = "Please grant the following permission"


# helpers -----------------------------------------------------------------------------------
class Smsgw(SmsgwRunner):
    """`smsgw` in a subprocess, with its own SMSGW_HOME, HOME and PREFIX, over the fakes."""

    def __init__(self, tmp: Path, fake: FakeTermux) -> None:
        self.fake = fake
        self.prefix = tmp / "usr"  # a Termux $PREFIX with nothing installed in it
        super().__init__(tmp, {**{k: v for k, v in fake.env.items()
                                  if k in ("PATH", "FAKE_TERMUX_DIR")},
                               "PREFIX": str(self.prefix)})

    def fake_termux(self, *args: str) -> str:
        """Drive the fake phone through its command line, as a person at a shell would."""
        proc = subprocess.run(["fake-termux", *args], env=self.env, capture_output=True,
                              text=True, timeout=TIMEOUT, check=True)
        return proc.stdout


    def configure(self, url: str) -> None:
        proc = self("config", "--url", url)
        assert proc.returncode == 0, proc.stdout + proc.stderr



def posts(webapp: ReferenceWebapp) -> int:
    return int(webapp.snapshot()["counters"]["posts"])


def wait_first_cycle(webapp: ReferenceWebapp, daemon: subprocess.Popen[bytes],
                     out: Path) -> None:
    """The daemon has read the inbox once (its position is set) and POSTed."""
    def posted() -> bool:
        assert daemon.poll() is None, out.read_text(errors="replace")
        return posts(webapp) >= 1

    wait_for(posted, 30, "the daemon's first POST")


def doctor_lines(output: str) -> dict[str, tuple[bool, str]]:
    """`smsgw doctor` output as check name -> (ok, detail + fix)."""
    checks: dict[str, tuple[bool, str]] = {}
    last = None
    for line in output.splitlines():
        if line[:2] in ("✓ ", "✗ "):
            name, _, detail = line[2:].partition(": ")
            checks[name] = (line[0] == "✓", detail)
            last = name
        elif line.startswith("    fix: ") and last is not None:
            ok, detail = checks[last]
            checks[last] = (ok, detail + "\n" + line.strip())
    return checks


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path


# fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def smsgw(tmp_path: Path, fake_termux: FakeTermux) -> Smsgw:
    return Smsgw(tmp_path, fake_termux)


@pytest.fixture
def webapp(make_webapp: Callable[..., ReferenceWebapp]) -> ReferenceWebapp:
    return make_webapp(username="smsgw", password=PASSWORD)


# the whole flow ----------------------------------------------------------------------------
OUT_TEXTS = [
    "Hello from the webapp",
    "Habari yako? Karibu kliniki kesho saa tatu asubuhi.",
    "Line one\nline two\n\nline four",
    "Emoji 😀 and accents: é ü ñ",
    "Quotes ' \" and $HOME `id` \\n backslash",
    "-n looks like an option",
    "A long one " + "x" * 300,
    "€ [ ] { } ^ ~ | \\",
    "Ελληνικά κείμενα",
    "中文短信测试",
]


def test_full_flow_over_the_fakes(smsgw: Smsgw, fake_termux: FakeTermux,
                                  webapp: ReferenceWebapp, tmp_path: Path) -> None:
    smsgw.configure(webapp.url)
    outgoing = {}
    for k in range(20):
        number = f"+2547000001{k:02d}"
        text = f"{OUT_TEXTS[k % len(OUT_TEXTS)]} #{k}"
        msg_id = webapp.queue(number, text, id=f"out-{k:02d}")
        outgoing[msg_id] = (number, text)
    incoming = [(f"+2547111110{k:02d}", f"Reply {k}: sawa 👍 {'ok ' * k}".strip())
                for k in range(10)]

    out = tmp_path / "daemon.out"
    with smsgw.daemon("--interval", "2", out=out) as daemon:
        wait_first_cycle(webapp, daemon, out)
        injected = []
        for number, body in incoming:
            before = time.time()
            smsgw.fake_termux("receive", number, body)
            injected.append((number, body, before, time.time()))

        def done() -> bool:
            assert daemon.poll() is None, out.read_text(errors="replace")
            sent = all(webapp.status_of(i) == "SENT" for i in outgoing)
            return sent and len(webapp.received()) >= len(incoming)

        wait_for(done, TIMEOUT, "20 messages SENT and 10 SMS received at the webapp")

    # Each message was handed to termux-sms-send exactly once, text on stdin.
    calls = fake_termux.calls("termux-sms-send")
    assert len(calls) == len(outgoing), calls
    by_number = {number: text for number, text in outgoing.values()}
    assert Counter(c["argv"][1] for c in calls) == Counter(by_number.keys())
    for call in calls:
        assert call["argv"] == ["-n", call["argv"][1]], call  # nothing but the number
        assert call["stdin_len"] == len(by_number[call["argv"][1]]), call
    # ... and the phone recorded each one once, with the whole text.
    sent_rows = fake_termux.rows("sent")
    assert sorted((r["address"], r["body"]) for r in sent_rows) == sorted(outgoing.values())

    statuses = webapp.statuses()
    for msg_id in outgoing:
        seen = statuses[msg_id]
        assert seen[-1] == "SENT", (msg_id, seen)
        assert "FAILED" not in seen and "DELIVERED" not in seen, (msg_id, seen)
        assert seen.index("UNSENT") < seen.index("PENDING") < seen.index("SENT"), seen

    # Each incoming SMS reached the webapp once, with every field.
    received = webapp.received()
    assert len(received) == len(incoming)
    assert sorted((m["from"], m["content"]) for m in received) == sorted(incoming)
    posted_ids = Counter(m["id"] for entry in webapp.snapshot()["raw"]
                         for m in (entry["body"] or {}).get("messages") or [])
    assert set(posted_ids.values()) == {1}, posted_ids  # no fault: no re-send needed
    at = {(n, b): (lo, hi) for n, b, lo, hi in injected}
    for msg in received:
        assert set(msg) >= {"id", "from", "content", "sms_sent", "sms_received"}, msg
        assert isinstance(msg["id"], str) and len(msg["id"]) >= 32, msg
        assert isinstance(msg["sms_sent"], int) and isinstance(msg["sms_received"], int), msg
        lo, hi = at[(msg["from"], msg["content"])]
        # The phone's date, at second resolution.
        assert int(lo) - 1 <= msg["sms_received"] / 1000 <= hi + 1, (msg, lo, hi)
    assert len({m["id"] for m in received}) == len(incoming)

    snap = webapp.snapshot()
    assert snap["header_violations"] == []
    assert snap["problems"] == []
    assert snap["counters"]["duplicate_messages"] == 0

    history = smsgw.messages()
    states = {m["id"]: m["state"] for m in history["from_webapp"]}
    assert all(states.get(i) == "SENT" for i in outgoing), states
    assert len(history["to_webapp"]) == len(incoming)
    assert {m["state"] for m in history["to_webapp"]} == {"FORWARDED"}


def test_hook_wakes_the_daemon_at_once(smsgw: Smsgw, fake_termux: FakeTermux,
                                       webapp: ReferenceWebapp, tmp_path: Path) -> None:
    smsgw.configure(webapp.url)
    out = tmp_path / "daemon.out"
    with smsgw.daemon("--interval", "600", out=out) as daemon:
        wait_first_cycle(webapp, daemon, out)
        time.sleep(0.5)  # let the first cycle finish: the next one is 600 s away
        fake_termux.receive("+254722000001", "Arrived just now")
        start = time.monotonic()
        hooked = smsgw("hook")
        assert hooked.returncode == 0, hooked.stderr
        assert f"woke smsgw (pid {daemon.pid})" in hooked.stdout
        wait_for(lambda: webapp.received(), 10, "the SMS at the webapp after `smsgw hook`")
        latency = time.monotonic() - start
    print(f"\nsmsgw hook: SMS at the webapp {latency:.2f} s after the hook started")
    assert [(m["from"], m["content"]) for m in webapp.received()] == [
        ("+254722000001", "Arrived just now")]
    assert latency < 10


def test_idle_call_budget(smsgw: Smsgw, fake_termux: FakeTermux, webapp: ReferenceWebapp,
                          tmp_path: Path) -> None:
    smsgw.configure(webapp.url)
    webapp.queue("+254733000001", "one message, then idle", id="budget-1")
    out = tmp_path / "daemon.out"
    with smsgw.daemon("--interval", "1", out=out) as daemon:
        wait_first_cycle(webapp, daemon, out)

        def confirmed() -> bool:
            assert daemon.poll() is None, out.read_text(errors="replace")
            return webapp.status_of("budget-1") == "SENT"

        wait_for(confirmed, TIMEOUT, "the message SENT")
        busy_calls = fake_termux.calls("termux-sms-list")
        time.sleep(1.5)  # the SENT update's POST and the cycle after it
        fake_termux.reset_calls()
        idle_from = posts(webapp)
        time.sleep(4)  # about four idle cycles
    idle_posts = posts(webapp) - idle_from  # the daemon has stopped: final numbers

    probes = [c for c in busy_calls if any("_id < 0" in a for a in c["argv"])]
    assert len(probes) == 1, busy_calls  # --message-selection support is probed once
    reconciling = [c for c in busy_calls if c["argv"][:2] == ["-t", "all"] and c not in probes]
    assert reconciling, busy_calls  # while the message awaited the phone's record
    idle = fake_termux.calls()
    lists = [c for c in idle if c["name"] == "termux-sms-list"]
    assert idle_posts >= 2, idle_posts
    # Idle, each cycle is one inbox read and one POST; nothing awaits the phone's record,
    # so no reconciliation read, no probe again, no other command.
    assert all(c["argv"][:2] == ["-t", "inbox"] for c in lists), lists
    assert idle_posts - 1 <= len(lists) <= idle_posts + 1, (len(lists), idle_posts)
    assert {c["name"] for c in idle} <= {"termux-sms-list"}, idle
    assert webapp.snapshot()["updates"][-1]["status"] == "SENT"


# errors from the phone -------------------------------------------------------------------
def test_permission_error_reaches_history_log_and_status(
        smsgw: Smsgw, fake_termux: FakeTermux, webapp: ReferenceWebapp) -> None:
    smsgw.configure(webapp.url)
    fake_termux.set_mode(permission_error=1)
    webapp.queue("+254744000001", "needs SEND_SMS", id="perm-1")
    proc = smsgw("run", "--once")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode not in (ExitCode.OK, ExitCode.WEBAPP_FAILING), proc.stderr

    assert fake_termux.call_count("termux-sms-send") == 1
    assert fake_termux.rows("sent") == []
    assert webapp.status_of("perm-1") == "UNSENT"  # stored, to be retried; never PENDING
    assert "PENDING" not in webapp.statuses()["perm-1"]

    msg = next(m for m in smsgw.messages()["from_webapp"] if m["id"] == "perm-1")
    assert msg["state"] == "UNSENT" and msg["retries"] == 1, msg
    assert PERMISSION_WORDS in (msg["reason"] or ""), msg
    assert "SEND_SMS" in msg["reason"]
    assert any(PERMISSION_WORDS in (h["reason"] or "") for h in msg["history"]), msg

    log = smsgw.log_file.read_text(encoding="utf-8")
    assert f"(cause: termux-sms-send: {PERMISSION_WORDS}" in log, log
    assert "Retry #1" in log

    status = smsgw("status")
    assert status.returncode == ExitCode.DAEMON_DOWN
    phone_lines = [line for line in status.stdout.splitlines() if line.startswith("phone error:")]
    assert len(phone_lines) == 1, status.stdout
    assert PERMISSION_WORDS in phone_lines[0]
    data = json.loads(smsgw("status", "--json").stdout)
    assert PERMISSION_WORDS in data["phone"]["last_error"]["text"]


def test_status_does_not_show_a_fixed_phone_error_as_current(
        smsgw: Smsgw, fake_termux: FakeTermux, webapp: ReferenceWebapp) -> None:
    # The user grants the permission after a failing cycle; the next cycle reads the inbox
    # and the sent rows without error. `smsgw status` must not go on presenting the old
    # error as the phone's state: drop it, or mark it as earlier, as it does for the webapp.
    smsgw.configure(webapp.url)
    fake_termux.set_mode(permission_error=1)
    smsgw("run", "--once")
    assert PERMISSION_WORDS in smsgw("status").stdout
    fake_termux.set_mode(permission_error=None)
    again = smsgw("run", "--once")
    assert again.returncode == ExitCode.OK, again.stderr
    assert fake_termux.call_count("termux-sms-list") >= 2

    data = json.loads(smsgw("status", "--json").stdout)
    phone = data["phone"]
    current = phone["last_error"] is not None and phone.get("failing", True)
    assert not current, phone
    lines = [line for line in smsgw("status").stdout.splitlines()
             if line.startswith("phone error:")]
    assert all("earlier" in line for line in lines), lines


def test_run_without_the_termux_api_commands(smsgw: Smsgw, webapp: ReferenceWebapp) -> None:
    smsgw.configure(webapp.url)
    path = os.pathsep.join(p for p in smsgw.env["PATH"].split(os.pathsep)
                           if Path(p).resolve() != FakeTermux.bin_dir.resolve())
    assert shutil.which("termux-sms-send", path=path) is None
    proc = smsgw("run", env={"PATH": path})
    assert proc.returncode == ExitCode.ERROR
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "pkg install termux-api" in lines[0]
    assert "--phone simulated" in lines[0]
    assert posts(webapp) == 0


# doctor ------------------------------------------------------------------------------------
ALL_CHECKS = {"termux-api commands", "Termux:API app", "SMS permission", "wake lock",
              "Termux:Boot script", "runit service", "webapp", "sending limit", "watchdog job"}


def run_doctor(smsgw: Smsgw, *extra: str) -> tuple[subprocess.CompletedProcess[str],
                                                   dict[str, tuple[bool, str]]]:
    proc = smsgw("doctor", "--timeout", "2", *extra)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc, doctor_lines(proc.stdout)


def test_doctor_normal_mode(smsgw: Smsgw) -> None:
    proc, checks = run_doctor(smsgw)
    assert set(checks) == ALL_CHECKS, proc.stdout
    failed = {name for name, (ok, _) in checks.items() if not ok}
    assert failed == {"Termux:Boot script", "webapp", "watchdog job"}, proc.stdout
    assert "smsgw config --url" in checks["webapp"][1]
    assert "fix:" in checks["Termux:Boot script"][1]
    assert proc.returncode == ExitCode.ERROR
    assert "some checks failed" in proc.stdout


def test_doctor_all_good_when_boot_script_and_webapp_are_set(
        smsgw: Smsgw, webapp: ReferenceWebapp) -> None:
    smsgw.configure(webapp.url)
    write_exe(smsgw.user_home / ".termux" / "boot" / "smsgw", "#!/bin/sh\n")
    watchdog = write_exe(smsgw.user_home / ".termux" / "watchdog" / "smsgw-watchdog",
                         "#!/bin/sh\n")
    subprocess.run(["termux-job-scheduler", "--job-id", "7674", "--script", str(watchdog),
                    "--period-ms", "900000", "--persisted", "true", "--battery-not-low",
                    "false"], env=smsgw.env,
                   check=True, capture_output=True, timeout=TIMEOUT)
    proc, checks = run_doctor(smsgw)
    assert all(ok for ok, _ in checks.values()), proc.stdout
    assert checks["Termux:Boot script"][1] == str(smsgw.user_home / ".termux/boot/smsgw")
    assert proc.returncode == ExitCode.OK, proc.stdout
    assert "all checks passed" in proc.stdout
    assert PASSWORD not in proc.stdout


def test_doctor_boot_script_not_executable(smsgw: Smsgw) -> None:
    script = smsgw.user_home / ".termux" / "boot" / "smsgw"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n", encoding="utf-8")
    _, checks = run_doctor(smsgw)
    ok, text = checks["Termux:Boot script"]
    assert not ok and f"chmod +x {script}" in text


def test_doctor_permission_error(smsgw: Smsgw, fake_termux: FakeTermux) -> None:
    fake_termux.set_mode(permission_error=1)
    proc, checks = run_doctor(smsgw)
    ok, text = checks["SMS permission"]
    assert not ok, proc.stdout
    assert PERMISSION_WORDS in text and "READ_SMS" in text
    assert "Termux:API → Permissions" in text and "SMS" in text.split("fix:")[1]
    assert proc.returncode == ExitCode.ERROR


def test_doctor_app_missing_does_not_hang(smsgw: Smsgw, fake_termux: FakeTermux) -> None:
    fake_termux.set_mode(app_missing=1)
    start = time.monotonic()
    proc, checks = run_doctor(smsgw)
    elapsed = time.monotonic() - start
    assert elapsed < 30, elapsed  # one 2 s timeout, not a hang
    ok, text = checks["Termux:API app"]
    assert not ok and "com.termux.api is not installed" in text, proc.stdout
    assert "F-Droid" in text
    ok, text = checks["SMS permission"]
    assert not ok and "did not answer within 2 s" in text, proc.stdout
    assert proc.returncode == ExitCode.ERROR
    # The hung termux-sms-list and its child were killed with their process group.
    hung = fake_termux.calls("termux-sms-list")
    assert hung
    for call in hung:
        assert wait_for(lambda c=call: group_gone(c["pid"]), 10, "the hung call killed")


def test_doctor_flags_the_android_sending_limit(smsgw: Smsgw, fake_termux: FakeTermux) -> None:
    fake_termux.set_mode(setting_sms_outgoing_check_max_count=20)
    proc, checks = run_doctor(smsgw)
    ok, text = checks["sending limit"]
    assert not ok, proc.stdout
    assert "20 parts per 60s" in text and "at most 30 per minute" in text
    assert "adb shell settings put global sms_outgoing_check_max_count 30" in text
    assert "smsgw config --max-per-minute 20" in text

    assert smsgw("config", "--max-per-minute", "20").returncode == 0
    _, checks = run_doctor(smsgw)
    assert checks["sending limit"][0], checks["sending limit"]


def test_doctor_runit_service(smsgw: Smsgw) -> None:
    service = smsgw.prefix / "var" / "service" / "smsgw"
    service.mkdir(parents=True)
    (service / "down").touch()
    _, checks = run_doctor(smsgw)
    ok, text = checks["runit service"]
    assert not ok and "disabled" in text
    assert "sv-enable smsgw" in text

    (service / "down").unlink()
    _, checks = run_doctor(smsgw)
    assert checks["runit service"] == (True, f"{service} enabled")


# notification watcher ------------------------------------------------------------------------
@pytest.fixture
def store(smsgw: Smsgw) -> Any:
    """The Store the subprocesses of `smsgw` use (same SMSGW_HOME)."""
    from smsgw.store import Store

    paths = default_paths({"SMSGW_HOME": str(smsgw.home)})
    paths.ensure()
    return Store(paths.state_dir, retention_days=30)


def test_notification_watcher_disables_itself_without_access(
        smsgw: Smsgw, fake_termux: FakeTermux, store: Any) -> None:
    from smsgw.watcher import NotificationWatcher

    assert smsgw("config", "--notification-watch").returncode == 0
    fake_termux.set_mode(notification_access=0)
    watcher = NotificationWatcher(store, timeout=1)
    start = time.monotonic()
    assert watcher.check() is False
    assert time.monotonic() - start < 15
    assert watcher.enabled is False
    [call] = fake_termux.calls("termux-notification-list")
    assert wait_for(lambda: group_gone(call["pid"]), 10, "the hung call killed")
    assert watcher.check() is False
    assert fake_termux.call_count("termux-notification-list") == 1  # no more calls

    status = smsgw("status")
    lines = [line for line in status.stdout.splitlines() if line.startswith("notifications:")]
    assert len(lines) == 1, status.stdout
    assert "disabled" in lines[0] and "Notification Access" in lines[0]
    data = json.loads(smsgw("status", "--json").stdout)
    assert "Notification Access" in data["phone"]["notification_watcher"]


def test_notification_watcher_cycles_on_new_sms_notification(
        smsgw: Smsgw, fake_termux: FakeTermux, store: Any) -> None:
    from smsgw.watcher import NotificationWatcher

    watcher = NotificationWatcher(store, timeout=10)
    fake_termux.notify("com.google.android.apps.messaging", "Old message")
    assert watcher.check() is False  # the first call only primes
    assert "watching notifications" in smsgw("status").stdout
    assert watcher.check() is False  # nothing new

    smsgw.fake_termux("notify", "com.spotify.music", "Now playing")
    smsgw.fake_termux("notify", "com.whatsapp", "New chat")
    assert watcher.check() is False  # not an SMS app

    smsgw.fake_termux("notify", "com.google.android.apps.messaging", "New message")
    assert watcher.check() is True
    assert watcher.check() is False  # seen now
    smsgw.fake_termux("notify", "com.samsung.android.messaging", "New message")
    assert watcher.check() is True
    assert watcher.enabled


# Termux scripts ----------------------------------------------------------------------------
def shim_bin(tmp_path: Path) -> Path:
    """A bin dir with `smsgw` running this checkout's smsgw, as pip's script would."""
    bin_dir = tmp_path / "shim-bin"
    write_exe(bin_dir / "smsgw",
              f'#!/bin/sh\nexec "{sys.executable}" -c "from smsgw.cli import main; main()" '
              '"$@"\n')
    return bin_dir


def test_tasker_hook_script_wakes_the_daemon(smsgw: Smsgw, fake_termux: FakeTermux,
                                             webapp: ReferenceWebapp, tmp_path: Path) -> None:
    script = TERMUX_DIR / "tasker" / "smsgw-sms-received"
    env = smsgw.environ({"PATH": f"{shim_bin(tmp_path)}{os.pathsep}{smsgw.env['PATH']}"})
    proc = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == ExitCode.DAEMON_DOWN, proc.stdout + proc.stderr
    assert "no daemon is running" in proc.stderr

    smsgw.configure(webapp.url)
    out = tmp_path / "daemon.out"
    with smsgw.daemon("--interval", "600", out=out) as daemon:
        wait_first_cycle(webapp, daemon, out)
        time.sleep(0.5)
        fake_termux.receive("+254755000001", "Tasker saw this one")
        proc = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                              timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        assert f"woke smsgw (pid {daemon.pid})" in proc.stdout
        wait_for(lambda: webapp.received(), 10, "the SMS at the webapp")
    assert webapp.received()[0]["content"] == "Tasker saw this one"


def test_tasker_hook_script_runs_smsgw_hook(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    record = tmp_path / "argv"
    write_exe(bin_dir / "smsgw", f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\nexit 7\n')
    proc = subprocess.run(["sh", str(TERMUX_DIR / "tasker" / "smsgw-sms-received")],
                          env={**clean_environ(), "PATH": f"{bin_dir}:/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 7  # exec: smsgw's exit status is the script's
    assert record.read_text(encoding="utf-8") == "hook\n"


DASH = shutil.which("dash")
needs_dash = pytest.mark.skipif(DASH is None, reason="dash (Termux's sh) is not installed")
BOOT = TERMUX_DIR / "boot" / "smsgw"


@needs_dash
@pytest.mark.parametrize("script", ["boot/smsgw", "service/smsgw/run",
                                    "tasker/smsgw-sms-received"])
def test_termux_scripts_parse_with_dash(script: str) -> None:
    path = TERMUX_DIR / script
    proc = subprocess.run([DASH, "-n", str(path)], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert path.read_text(encoding="utf-8").startswith(
        "#!/data/data/com.termux/files/usr/bin/sh\n")
    assert os.access(path, os.X_OK)


class FakeBoot:
    """A fake Termux for the boot script: PREFIX and HOME in tmp, recording executables."""

    def __init__(self, tmp: Path) -> None:
        self.prefix = tmp / "usr"
        self.home = tmp / "home"
        self.bin = tmp / "bin"
        self.wake_record = tmp / "wake-lock.called"
        self.smsgw_record = tmp / "smsgw.argv"
        self.sourced_record = tmp / "start-services.sourced"
        (self.prefix / "bin").mkdir(parents=True)
        self.home.mkdir()
        write_exe(self.bin / "termux-wake-lock",
                  f'#!/bin/sh\necho called >> "{self.wake_record}"\n')
        write_exe(self.bin / "smsgw",
                  f'#!/bin/sh\necho "smsgw stdout $*"\necho "smsgw stderr" >&2\n'
                  f'printf "%s\\n" "$@" > "{self.smsgw_record}.tmp"\n'
                  f'mv "{self.smsgw_record}.tmp" "{self.smsgw_record}"\n')

    @property
    def env(self) -> dict[str, str]:
        return {**clean_environ(), "PREFIX": str(self.prefix), "HOME": str(self.home),
                "PATH": f"{self.bin}:/usr/bin:/bin"}

    @property
    def boot_log(self) -> Path:
        return self.home / ".local" / "share" / "smsgw" / "boot.log"

    def run(self) -> subprocess.CompletedProcess[str]:
        assert DASH is not None
        return subprocess.run([DASH, str(BOOT)], env=self.env, capture_output=True, text=True,
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)


@needs_dash
def test_boot_script_without_termux_services(tmp_path: Path) -> None:
    boot = FakeBoot(tmp_path)
    boot.boot_log.parent.mkdir(parents=True)
    boot.boot_log.write_text("an earlier boot\n", encoding="utf-8")
    proc = boot.run()
    assert proc.returncode == 0, proc.stderr
    assert boot.wake_record.read_text(encoding="utf-8") == "called\n"
    wait_for(boot.smsgw_record.exists, 10, "smsgw started in the background")
    assert boot.smsgw_record.read_text(encoding="utf-8") == "run\n"
    wait_for(lambda: "smsgw stderr" in boot.boot_log.read_text(encoding="utf-8"), 10,
             "smsgw's output in boot.log")
    log = boot.boot_log.read_text(encoding="utf-8")
    assert log.startswith("an earlier boot\n")  # appended, not replaced
    assert "smsgw stdout run" in log
    assert "smsgw" not in proc.stdout + proc.stderr  # its output went to the log only
    assert not boot.sourced_record.exists()


@needs_dash
def test_boot_script_with_termux_services(tmp_path: Path) -> None:
    boot = FakeBoot(tmp_path)
    start_services = boot.prefix / "etc" / "profile.d" / "start-services.sh"
    start_services.parent.mkdir(parents=True)
    # Not executable: it only works when sourced ($0 is then the boot script).
    start_services.write_text(f'echo "$0" > "{boot.sourced_record}"\n', encoding="utf-8")
    (boot.prefix / "var" / "service" / "smsgw").mkdir(parents=True)
    proc = boot.run()
    assert proc.returncode == 0, proc.stderr
    assert boot.wake_record.read_text(encoding="utf-8") == "called\n"
    assert boot.sourced_record.read_text(encoding="utf-8") == f"{BOOT}\n"
    assert not boot.boot_log.parent.exists()  # the background branch was not taken
    time.sleep(0.3)
    assert not boot.smsgw_record.exists()


@needs_dash
def test_boot_script_needs_both_runit_and_the_service(tmp_path: Path) -> None:
    # termux-services installed, but no smsgw service: start smsgw itself.
    boot = FakeBoot(tmp_path)
    start_services = boot.prefix / "etc" / "profile.d" / "start-services.sh"
    start_services.parent.mkdir(parents=True)
    start_services.write_text(f'echo "$0" > "{boot.sourced_record}"\n', encoding="utf-8")
    assert boot.run().returncode == 0
    wait_for(boot.smsgw_record.exists, 10, "smsgw started in the background")
    assert not boot.sourced_record.exists()


def test_runit_service_runs_smsgw_in_the_foreground(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    record = tmp_path / "argv"
    write_exe(bin_dir / "smsgw",
              f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\necho "to stderr" >&2\nexit 3\n')
    proc = subprocess.run([DASH or "sh", str(TERMUX_DIR / "service" / "smsgw" / "run")],
                          env={**clean_environ(), "PATH": f"{bin_dir}:/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 3  # exec'd: runit supervises smsgw itself
    assert record.read_text(encoding="utf-8") == "run\n"
    assert "to stderr" in proc.stdout and proc.stderr == ""  # svlogger reads stdout only

