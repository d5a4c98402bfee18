"""Backups of the state and restoring one, through the CLI as a user runs it."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import FakeTermux
from runner import SmsgwRunner, wait_for

from smsgw.config import Paths
from smsgw.daemon import AlreadyRunning, DaemonLock, daemon_running
from smsgw.errors import ExitCode
from smsgw.testserver import ReferenceWebapp

pytest_plugins = ["fakes.fixtures"]
pytestmark = pytest.mark.usefixtures("no_proxies")

DAY = 86400


class Smsgw(SmsgwRunner):
    """`smsgw` over the fake termux-* executables (first on PATH)."""

    def __init__(self, tmp: Path, fake: FakeTermux) -> None:
        super().__init__(tmp, {k: v for k, v in fake.env.items()
                               if k in ("PATH", "FAKE_TERMUX_DIR")})

    @property
    def backups(self) -> Path:
        return self.home / "state" / "backups"

    def names(self) -> list[str]:
        return sorted(p.name for p in self.backups.iterdir()) if self.backups.exists() else []

    def ok(self, *args: str, offset: float = 0) -> str:
        proc = self(*args, env={"SMSGW_TEST_CLOCK_OFFSET": str(offset)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        return proc.stdout

    def state_of(self, msg_id: str) -> str | None:
        return next((m["state"] for m in self.messages()["from_webapp"] if m["id"] == msg_id),
                    None)


@pytest.fixture
def smsgw(tmp_path: Path, fake_termux: FakeTermux) -> Smsgw:
    return Smsgw(tmp_path, fake_termux)


@pytest.fixture
def webapp(make_webapp: Callable[..., ReferenceWebapp]) -> ReferenceWebapp:
    return make_webapp()


def test_the_daemon_keeps_a_daily_backup_and_rotates_seven(smsgw: Smsgw,
                                                            webapp: ReferenceWebapp) -> None:
    smsgw.ok("config", "--url", webapp.url, "--no-check")
    assert smsgw.names() == []
    smsgw.ok("run", "--once")
    [first] = smsgw.names()
    assert stat.S_IMODE(smsgw.backups.stat().st_mode) == 0o700
    assert stat.S_IMODE((smsgw.backups / first).stat().st_mode) == 0o600
    # The copy is the state as it was: it loads, with the same tables.
    copy = json.loads((smsgw.backups / first).read_text(encoding="utf-8"))
    assert set(copy) >= {"meta"}
    # Once a day: another run the same day takes none.
    smsgw.ok("run", "--once")
    assert smsgw.names() == [first]
    # A day later, one more; after nine days the newest seven are kept.
    for day in range(1, 9):
        smsgw.ok("run", "--once", offset=day * DAY)
    names = smsgw.names()
    assert len(names) == 7, names
    assert first not in names
    listed = smsgw.ok("backup", "--list", offset=8 * DAY).splitlines()
    assert [Path(line.split()[0]).name for line in listed] == sorted(names, reverse=True)


def test_backup_restore_round_trip_keeps_the_damaged_state_aside(smsgw: Smsgw) -> None:
    smsgw.ok("send", "+15551234567", "kept in the backup")
    path = Path(smsgw.ok("backup").strip())
    assert path.parent == smsgw.backups and path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [msg] = smsgw.messages()["from_webapp"]

    smsgw.state_file.write_bytes(b'{"outgoing": garbage')
    proc = smsgw("status")
    assert proc.returncode == ExitCode.ERROR
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"smsgw: error: the state file {smsgw.state_file} is damaged")
    command = f"smsgw restore {path}"
    assert f"`{command}`" in line, line  # the newest backup and the exact command

    out = smsgw.ok(*command.split()[1:])
    assert f"restored the state from {path}" in out
    [aside] = [p for p in smsgw.state_file.parent.iterdir()
               if p.name.startswith("state.json.before-restore-")]
    assert aside.read_bytes() == b'{"outgoing": garbage'  # never deleted
    assert stat.S_IMODE(aside.stat().st_mode) == 0o600
    assert smsgw.messages()["from_webapp"] == [msg]


def test_restore_refuses_a_damaged_backup_and_changes_nothing(smsgw: Smsgw,
                                                              tmp_path: Path) -> None:
    smsgw.ok("send", "+15551234567", "current")
    before = smsgw.state_file.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"outgoing": {"1": {"id": 5}}}))
    proc = smsgw("restore", str(bad))
    assert proc.returncode == ExitCode.ERROR
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"smsgw: error: the backup {bad} is damaged: outgoing record 1"), line
    assert "nothing was changed" in line
    assert smsgw.state_file.read_bytes() == before


def test_restore_is_refused_while_the_daemon_runs(smsgw: Smsgw, webapp: ReferenceWebapp,
                                                 tmp_path: Path) -> None:
    smsgw.ok("config", "--url", webapp.url, "--no-check")
    path = Path(smsgw.ok("backup").strip())
    out = tmp_path / "run.log"
    with smsgw.daemon("--phone", "simulated", "--interval", "60", out=out):
        wait_for(lambda: smsgw.pid_file.exists(), 30, "the daemon to start")
        proc = smsgw("restore", str(path))
        assert proc.returncode == ExitCode.ALREADY_RUNNING, proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("smsgw: error: smsgw is running") and "stop it first" in line
    # Nothing was restored: a restore always keeps the state it replaces aside first.
    assert not [p for p in smsgw.state_file.parent.iterdir() if "before-restore" in p.name]


def _two_messages_one_rate_limited(smsgw: Smsgw, webapp: ReferenceWebapp
                                   ) -> tuple[str, str, Path]:
    """A sent (PENDING), B waiting UNSENT for the rate budget, and a backup of that."""
    smsgw.ok("config", "--url", webapp.url, "--no-check", "--max-per-minute", "1")
    a = webapp.queue("+254700000001", "first")
    b = webapp.queue("+254700000002", "second")
    smsgw.ok("run", "--once")
    assert (smsgw.state_of(a), smsgw.state_of(b)) == ("PENDING", "UNSENT")
    return a, b, Path(smsgw.ok("backup").strip())


def test_no_second_send_after_restoring_a_backup_older_than_the_archive(
        smsgw: Smsgw, webapp: ReferenceWebapp, fake_termux: FakeTermux) -> None:
    a, b, path = _two_messages_one_rate_limited(smsgw, webapp)
    # A minute later (the phone's clock too): A is confirmed, B is sent; then B is
    # confirmed, and both are archived.
    fake_termux.set_mode(clock_offset=70)
    smsgw.ok("run", "--once", offset=70)
    smsgw.ok("run", "--once", offset=80)
    assert (smsgw.state_of(a), smsgw.state_of(b)) == ("SENT", "SENT")
    assert not json.loads(smsgw.state_file.read_text(encoding="utf-8")).get("outgoing")
    assert fake_termux.call_count("termux-sms-send") == 2

    _, before = smsgw.status_json()
    assert before["counters"]["all_time"]["sent"] == 2
    out = smsgw.ok("restore", str(path), offset=90)
    assert "2 message(s) finished since the backup" in out, out
    # the bookkeeping of the current state is kept: the counts do not go back to the backup's
    _, after = smsgw.status_json()
    assert after["counters"] == before["counters"], (before["counters"], after["counters"])
    smsgw.ok("run", "--once", offset=140)
    smsgw.ok("run", "--once", offset=200)
    # The phone sent each once; the webapp heard SENT last, and never less after it.
    sends = sorted(c["argv"][1] for c in fake_termux.calls("termux-sms-send"))
    assert sends == ["+254700000001", "+254700000002"], sends
    assert [r["body"] for r in fake_termux.rows("sent")] == ["first", "second"]
    statuses = webapp.statuses()
    for msg_id in (a, b):
        seen = statuses[msg_id]
        assert "SENT" in seen, seen
        assert set(seen[seen.index("SENT"):]) == {"SENT"}, seen
        assert smsgw.state_of(msg_id) == "SENT"


def test_restore_keeps_a_send_made_since_the_backup_awaiting_the_phone(
        smsgw: Smsgw, webapp: ReferenceWebapp, fake_termux: FakeTermux) -> None:
    a, b, path = _two_messages_one_rate_limited(smsgw, webapp)
    fake_termux.set_mode(no_row=1)  # B's send leaves no record yet: it stays PENDING
    smsgw.ok("run", "--once", offset=70)
    assert smsgw.state_of(b) == "PENDING"

    out = smsgw.ok("restore", str(path), offset=80)
    assert "taken from the previous state" in out, out
    assert smsgw.state_of(b) == "PENDING"  # not UNSENT, as it was in the backup
    fake_termux.clear_modes()
    smsgw.ok("run", "--once", offset=140)
    sends = [c["argv"][1] for c in fake_termux.calls("termux-sms-send")]
    assert sends.count("+254700000002") == 1, sends


def test_backup_of_a_damaged_state_is_refused(smsgw: Smsgw) -> None:
    smsgw.ok("send", "+15551234567", "x")
    smsgw.state_file.write_text('{"outgoing": {"1": {"id": 5}}}')
    proc = smsgw("backup")
    assert proc.returncode == ExitCode.ERROR
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("smsgw: error: the state file") and "damaged" in line, line
    assert smsgw.names() == []


def test_damaged_state_without_backup_says_so(smsgw: Smsgw) -> None:
    smsgw.ok("send", "+15551234567", "x")
    smsgw.state_file.write_text("[]")
    proc = smsgw("status")
    assert "no backup exists yet" in proc.stderr, proc.stderr
    assert subprocess.list2cmdline(["smsgw", "restore"]) not in proc.stderr


def test_an_sms_forwarded_since_the_backup_is_not_forwarded_again(
        smsgw: Smsgw, webapp: ReferenceWebapp, fake_termux: FakeTermux) -> None:
    smsgw.ok("config", "--url", webapp.url, "--no-check")
    smsgw.ok("run", "--once")  # the inbox is read once: its position is set
    path = Path(smsgw.ok("backup").strip())
    fake_termux.receive("+254711000001", "after the backup")
    smsgw.ok("run", "--once")
    assert [m["content"] for m in webapp.received()] == ["after the backup"]

    smsgw.state_file.write_text("{damaged")  # restored from the backup alone
    smsgw.ok("restore", str(path))
    smsgw.ok("run", "--once")  # reads the inbox again from the backup's older position
    smsgw.ok("run", "--once")
    assert [m["content"] for m in webapp.received()] == ["after the backup"]
    fake_termux.receive("+254711000002", "after the restore")
    smsgw.ok("run", "--once")
    assert [m["content"] for m in webapp.received()] == ["after the backup",
                                                         "after the restore"]


def test_an_sms_stored_since_the_backup_and_not_yet_forwarded_survives_a_restore(
        smsgw: Smsgw, webapp: ReferenceWebapp, fake_termux: FakeTermux) -> None:
    smsgw.ok("config", "--url", webapp.url, "--no-check")
    smsgw.ok("run", "--once")  # the inbox is read once: its position is set
    path = Path(smsgw.ok("backup").strip())
    fake_termux.receive("+254711000001", "stored, not yet forwarded")
    webapp.set_fault("status", count=10)  # the webapp is down: the SMS waits in the state
    proc = smsgw("run", "--once")
    assert proc.returncode == ExitCode.WEBAPP_FAILING, proc.stderr
    assert webapp.received() == []
    webapp.clear_faults()

    out = smsgw.ok("restore", str(path))  # the current state still loads
    assert "1 received SMS" in out, out
    smsgw.ok("run", "--once")
    smsgw.ok("run", "--once")
    assert [m["content"] for m in webapp.received()] == ["stored, not yet forwarded"]


def test_restore_keeps_the_statuses_not_yet_posted_and_posts_none_older(
        smsgw: Smsgw, webapp: ReferenceWebapp, fake_termux: FakeTermux) -> None:
    rank = {"UNSENT": 0, "PENDING": 1, "SENT": 2, "DELIVERED": 3, "FAILED": 4}
    smsgw.ok("config", "--url", webapp.url, "--no-check", "--max-per-minute", "1")
    a = webapp.queue("+254700000001", "first")
    b = webapp.queue("+254700000002", "second")
    c = webapp.queue("+254700000003", "third")
    smsgw.ok("run", "--once")  # A is sent; B and C wait for the rate budget
    # B is cancelled and retried at once: its UNSENT is queued for the webapp, and the
    # backup holds it queued.
    smsgw.ok("cancel", b)
    smsgw.ok("retry", b)
    path = Path(smsgw.ok("backup").strip())

    fake_termux.set_mode(no_row=1, clock_offset=70)  # B and C stay awaiting the phone
    smsgw.ok("run", "--once", offset=70)  # A SENT; B sent
    fake_termux.set_mode(clock_offset=140)
    smsgw.ok("run", "--once", offset=140)  # the webapp hears B PENDING; C sent
    assert webapp.status_of(b) == "PENDING"
    assert (smsgw.state_of(b), smsgw.state_of(c)) == ("PENDING", "PENDING")
    assert webapp.status_of(c) == "UNSENT"  # C's PENDING is queued, not posted yet

    out = smsgw.ok("restore", str(path), offset=150)
    assert "1 status update(s)" in out, out
    smsgw.ok("run", "--once", offset=160)
    smsgw.ok("run", "--once", offset=170)
    statuses = webapp.statuses()
    assert statuses[c][-1] == "PENDING", statuses[c]  # posted after the restore
    assert statuses[b][-1] == "PENDING", statuses[b]
    assert statuses[a][-1] == "SENT", statuses[a]
    for msg_id in (a, b, c):  # never an older status after a newer one
        seen = [rank[s] for s in statuses[msg_id]]
        assert seen == sorted(seen), (msg_id, statuses[msg_id])
    sends = sorted(call["argv"][1] for call in fake_termux.calls("termux-sms-send"))
    assert sends == ["+254700000001", "+254700000002", "+254700000003"], sends


def test_backup_and_restore_are_in_the_event_log(smsgw: Smsgw) -> None:
    smsgw.ok("send", "+15551234567", "x")
    path = Path(smsgw.ok("backup").strip())
    smsgw.ok("restore", str(path))
    log = smsgw.ok("log")
    assert f"state backed up to {path}" in log, log
    assert f"state restored from {path}" in log, log


def test_backup_and_restore_work_with_damaged_settings(smsgw: Smsgw) -> None:
    smsgw.ok("send", "+15551234567", "x")
    smsgw.config_file.write_text("{damaged")  # a state to save is no reason to fix it first
    path = Path(smsgw.ok("backup").strip())
    assert "restored the state" in smsgw.ok("restore", str(path))


def test_no_daemon_starts_while_a_restore_runs(smsgw: Smsgw, tmp_path: Path) -> None:
    smsgw.ok("send", "+15551234567", "x")
    path = Path(smsgw.ok("backup").strip())
    paths = Paths(config_dir=smsgw.home, data_dir=smsgw.home)
    # Hold the state lock, as a unit of work does: the restore waits for it, mid-way.
    fd = os.open(smsgw.home / "state" / "state.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    restore = smsgw.popen("restore", str(path), out=tmp_path / "restore.out")
    try:
        wait_for(lambda: daemon_running(paths) is not None, 30,
                 "the restore to hold the daemon lock")
        with pytest.raises(AlreadyRunning):  # what `smsgw run` meets meanwhile
            DaemonLock(paths).acquire({"pid": os.getpid()})
        assert not smsgw.pid_file.exists()  # no pid for `smsgw hook` to signal
    finally:
        os.close(fd)
        code = restore.wait(timeout=60)
    assert code == 0, (tmp_path / "restore.out").read_text()
    assert daemon_running(paths) is None


def test_restore_over_a_state_that_loads_never_brings_back_a_message_the_archive_forgot(
        smsgw: Smsgw, webapp: ReferenceWebapp, fake_termux: FakeTermux) -> None:
    a, b, path = _two_messages_one_rate_limited(smsgw, webapp)
    settings = json.loads(smsgw.config_file.read_text(encoding="utf-8"))
    settings["retention_days"] = 1
    smsgw.config_file.write_text(json.dumps(settings), encoding="utf-8")
    fake_termux.set_mode(clock_offset=70)
    smsgw.ok("run", "--once", offset=70)
    smsgw.ok("run", "--once", offset=80)
    assert (smsgw.state_of(a), smsgw.state_of(b)) == ("SENT", "SENT")
    # Days pass (the gateway sees each): the archive's day file of A and B is dropped.
    for day in range(1, 5):
        fake_termux.set_mode(clock_offset=day * DAY)
        smsgw.ok("run", "--once", offset=day * DAY)
    archive = smsgw.home / "state" / "archive"
    assert not any(a in p.read_text(encoding="utf-8") for p in archive.iterdir()
                   if p.is_file()), "the archive still knows A: the test proves nothing"
    smsgw.ok("restore", str(path), offset=4 * DAY + 10)
    # The backup had A PENDING and B UNSENT; the current state (which loads) has neither:
    # they left for the archive, so they stay gone and nothing is sent again.
    assert not json.loads(smsgw.state_file.read_text(encoding="utf-8")).get("outgoing")
    smsgw.ok("run", "--once", offset=4 * DAY + 20)
    assert fake_termux.call_count("termux-sms-send") == 2
