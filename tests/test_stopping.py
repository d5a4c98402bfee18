"""Stopping: SIGTERM ends a stuck exchange at once and loses nothing."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from runner import SmsgwRunner, wait_for

from smsgw.testserver import ReferenceWebapp

pytestmark = pytest.mark.usefixtures("no_proxies")


def test_sigterm_cuts_a_stuck_exchange_at_once(tmp_path: Path,
                                               make_webapp: Callable[..., ReferenceWebapp]
                                               ) -> None:
    webapp = make_webapp()
    smsgw = SmsgwRunner(tmp_path)
    assert smsgw("config", "--url", webapp.url, "--no-check").returncode == 0
    webapp.set_fault("timeout", seconds=300)  # holds the first POST without an answer
    out = tmp_path / "run.log"
    proc = smsgw.popen("run", "--phone", "simulated", out=out)
    try:
        wait_for(lambda: any(e["fault"] == "timeout" for e in webapp.snapshot()["raw"]),
                 30, "the POST to hang")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        stopped_in = time.monotonic() - started
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    text = out.read_text(encoding="utf-8")
    assert code == 0, text
    assert "stopping after the current step" in text
    assert "Traceback" not in text
    assert stopped_in < 20, f"took {stopped_in:.1f} s (the read timeout is 30 s)"
    # Nothing was lost: the next run posts what was queued and the webapp answers.
    webapp.clear_faults()
    msg_id = webapp.queue("+254700000001", "after the stop")
    res = smsgw("run", "--phone", "simulated", "--once")
    assert res.returncode == 0, res.stderr
    assert webapp.status_of(msg_id) in ("UNSENT", "PENDING")
