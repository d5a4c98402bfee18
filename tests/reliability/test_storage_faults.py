"""Storage faults: a read-only state folder, a full disk, a truncated state file, a state file
from a future version.

Each must give a clear error (a StateError; for the CLI one line without a traceback), leave
the old data byte-for-byte intact, leave nothing half-written (no temp file, no torn archive
line), and never stop the daemon; once the fault clears, the next cycle works and nothing
queued is lost or sent twice.

The OS error mock: as root, `chmod a-w` does not stop writes and no test may fill a real
disk, so `DiskFault` patches the os-level calls smsgw writes through (os.open, os.write,
os.fdopen, os.replace, os.rename, os.unlink, os.mkdir, os.chmod, and open() in a write mode)
for paths under one folder. "readonly" makes them fail with EROFS as a read-only mount
does: opening for writing, creating, renaming, removing and chmod all fail, reading works.
"full" emulates a disk with `free` bytes left: writes take what fits (a short write, as
POSIX write() does when the disk fills) and then fail with ENOSPC; creating an empty file
still works (there are inodes left).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock

from smsgw.cli import main
from smsgw.config import Paths, Settings
from smsgw.daemon import Daemon
from smsgw.errors import StateError
from smsgw.gateway import CycleReport, Gateway
from smsgw.phone.simulated import SimulatedPhone
from smsgw.store import Store
from smsgw.testserver import ReferenceWebapp
from smsgw.webapp import WebappClient

pytestmark = pytest.mark.usefixtures("no_proxies")

NUMBER = "+254700000001"
SENDER = "+254711000001"
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

_real = {name: getattr(os, name) for name in
         ("open", "write", "fdopen", "replace", "rename", "unlink", "remove", "mkdir", "chmod")}
_real_open = builtins.open


# --- the OS error mock ---------------------------------------------------------------------

class _FullFile:
    """What os.fdopen returns on a full disk: writes take what fits, then ENOSPC."""

    def __init__(self, fault: DiskFault, fh: Any) -> None:
        self._fault = fault
        self._fh = fh

    def write(self, text: str | bytes) -> int:
        data = text.encode("utf-8") if isinstance(text, str) else text
        self._fh.flush()
        n = self._fault.take(len(data))
        if n:
            _real["write"](self._fh.fileno(), data[:n])
        if n < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


class DiskFault:
    """Makes os calls on paths under `folder` fail as a read-only mount or a full disk would."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = os.path.realpath(folder)
        self.mode: str | None = None  # None, "readonly" or "full"
        self.free = 0
        self.hits: list[str] = []  # every call that failed, for the test's messages
        mp = monkeypatch
        mp.setattr(os, "open", self._open)
        mp.setattr(os, "write", self._write)
        mp.setattr(os, "fdopen", self._fdopen)
        for name in ("replace", "rename"):
            mp.setattr(os, name, self._two_paths(name))
        for name in ("unlink", "remove", "chmod"):
            mp.setattr(os, name, self._one_path(name))
        mp.setattr(os, "mkdir", self._mkdir)
        mp.setattr(builtins, "open", self._builtin_open)
        mp.setattr(io, "open", self._builtin_open)

    # switches
    def readonly(self) -> None:
        self.mode = "readonly"

    def full(self, free: int = 0) -> None:
        self.mode, self.free = "full", free

    def clear(self) -> None:
        self.mode = None

    # helpers
    def _under(self, path: Any) -> bool:
        if isinstance(path, int):
            try:
                path = os.readlink(f"/proc/self/fd/{path}")
            except OSError:
                return False
        try:
            real = os.path.realpath(os.fspath(path))
        except TypeError:
            return False
        return real == self.folder or real.startswith(self.folder + os.sep)

    def _fail(self, code: int, what: str, path: Any = None) -> OSError:
        self.hits.append(f"{what} {path}")
        if path is None:
            return OSError(code, os.strerror(code))
        return OSError(code, os.strerror(code), os.fspath(path))

    def take(self, wanted: int) -> int:
        n = min(wanted, self.free)
        self.free -= n
        return n

    # patched calls
    def _open(self, path: Any, flags: int, mode: int = 0o777, *args: Any, **kw: Any) -> int:
        if self.mode == "readonly" and flags & WRITE_FLAGS and self._under(path):
            raise self._fail(errno.EROFS, "open", path)
        return _real["open"](path, flags, mode, *args, **kw)

    def _write(self, fd: int, data: bytes) -> int:
        if self.mode == "full" and self._under(fd):
            n = self.take(len(data))
            if n == 0:
                raise self._fail(errno.ENOSPC, "write")
            return _real["write"](fd, bytes(data[:n]))
        return _real["write"](fd, data)

    def _fdopen(self, fd: int, *args: Any, **kw: Any) -> Any:
        fh = _real["fdopen"](fd, *args, **kw)
        if self.mode == "full" and self._under(fd):
            return _FullFile(self, fh)
        return fh

    def _two_paths(self, name: str) -> Any:
        def call(src: Any, dst: Any, *args: Any, **kw: Any) -> Any:
            if self.mode == "readonly" and (self._under(src) or self._under(dst)):
                raise self._fail(errno.EROFS, name, dst)
            return _real[name](src, dst, *args, **kw)
        return call

    def _one_path(self, name: str) -> Any:
        def call(path: Any, *args: Any, **kw: Any) -> Any:
            if self.mode == "readonly" and self._under(path):
                raise self._fail(errno.EROFS, name, path)
            return _real[name](path, *args, **kw)
        return call

    def _mkdir(self, path: Any, *args: Any, **kw: Any) -> None:
        if self.mode == "readonly" and self._under(path):
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
            raise self._fail(errno.EROFS, "mkdir", path)
        _real["mkdir"](path, *args, **kw)

    def _builtin_open(self, file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        writing = any(c in mode for c in "wax+") and self._under(file)
        if self.mode == "readonly" and writing:
            raise self._fail(errno.EROFS, "open()", file)
        fh = _real_open(file, mode, *args, **kw)
        return _FullFile(self, fh) if self.mode == "full" and writing else fh


# --- the rig ------------------------------------------------------------------------------

@dataclass
class Rig:
    home: Path
    webapp: ReferenceWebapp
    client: WebappClient
    phone: SimulatedPhone
    store: Store
    gateway: Gateway
    clock: Clock

    @property
    def state_dir(self) -> Path:
        return self.store.folder

    def cycle(self) -> CycleReport:
        """One cycle; the clock moves on by 10 s whatever happens."""
        try:
            return self.gateway.cycle()
        finally:
            self.clock.advance(10)

    def snapshot(self) -> dict[str, bytes]:
        """Every file of the state folder (archive included), byte for byte."""
        return {str(p.relative_to(self.state_dir)): p.read_bytes()
                for p in sorted(self.state_dir.rglob("*")) if p.is_file()}

    def settle(self, limit: int = 30) -> None:
        """Cycle without faults until nothing is waiting anywhere."""
        for _ in range(limit):
            report = self.cycle()
            assert report.errors == [], report.errors
            summary = self.store.summary(self.clock())
            busy = (summary["incoming"]["WAITING"] or summary["updates_queued"]
                    or any(summary["outgoing"].values()))
            if not busy:
                return
        raise AssertionError(f"still busy after {limit} cycles: {summary}")


@pytest.fixture
def rig(tmp_path: Path, clock: Clock) -> Iterator[Rig]:
    home = tmp_path / "home"
    webapp = ReferenceWebapp()
    url = webapp.start()
    client = WebappClient(url, read_timeout=10)
    phone = SimulatedPhone(clock)
    store = Store(Paths(home, home).state_dir)
    gateway = Gateway(store, client, phone, Settings(url=url), clock)
    r = Rig(home, webapp, client, phone, store, gateway, clock)
    assert r.cycle().errors == []  # first start: inbox position set
    try:
        yield r
    finally:
        client.close()
        webapp.stop()


@pytest.fixture
def disk(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> DiskFault:
    return DiskFault(rig.state_dir, monkeypatch)


def work_in_flight(rig: Rig, tag: str) -> tuple[list[str], list[str]]:
    """State worth protecting: messages at every stage and incoming SMS stored and waiting.

    Returns the outgoing ids and the incoming texts the rest of the test must not lose.
    """
    done = rig.webapp.queue(NUMBER, f"{tag} already sent")
    rig.cycle()
    rig.cycle()  # handed over, then confirmed and archived
    pending = rig.webapp.queue(NUMBER, f"{tag} handed over")
    rig.cycle()
    queued = rig.webapp.queue(NUMBER, f"{tag} offered next")
    rig.phone.receive(SENDER, f"{tag} first SMS")
    rig.phone.receive(SENDER, f"{tag} second SMS")
    return [done, pending, queued], [f"{tag} first SMS", f"{tag} second SMS"]


def assert_nothing_lost(rig: Rig, ids: list[str], texts: list[str]) -> None:
    """Every incoming SMS reached the webapp; every message SENT, handed over exactly once."""
    rig.settle()
    received = [m["content"] for m in rig.webapp.received()]
    for text in texts:
        assert received.count(text) == 1, (text, received)
    statuses = rig.webapp.statuses()
    sends = [text for _, text in rig.phone.sends]
    for msg_id in ids:
        assert statuses[msg_id][-1] == "SENT", (msg_id, statuses.get(msg_id))
    assert len(sends) == len(set(sends)), f"sent twice: {sends}"
    assert len(sends) == len(ids)


def assert_no_leftovers(rig: Rig, before: dict[str, bytes]) -> None:
    """The old data is byte-equal and no other file (temp file, torn append) appeared."""
    after = rig.snapshot()
    assert sorted(after) == sorted(before), "files appeared or vanished"
    for name, data in before.items():
        assert after[name] == data, f"{name} changed"


def run_cli(args: list[str], home: Path, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`smsgw ARGS` in this process (so the OS error mock applies to it)."""
    monkeypatch.setenv("SMSGW_HOME", str(home))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def assert_clear_one_line_error(code: int, err: str, *words: str) -> str:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    line = lines[0]
    assert line.startswith("smsgw: error: "), line
    assert "unexpected error" not in line, f"not a clear error: {line}"
    for word in words:
        assert word in line, (word, line)
    return line


# --- read-only state folder --------------------------------------------------------------

def test_read_only_state_folder_cycle(rig: Rig, disk: DiskFault) -> None:
    """A read-only mount: the cycle raises StateError, writes nothing; all resumes after."""
    ids, texts = work_in_flight(rig, "ro")
    before = rig.snapshot()
    disk.readonly()
    for _ in range(3):
        with pytest.raises(StateError) as err:
            rig.cycle()
        assert "Read-only file system" in str(err.value)
        assert str(rig.state_dir) in str(err.value)
    assert disk.hits, "the mock was never hit: the test tests nothing"
    assert_no_leftovers(rig, before)
    disk.clear()
    assert_nothing_lost(rig, ids, texts)


def test_state_replace_refused_read_only(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the final rename fails (EROFS): the temp file is removed, the old state stays."""
    ids, texts = work_in_flight(rig, "replace")
    before = rig.snapshot()
    real_replace = os.replace

    def refuse(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StateError) as err:
        rig.cycle()
    text = str(err.value)
    assert "cannot save the state file" in text and "Read-only file system" in text
    assert "previous state is intact" in text
    assert_no_leftovers(rig, before)
    monkeypatch.setattr(os, "replace", real_replace)
    assert_nothing_lost(rig, ids, texts)


def test_read_only_state_folder_cli(rig: Rig, disk: DiskFault, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`smsgw status` on a read-only state: it works, or says so in one clear line."""
    work_in_flight(rig, "cli")
    before = rig.snapshot()
    disk.readonly()
    code, out, err = run_cli(["status", "--json"], rig.home, monkeypatch, capsys)
    if code in (0, 3, 4):  # a read-only command may well work on a read-only state
        assert json.loads(out)["queues"]["incoming"] is not None
    else:
        assert_clear_one_line_error(code, err, str(rig.state_dir))
    code, _, err = run_cli(["send", NUMBER, "queued on a read-only disk"], rig.home,
                           monkeypatch, capsys)
    assert_clear_one_line_error(code, err, "Read-only file system")
    assert_no_leftovers(rig, before)


# --- disk full ------------------------------------------------------------------------------

@pytest.mark.parametrize("free", [0, 100, 600])
def test_disk_full_while_saving_state(rig: Rig, disk: DiskFault, free: int) -> None:
    """ENOSPC part way through the new state file: StateError, old file intact, no temp file."""
    ids, texts = work_in_flight(rig, f"full{free}")
    before = rig.snapshot()
    assert len(before["state.json"]) > free  # a whole new state does not fit
    disk.full(free)
    with pytest.raises(StateError) as err:
        rig.cycle()
    assert "No space left on device" in str(err.value)
    assert "previous state is intact" in str(err.value)
    assert_no_leftovers(rig, before)
    disk.clear()
    assert_nothing_lost(rig, ids, texts)


def _archive_fault(rig: Rig, disk: DiskFault) -> tuple[str, str, dict[str, bytes],
                                                       dict[str, bytes]]:
    """A finished message whose archive append runs into a full disk part way through.

    Returns the ids of a message archived earlier and of that one, and the state folder
    before and right after the failed append.
    """
    first = rig.webapp.queue(NUMBER, "archived before the fault")
    for _ in range(3):  # UNSENT and PENDING, then SENT and archived, then SENT posted
        rig.cycle()
    assert rig.webapp.status_of(first) == "SENT"
    msg_id = rig.webapp.queue(NUMBER, "finished while the disk is full")
    rig.cycle()  # handed over: PENDING
    rig.gateway.reconcile(CycleReport())  # the phone's row confirms it: SENT, not archived yet
    rig.clock.advance(10)
    assert rig.store.summary(rig.clock())["outgoing"]["SENT"] == 1
    before = rig.snapshot()
    disk.full(free=60)  # a piece of one archive line fits, then the disk is full
    with pytest.raises(StateError, match="No space left on device"):
        rig.store.archive_finished(rig.clock())
    disk.clear()
    return first, msg_id, before, rig.snapshot()


def test_disk_full_while_archiving(rig: Rig, disk: DiskFault) -> None:
    """The disk fills up in the middle of an archive append: the archive keeps every earlier
    record, the message is archived once the disk has room, and its id stays known, so the
    webapp offering it again does not get it sent a second time."""
    first, msg_id, before, after = _archive_fault(rig, disk)
    assert after["state.json"] == before["state.json"]
    for name, data in before.items():
        if name.startswith("archive/"):
            assert after[name].startswith(data), f"{name}: earlier records changed"

    rig.settle()
    assert rig.store.archive.status_of(msg_id) == ("SENT", None)
    assert rig.store.archive.find("out", first) is not None
    rig.webapp.offer_again(msg_id)
    rig.settle()
    sends = [text for _, text in rig.phone.sends]
    assert sends.count("finished while the disk is full") == 1, sends
    assert rig.webapp.status_of(msg_id) == "SENT"


def test_failed_archive_append_leaves_no_partial_line(rig: Rig, disk: DiskFault) -> None:
    """Nothing half-written: an append that fails (ENOSPC after a short write) is undone, as
    a failed state write is, instead of leaving a cut line that every later read of the
    archive skips with a warning."""
    _, _, before, after = _archive_fault(rig, disk)
    changed = {name: after[name][len(before.get(name, b"")):] for name in after
               if name.startswith("archive/") and after[name] != before.get(name)}
    assert not changed, f"the failed append left bytes behind: {changed}"


# --- truncated state file, future version --------------------------------------------------

def _damage(rig: Rig, content: bytes) -> bytes:
    original = rig.store.path.read_bytes()
    rig.store.path.write_bytes(content)
    return original


def test_truncated_state_file(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    ids, texts = work_in_flight(rig, "trunc")
    original = rig.store.path.read_bytes()
    truncated = original[: len(original) // 2]
    _damage(rig, truncated)
    before = rig.snapshot()

    with pytest.raises(StateError) as err:
        rig.cycle()
    assert "damaged" in str(err.value) and str(rig.store.path) in str(err.value)
    with pytest.raises(StateError, match="damaged"):
        Store(rig.state_dir)
    for args in (["status"], ["messages", "--json"], ["send", NUMBER, "hi"]):
        code, _, err_text = run_cli(args, rig.home, monkeypatch, capsys)
        assert_clear_one_line_error(code, err_text, str(rig.store.path), "damaged")
    assert_no_leftovers(rig, before)

    rig.store.path.write_bytes(original)  # the user restores the file
    assert_nothing_lost(rig, ids, texts)


def test_state_file_from_a_future_version(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ids, texts = work_in_flight(rig, "future")
    original = rig.store.path.read_bytes()
    data = json.loads(original)
    data["meta"]["1"]["version"] = 99
    data["meta"]["1"]["something_new"] = {"from": "smsgw 9"}
    future = json.dumps(data).encode()
    _damage(rig, future)
    before = rig.snapshot()

    with pytest.raises(StateError) as err:
        rig.cycle()
    assert "newer smsgw" in str(err.value) and "upgrade" in str(err.value)
    with pytest.raises(StateError, match="newer smsgw"):
        Store(rig.state_dir)
    code, _, err_text = run_cli(["status"], rig.home, monkeypatch, capsys)
    assert_clear_one_line_error(code, err_text, "newer smsgw")
    assert_no_leftovers(rig, before)

    rig.store.path.write_bytes(original)  # a downgrade undone
    assert_nothing_lost(rig, ids, texts)


# --- the daemon keeps running ------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["truncated", "readonly", "full"])
def test_daemon_keeps_running_through_state_errors(rig: Rig, disk: DiskFault, fault: str,
                                                   caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The real loop, in this process: cycles fail with the state fault and the loop goes on."""
    ids, texts = work_in_flight(rig, f"daemon-{fault}")
    original = rig.store.path.read_bytes()
    if fault == "truncated":
        _damage(rig, original[:-7])
    before = rig.snapshot()
    if fault == "readonly":
        disk.readonly()
    elif fault == "full":
        disk.full(0)
    monkeypatch.setattr(logging.getLogger("smsgw"), "propagate", True)
    daemon = Daemon(rig.gateway, Paths(rig.home, rig.home), interval=1, clock=rig.clock,
                    max_cycles=2)
    with caplog.at_level("ERROR", logger="smsgw"):
        assert daemon.run() == 0
    assert daemon.cycles == 2
    assert daemon.last_report is None  # both cycles failed and were caught
    failures = [r.getMessage() for r in caplog.records if "cycle failed" in r.getMessage()]
    assert len(failures) == 2, failures
    disk.clear()
    assert_no_leftovers(rig, before)
    if fault == "truncated":
        rig.store.path.write_bytes(original)
    assert_nothing_lost(rig, ids, texts)
