"""Stopping: SIGTERM ends a stuck exchange at once and loses nothing."""

from __future__ import annotations

import signal
import subprocess
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
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)  # a hang guard only
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    text = out.read_text(encoding="utf-8")
    assert code == 0, text
    assert "stopping after the current step" in text
    assert "Traceback" not in text
    # Cut by the stop, not ended by the 30 s read timeout:
    assert "exchange failed: stopped" in text, text
    assert "did not answer within" not in text
    # Nothing was lost: the next run posts what was queued and the webapp answers.
    webapp.clear_faults()
    msg_id = webapp.queue("+254700000001", "after the stop")
    res = smsgw("run", "--phone", "simulated", "--once")
    assert res.returncode == 0, res.stderr
    assert webapp.status_of(msg_id) in ("UNSENT", "PENDING")
