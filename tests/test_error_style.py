"""Every user-facing error is one line `smsgw: error: ...` naming what is at fault and what
to do: click's usage errors, OS errors a user can fix, a bad SMSGW_URL."""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
from pathlib import Path

import pytest
from runner import SmsgwRunner

from smsgw import cli
from smsgw.errors import ExitCode


@pytest.fixture
def smsgw(tmp_path: Path) -> SmsgwRunner:
    return SmsgwRunner(tmp_path)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The only line of stderr, which must be an `smsgw: error:` line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("smsgw: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "internal error" not in proc.stderr and "unexpected error" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["config", "--bogus"], ["no such option", "--bogus", "(see smsgw config --help)"]),
    (["send"], ["missing argument 'NUMBER'", "(see smsgw send --help)"]),
    (["run", "--phone", "bad"], ["'bad' is not one of", "(see smsgw run --help)"]),
    (["bogus"], ["no such command 'bogus'", "(see smsgw --help)"]),
    (["config", "--interval"], ["--interval", "requires an argument",
                                "(see smsgw config --help)"]),
    (["restore"], ["missing argument 'FILE'", "(see smsgw restore --help)"]),
    (["retry"], ["name message ids, or use --failed", "(see smsgw retry --help)"]),
])
def test_usage_errors_are_one_line_with_where_to_look(smsgw: SmsgwRunner, args: list[str],
                                                      words: list[str]) -> None:
    proc = smsgw(*args)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    line = one_line(proc)
    assert "Usage:" not in proc.stderr and "Try '" not in proc.stderr
    for word in words:
        assert word in line, (word, line)


@pytest.mark.parametrize("args, usage, listed", [
    ([], "Usage: smsgw [OPTIONS] COMMAND [ARGS]...", "status"),
    (["simulate"], "Usage: smsgw simulate [OPTIONS] COMMAND [ARGS]...", "receive"),
])
def test_a_group_without_its_command_shows_the_help(smsgw: SmsgwRunner, args: list[str],
                                                    usage: str, listed: str) -> None:
    proc = smsgw(*args)
    assert proc.returncode == ExitCode.USAGE, proc.stderr  # as click itself exits
    lines = proc.stderr.splitlines()
    assert lines[0] == usage, proc.stderr
    assert "Commands:" in lines
    assert any(line.split()[:1] == [listed] for line in lines), proc.stderr
    assert "smsgw: error" not in proc.stderr and "Traceback" not in proc.stderr


def test_testserver_on_a_port_in_use_says_to_pick_another(smsgw: SmsgwRunner) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = smsgw("testserver", "--port", str(port))
    assert proc.returncode == ExitCode.ERROR
    assert one_line(proc) == (f"smsgw: error: 127.0.0.1:{port} is already in use: pick "
                              "another port with --port")


@pytest.mark.parametrize("command", [["status"], ["run", "--phone", "simulated", "--once"]])
def test_a_bad_smsgw_url_is_refused_naming_the_variable(smsgw: SmsgwRunner,
                                                        command: list[str]) -> None:
    proc = smsgw(*command, env={"SMSGW_URL": "ftp://nope"})
    assert proc.returncode == ExitCode.ERROR
    line = one_line(proc)
    assert line.startswith("smsgw: error: SMSGW_URL "), line
    assert "http://" in line  # what it must be


def test_a_home_that_is_a_file_is_named(smsgw: SmsgwRunner, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    proc = smsgw("status", env={"SMSGW_HOME": str(afile / "smsgw")})
    assert proc.returncode == ExitCode.ERROR
    line = one_line(proc)
    assert str(afile / "smsgw") in line and "not a directory" in line, line
    assert "SMSGW_HOME" in line, line


# OS errors a user can fix, raised where no check of ours catches them. As root, or without
# a read-only mount to hand, the error is injected into this process (a rare OS error).
def _run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`smsgw ARGS` in this process; the log handlers it set up are removed after."""
    root = logging.getLogger("smsgw")
    handlers, level, propagate = list(root.handlers), root.level, root.propagate
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(args)
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        root.propagate = propagate
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


@pytest.mark.parametrize("code, words", [
    (errno.EROFS, ["cannot write", "read-only file system",
                   "set SMSGW_HOME to a writable folder"]),
    (errno.EACCES, ["cannot use", "permission denied", "permissions"]),
])
def test_os_errors_in_words_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], code: int,
                                            words: list[str]) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("SMSGW_HOME", str(home))
    monkeypatch.delenv("SMSGW_URL", raising=False)
    real_open = os.open
    log = str(home / "smsgw.log")

    def failing_open(path: object, flags: int, *args: object, **kw: object) -> int:
        if os.fspath(path) == log:  # type: ignore[call-overload]
            raise OSError(code, os.strerror(code), log)
        return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", failing_open)
    exit_code, err = _run_main(["run", "--phone", "simulated", "--url",
                                "http://127.0.0.1:9/", "--once"], capsys)
    assert exit_code == ExitCode.ERROR
    [line] = [x for x in err.splitlines() if x.strip()]
    assert line.startswith("smsgw: error: "), line
    assert "internal error" not in line and "Traceback" not in err
    assert log in line, line
    for word in words:
        assert word in line, (word, line)


def test_an_os_error_that_is_a_bug_stays_an_internal_error(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    monkeypatch.setenv("SMSGW_HOME", str(tmp_path))

    def broken(*_args: object) -> None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    from smsgw.store import Store

    monkeypatch.setattr(Store, "summary", broken)  # a mock: a bug cannot be reached otherwise
    exit_code, err = _run_main(["status"], capsys)
    assert exit_code == ExitCode.ERROR
    assert "smsgw: error: internal error (a bug in smsgw, please report it): OSError" in err
