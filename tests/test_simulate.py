"""Trying smsgw without a phone: `smsgw run --phone simulated` over a simulated phone kept in
the state folder, `smsgw simulate ...` driving it from another process, and the README's
walkthrough ("Try it without a phone") run command by command as a newcomer types it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from runner import REPO, TIMEOUT, SmsgwRunner, wait_for

from smsgw.config import Settings
from smsgw.gateway import UNKNOWN_OUTCOME, Gateway
from smsgw.phone.simulated import FILE_NAME, SimulatedPhone
from smsgw.store import Store
from smsgw.testserver import ReferenceWebapp
from smsgw.webapp import WebappClient

TRY_HOME = "/tmp/smsgw-try"
TRY_PORT = "127.0.0.1:8585"
QUEUE = "http://127.0.0.1:8585/api/queue"

# The README's walkthrough, command by command: test_readme_walkthrough runs these in this
# order, and test_the_readme_shows_exactly_the_walkthrough_this_file_runs keeps the two equal.
WALKTHROUGH = [
    ["smsgw", "testserver"],
    ["export", f"SMSGW_HOME={TRY_HOME}"],
    ["smsgw", "config", "--url", "http://127.0.0.1:8585/smsgateway/"],
    ["smsgw", "run", "--phone", "simulated"],
    ["export", f"SMSGW_HOME={TRY_HOME}"],
    ["curl", "-s", "-X", "POST", QUEUE, "-d",
     '{"to": "+15550002222", "content": "hello from the webapp"}'],
    ["smsgw", "simulate", "receive", "+15550001111", "hello"],
    ["smsgw", "status"],
    ["smsgw", "messages"],
    ["smsgw", "simulate", "show"],
    ["curl", "-s", "http://127.0.0.1:8585/api/state"],
    ["smsgw", "simulate", "fail-next"],
    ["curl", "-s", "-X", "POST", QUEUE, "-d", '{"to": "+15550002222", "content": "try again"}'],
    ["smsgw", "hook"],
    ["smsgw", "messages"],
    ["smsgw", "simulate", "radio", "off"],
    ["smsgw", "simulate", "radio", "on"],
]


def readme_commands() -> list[list[str]]:
    """The commands of the README's "Try it without a phone" section, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "\n## Try it without a phone\n" in text
    section = text.split("\n## Try it without a phone\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def test_the_readme_shows_exactly_the_walkthrough_this_file_runs() -> None:
    assert readme_commands() == WALKTHROUGH


def test_the_try_section_follows_the_quick_start_which_keeps_two_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.M)
    quick = headings.index("Quick start (any computer, no phone needed)")
    assert headings[quick + 1] == "Try it without a phone"
    section = text.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"```sh\n(.*?)```", section, re.S)) == 2


class Walk:
    """Runs the walkthrough's commands as the user does, each in its own process, with this
    test's SMSGW_HOME and the testserver's real port in place of /tmp/smsgw-try and 8585."""

    def __init__(self, tmp: Path, stack: contextlib.ExitStack) -> None:
        self.tmp = tmp
        self.stack = stack
        self.sm = SmsgwRunner(tmp)
        self.port: int | None = None

    def _args(self, argv: list[str]) -> list[str]:
        assert self.port is not None, "the testserver comes first"
        return [a.replace(TRY_PORT, f"127.0.0.1:{self.port}") for a in argv]

    def do(self, argv: list[str]) -> subprocess.CompletedProcess[str] | None:
        """Run one command of the walkthrough; a long-running one is left in the background."""
        name, args = argv[0], argv[1:]
        if name == "export":
            assert args == [f"SMSGW_HOME={TRY_HOME}"]  # this test's own home stands for it
            return None
        if name == "curl":
            proc = subprocess.run(self._args(argv), env=self.sm.environ(), capture_output=True,
                                  text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
            assert proc.returncode == 0, proc.stderr
            return proc
        assert name == "smsgw"
        if args == ["testserver"]:
            self._testserver()
            return None
        if args[0] == "run" and "--once" not in args:
            self.stack.enter_context(self.sm.daemon(*args[1:], out=self.tmp / "run.out"))
            wait_for(lambda: self.sm.status_json()[1]["daemon"]["running"], TIMEOUT,
                     "the daemon to start")
            return None
        proc = self.sm(*self._args(argv)[1:])
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        return proc

    def _testserver(self) -> None:
        # Port 0 rather than 8585: tests run side by side. The endpoint printed first says
        # which port the system gave, and stands for 8585 in the commands after it.
        out = self.tmp / "testserver.out"
        proc = self.sm.popen("testserver", "--port", "0", out=out)

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail("the testserver did not stop on Ctrl-C")

        self.stack.callback(stop)
        line = wait_for(lambda: re.search(r"listening on http://127\.0\.0\.1:(\d+)/smsgateway/",
                                          out.read_text(encoding="utf-8")), TIMEOUT,
                        "the testserver's endpoint")
        self.port = int(line.group(1))


def test_readme_walkthrough(tmp_path: Path) -> None:
    steps = iter(readme_commands())
    with contextlib.ExitStack() as stack:
        walk = Walk(tmp_path, stack)
        sm = walk.sm
        walk.do(next(steps))  # smsgw testserver
        walk.do(next(steps))  # export SMSGW_HOME
        config = walk.do(next(steps))
        assert config is not None and "answers as a medic-gateway webapp" in config.stdout
        walk.do(next(steps))  # smsgw run --phone simulated
        walk.do(next(steps))  # export SMSGW_HOME (third terminal)
        queued = walk.do(next(steps))
        assert queued is not None
        msg_id = json.loads(queued.stdout)["id"]
        received = walk.do(next(steps))
        assert received is not None
        assert "received an SMS from +15550001111" in received.stdout
        assert "woke smsgw" in received.stdout

        def both_done() -> bool:
            listing = sm.messages()
            return ([(m["id"], m["state"]) for m in listing["from_webapp"]] == [(msg_id, "SENT")]
                    and [(i["from_"], i["content"], i["state"]) for i in listing["to_webapp"]]
                    == [("+15550001111", "hello", "FORWARDED")])

        wait_for(both_done, TIMEOUT, "the message sent and the SMS forwarded")

        status = walk.do(next(steps))
        assert status is not None and "running" in status.stdout and "healthy" in status.stdout
        messages = walk.do(next(steps))
        assert messages is not None
        assert re.search(rf"{msg_id}\s+to \+15550002222\s+SENT", messages.stdout)
        # `smsgw messages` prints the text on its own line, after the times
        assert re.search(r"from \+15550001111\s+FORWARDED\n.*\n\s+'hello'\n", messages.stdout)
        show = walk.do(next(steps))
        assert show is not None
        assert re.search(r"#1 .* inbox\s+from \+15550001111\s+'hello'", show.stdout)
        assert re.search(r"#2 .* sent\s+to \+15550002222\s+'hello from the webapp'",
                         show.stdout)
        state = walk.do(next(steps))
        assert state is not None
        snapshot = json.loads(state.stdout)
        assert [(m["from"], m["content"]) for m in snapshot["received"]] == [
            ("+15550001111", "hello")]
        wait_for(lambda: _statuses(walk, msg_id)[-1:] == ["SENT"], TIMEOUT,
                 "the webapp to hear SENT")
        assert _statuses(walk, msg_id) == ["UNSENT", "PENDING", "SENT"]

        # sends that fail as on a phone without service
        fail = walk.do(next(steps))
        assert fail is not None and "next send" in fail.stdout
        again = walk.do(next(steps))
        assert again is not None
        again_id = json.loads(again.stdout)["id"]
        hook = walk.do(next(steps))
        assert hook is not None and "woke smsgw" in hook.stdout

        def failed_once() -> dict[str, Any] | None:
            found = [m for m in sm.messages()["from_webapp"] if m["id"] == again_id]
            return found[0] if found and found[0]["retries"] == 1 else None

        retried = wait_for(failed_once, TIMEOUT, "the failed try recorded for retry")
        assert retried["state"] == "UNSENT" and retried["due"]
        messages = walk.do(next(steps))
        assert messages is not None
        assert re.search(rf"{again_id}\s+to \+15550002222\s+UNSENT.*retries 1", messages.stdout)
        rows = _rows(sm)
        assert [(r["type"], r["body"]) for r in rows["shown"]][-1] == ("failed", "try again")
        off = walk.do(next(steps))
        assert off is not None and _rows(sm)["radio"] == "off"
        on = walk.do(next(steps))
        assert on is not None and _rows(sm)["radio"] == "on"
        assert next(steps, None) is None


def _statuses(walk: Walk, msg_id: str) -> list[str]:
    state = walk.do(["curl", "-s", "http://127.0.0.1:8585/api/state"])
    assert state is not None
    return json.loads(state.stdout)["statuses"].get(msg_id, [])


def _rows(sm: SmsgwRunner) -> dict[str, Any]:
    proc = sm("simulate", "show", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- the simulated phone of `smsgw run`, across restarts ------------------------------------

@pytest.fixture
def sm(tmp_path: Path) -> SmsgwRunner:
    return SmsgwRunner(tmp_path)


def test_the_phone_keeps_its_sms_across_restarts(sm: SmsgwRunner, make_webapp: Any) -> None:
    webapp: ReferenceWebapp = make_webapp()
    assert sm("config", "--url", webapp.url).returncode == 0
    msg_id = webapp.queue("+15550002222", "before the restart")
    first = sm("run", "--phone", "simulated", "--once")
    assert first.returncode == 0, first.stderr
    # handed to the phone, its record not read yet: PENDING when smsgw stops
    assert [m["state"] for m in sm.messages()["from_webapp"]] == ["PENDING"]
    # An SMS arrives while smsgw is stopped: the next start forwards it, once.
    proc = sm("simulate", "receive", "+1 555 000 1111", "while you were out")
    assert proc.returncode == 0, proc.stderr
    assert "no daemon is running" in proc.stdout
    # smsgw starts again a minute later (its clock moved on, as a phone's does: a sent row
    # is taken as final once it is a few seconds old)
    later = {"SMSGW_TEST_CLOCK_OFFSET": "60"}
    second = sm("run", "--phone", "simulated", "--once", env=later)
    assert second.returncode == 0, second.stderr
    # the phone's sent row is still there after the restart: SENT, not "outcome unknown"
    assert [m["state"] for m in sm.messages()["from_webapp"]] == ["SENT"]
    assert [(m["from"], m["content"]) for m in webapp.received()] == [
        ("+15550001111", "while you were out")]
    rows = _rows(sm)["shown"]
    assert [(r["_id"], r["type"], r["body"]) for r in rows] == [
        (1, "sent", "before the restart"), (2, "inbox", "while you were out")]
    third = sm("run", "--phone", "simulated", "--once", env=later)
    assert third.returncode == 0, third.stderr
    assert webapp.statuses()[msg_id] == ["UNSENT", "PENDING", "SENT"]
    assert len(webapp.received()) == 1
    phone_file = sm.home / "state" / FILE_NAME
    assert stat.S_IMODE(phone_file.stat().st_mode) == 0o600


def test_fail_next_and_radio_off_fail_sends_as_android_records_them(
        sm: SmsgwRunner, make_webapp: Any) -> None:
    webapp: ReferenceWebapp = make_webapp()
    assert sm("config", "--url", webapp.url).returncode == 0
    assert sm("simulate", "fail-next", "2").returncode == 0
    assert _rows(sm)["fail_next"] == 2
    assert sm("simulate", "fail-next", "0").returncode == 0
    assert _rows(sm)["fail_next"] == 0
    assert sm("simulate", "radio", "off").returncode == 0
    ids = [webapp.queue("+15550002222", f"text {i}") for i in range(2)]
    proc = sm("run", "--phone", "simulated", "--once")
    assert proc.returncode == 0, proc.stderr
    assert [(r["type"], r["body"]) for r in _rows(sm)["shown"]] == [
        ("failed", "text 0"), ("failed", "text 1")]
    out = sm.messages()["from_webapp"]
    assert [(m["state"], m["retries"]) for m in out] == [("UNSENT", 1), ("UNSENT", 1)]
    assert "radio off" in sm.log_file.read_text(encoding="utf-8")
    assert all(webapp.status_of(i) != "SENT" for i in ids)


def test_show_lists_the_newest_rows_last(sm: SmsgwRunner) -> None:
    empty = sm("simulate", "show")
    assert empty.returncode == 0, empty.stderr
    assert "no SMS yet" in empty.stdout
    for i in range(5):
        assert sm("simulate", "receive", "+15550001111", f"text {i}").returncode == 0
    proc = sm("simulate", "show", "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "radio on" in lines[0]
    assert "3 older rows" in lines[1]
    assert ["'text 3'" in lines[2], "'text 4'" in lines[3]] == [True, True]


@pytest.mark.parametrize(("args", "needle"), [
    (["simulate", "receive", "MPESA", "hi"], "not a phone number: 'MPESA'"),
    (["simulate", "receive", "+1555;rm", "hi"], "not a phone number"),
    (["simulate", "receive", "", "hi"], "not a phone number"),
])
def test_a_sender_that_is_not_a_number_is_refused_in_one_line(
        sm: SmsgwRunner, args: list[str], needle: str) -> None:
    proc = sm(*args)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("smsgw: error: ") and needle in proc.stderr
    assert "e.g. +15550001111" in proc.stderr
    assert not (sm.home / "state" / FILE_NAME).exists() or _rows(sm)["rows"] == 0


@pytest.mark.parametrize("content", ["{", '{"rows": 3}', '{"rows": [{"_id": "x"}]}', "[]"])
def test_a_damaged_phone_file_is_refused_and_kept(sm: SmsgwRunner, content: str) -> None:
    state = sm.home / "state"
    state.mkdir(parents=True, mode=0o700)
    sm.home.chmod(0o700)
    (state / FILE_NAME).write_text(content, encoding="utf-8")
    (state / FILE_NAME).chmod(0o600)
    for args in (["simulate", "show"], ["simulate", "receive", "+15550001111", "x"],
                 ["run", "--phone", "simulated", "--once", "--url", "http://127.0.0.1:9/"]):
        proc = sm(*args)
        assert proc.returncode == 1, (args, proc.stdout)
        assert proc.stderr.startswith("smsgw: error: the simulated phone's file ")
        assert "damaged" in proc.stderr and "move it away" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert (state / FILE_NAME).read_text(encoding="utf-8") == content


def test_a_linked_phone_file_is_refused(sm: SmsgwRunner, tmp_path: Path) -> None:
    state = sm.home / "state"
    state.mkdir(parents=True, mode=0o700)
    sm.home.chmod(0o700)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"rows": []}', encoding="utf-8")
    (state / FILE_NAME).symlink_to(elsewhere)
    proc = sm("simulate", "receive", "+15550001111", "x")
    assert proc.returncode == 1
    assert "symbolic link" in proc.stderr
    assert elsewhere.read_text(encoding="utf-8") == '{"rows": []}'


def test_concurrent_processes_lose_no_sms(sm: SmsgwRunner) -> None:
    """Each `smsgw simulate receive` reads and writes the file under the lock, so twelve of
    them at once keep all twelve SMS (without the lock, one write would undo another)."""
    procs = [subprocess.Popen([*sm.argv, "simulate", "receive", "+15550001111", f"sms {n}"],
                              cwd=REPO, env=sm.environ(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
             for n in range(12)]
    for proc in procs:
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
    rows = _rows(sm)["shown"]
    assert [r["_id"] for r in rows] == list(range(1, 13))
    assert sorted(r["body"] for r in rows) == sorted(f"sms {n}" for n in range(12))


def test_testserver_help_documents_the_control_api_and_its_curl_example_works(
        sm: SmsgwRunner, make_webapp: Any) -> None:
    from smsgw.testserver import CONTROL_PATHS, FAULT_KINDS

    proc = sm("testserver", "--help")
    assert proc.returncode == 0, proc.stderr
    for path in CONTROL_PATHS:
        assert path in proc.stdout
    for kind in FAULT_KINDS:
        assert kind in proc.stdout
    example = re.search(r"^\s*(curl -s -X POST .*?)$\n^\s*(-d .*)$", proc.stdout, re.M)
    assert example, proc.stdout
    webapp: ReferenceWebapp = make_webapp()
    argv = shlex.split(example.group(1).rstrip(" \\") + " " + example.group(2))
    argv = [a.replace(TRY_PORT, f"127.0.0.1:{webapp.port}") for a in argv]
    curl = subprocess.run(argv, env=sm.environ(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert curl.returncode == 0, curl.stderr
    msg_id = json.loads(curl.stdout)["id"]
    assert webapp.snapshot()["queued"][0]["id"] == msg_id
    assert webapp.snapshot()["queued"][0]["to"] == "+15550002222"


# --- in process: a PENDING message after a crash -------------------------------------------

class Crash(BaseException):
    """smsgw dies here (no `except Exception` in smsgw catches it)."""


class DyingPhone(SimulatedPhone):
    """Takes the send, then smsgw dies before it reads the phone's record of it."""

    def read_outgoing(self, since: datetime) -> Any:
        raise Crash


@pytest.mark.parametrize("kept", [True, False])
def test_a_pending_message_is_sent_after_a_restart_when_the_phone_is_kept(
        tmp_path: Path, make_webapp: Callable[..., ReferenceWebapp], kept: bool) -> None:
    """The file-backed phone still has the sent row after the restart: SENT. The in-memory
    phone (kept=False, what `smsgw run --phone simulated` had before) has lost it: after the
    confirm timeout the message is FAILED with an unknown outcome."""
    now = [datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)]

    def clock() -> datetime:
        return now[0]

    webapp = make_webapp()
    file = tmp_path / "state" / FILE_NAME
    settings = Settings(url=webapp.url, confirm_timeout=60)
    store = Store(tmp_path / "state")
    with contextlib.closing(WebappClient(webapp.url)) as client:
        msg_id = webapp.queue("+15550002222", "in flight")
        dying = DyingPhone(clock, file=file)
        with pytest.raises(Crash):
            Gateway(store, client, dying, settings, clock).cycle()
        assert [(m.id, m.state.value) for m in Store(tmp_path / "state").messages(
            now[0], 10, None).outgoing] == [(msg_id, "PENDING")]
        assert len(dying.sends) == 1
        phone = SimulatedPhone(clock, file=file if kept else None)
        gateway = Gateway(Store(tmp_path / "state"), client, phone, settings, clock)
        for _ in range(12):
            now[0] += timedelta(seconds=10)
            gateway.cycle()
    final = [u for u in webapp.updates() if u["id"] == msg_id][-1]
    if kept:
        assert final["status"] == "SENT"
    else:
        assert (final["status"], final["reason"]) == ("FAILED", UNKNOWN_OUTCOME)
    assert os.path.exists(file)


@pytest.fixture
def phone_file(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    yield folder / FILE_NAME


def test_a_second_instance_sees_every_change_at_once(phone_file: Path) -> None:
    daemon_side = SimulatedPhone(file=phone_file)
    world = SimulatedPhone(file=phone_file)
    _, position = daemon_side.read_inbox(None)
    world.receive("+15550001111", "hi")
    world.fail_next_sends(1)
    rows, position = daemon_side.read_inbox(position)
    assert [r.body for r in rows] == ["hi"]
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    daemon_side.send("+15550002222", "first")
    daemon_side.send("+15550002222", "second")
    assert [(r.kind, r.body) for r in world.read_outgoing(since)] == [
        ("failed", "first"), ("sent", "second")]
    world.radio_off = True
    assert daemon_side.diagnose() == "radio off"
    assert stat.S_IMODE(phone_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in phone_file.parent.iterdir()) == [
        FILE_NAME, FILE_NAME + ".lock"]


def test_receive_says_when_the_running_daemon_uses_the_termux_phone(
        tmp_path: Path, make_webapp: Any) -> None:
    from fakes import FakeTermux

    fake = FakeTermux(tmp_path / "fake-termux")
    sm = SmsgwRunner(tmp_path, {k: v for k, v in fake.env.items()
                                if k in ("PATH", "FAKE_TERMUX_DIR")})
    webapp: ReferenceWebapp = make_webapp()
    assert sm("config", "--url", webapp.url, "--no-check").returncode == 0
    with sm.daemon(out=tmp_path / "run.log"):
        wait_for(lambda: sm.pid_file.exists(), TIMEOUT, "the daemon to start")
        proc = sm("simulate", "receive", "+15550001111", "nobody reads this")
        assert proc.returncode == 0, proc.stderr
        assert "uses the termux phone, not this one" in proc.stdout, proc.stdout
        assert "woke smsgw" not in proc.stdout
