"""Running `smsgw` as a user does, in a subprocess with its own SMSGW_HOME and HOME.

Shared by the CLI and Termux integration tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # seconds: only to prove a command did not hang forever


def clean_environ() -> dict[str, str]:
    """os.environ without smsgw's, XDG's and proxy variables (the webapps are on 127.0.0.1)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SMSGW_", "XDG_")) and k not in ("PYTHONPATH", "PREFIX")
            and not k.lower().endswith("_proxy")}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until `predicate()` is truthy; fail after `timeout` seconds (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


class SmsgwRunner:
    """`smsgw` in subprocesses with an isolated SMSGW_HOME and HOME."""

    def __init__(self, tmp: Path, extra_env: dict[str, str] | None = None) -> None:
        self.home = tmp / "smsgw-home"
        self.user_home = tmp / "user-home"
        self.user_home.mkdir()
        self.env = {**clean_environ(), **(extra_env or {}),
                    "SMSGW_HOME": str(self.home), "HOME": str(self.user_home),
                    "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                    "NO_PROXY": "127.0.0.1,localhost"}

    argv = [sys.executable, "-c", "from smsgw.cli import main; main()"]

    @property
    def config_file(self) -> Path:
        return self.home / "config.json"

    @property
    def state_file(self) -> Path:
        return self.home / "state" / "state.json"

    @property
    def log_file(self) -> Path:
        return self.home / "smsgw.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "daemon.pid"

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.env, **(extra or {})}

    def __call__(self, *args: str, env: dict[str, str] | None = None,
                 timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv + list(args), cwd=REPO, env=self.environ(env),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def popen(self, *args: str, out: Path) -> subprocess.Popen[bytes]:
        """`smsgw ARGS` in the background, its output (stdout and stderr) in `out`."""
        with open(out, "wb") as fh:
            return subprocess.Popen(self.argv + list(args), cwd=REPO, env=self.environ(),
                                    stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)

    @contextlib.contextmanager
    def daemon(self, *args: str, out: Path) -> Iterator[subprocess.Popen[bytes]]:
        """`smsgw run ARGS` in the background; stopped with SIGTERM (it must exit 0)."""
        proc = self.popen("run", *args, out=out)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail("the daemon did not stop within 30 s of SIGTERM")
        text = out.read_text(encoding="utf-8", errors="replace")
        assert code == 0, text
        assert "Traceback" not in text, text

    def status_json(self) -> tuple[int, dict[str, Any]]:
        proc = self("status", "--json")
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def messages(self) -> dict[str, Any]:
        proc = self("messages", "--json", "--limit", "1000")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)
