"""Stopping: SIGTERM ends a stuck exchange at once and loses nothing."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import FakeTermux
from runner import SmsgwRunner, wait_for

from smsgw.testserver import ReferenceWebapp

pytest_plugins = ["fakes.fixtures"]
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


# Over the fake Termux:API: a stop signal while a termux call runs --------------------------
class _Smsgw(SmsgwRunner):
    """`smsgw` over the fake termux-* executables (first on PATH)."""

    def __init__(self, tmp: Path, fake: FakeTermux) -> None:
        super().__init__(tmp, {k: v for k, v in fake.env.items()
                               if k in ("PATH", "FAKE_TERMUX_DIR")})


def _wait_line(out: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    def seen() -> bool:
        return text in out.read_text(encoding="utf-8", errors="replace")
    wait_for(seen, 30, repr(text))


def _state_of(smsgw: SmsgwRunner, msg_id: str) -> str | None:
    return next((m["state"] for m in smsgw.messages()["from_webapp"] if m["id"] == msg_id),
                None)


def test_first_sigint_during_a_slow_send_is_acknowledged_and_the_send_recorded(
        tmp_path: Path, fake_termux: FakeTermux,
        make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp()
    smsgw = _Smsgw(tmp_path, fake_termux)
    assert smsgw("config", "--url", webapp.url, "--no-check").returncode == 0
    msg_id = webapp.queue("+254700000001", "slow phone")
    fake_termux.set_mode(latency=6)  # every call: the inbox read, the send...
    out = tmp_path / "run.log"
    proc = smsgw.popen("run", out=out)
    try:
        # The intent is recorded just before termux-sms-send starts its 6 s.
        wait_for(lambda: _state_of(smsgw, msg_id) == "SENDING", 60, "the send")
        proc.send_signal(signal.SIGINT)
        _wait_line(out, "stopping after the current step", proc)
        # Acknowledged while the call still runs: the phone has no row for it yet.
        assert fake_termux.rows("sent") == []
        code = proc.wait(timeout=60)  # a hang guard only
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    text = out.read_text(encoding="utf-8")
    assert code == 0, text
    assert "Traceback" not in text and "stopping now" not in text, text
    # The send was not cut: handed over, recorded PENDING, the phone has its row.
    assert [r["body"] for r in fake_termux.rows("sent")] == ["slow phone"]
    assert _state_of(smsgw, msg_id) == "PENDING"
    fake_termux.set_mode(latency=None)
    res = smsgw("run", "--once")
    assert res.returncode == 0, res.stderr
    assert fake_termux.call_count("termux-sms-send") == 1  # reconciled, not sent again
    assert _state_of(smsgw, msg_id) in ("PENDING", "SENT")  # SENT once the row settles


def test_second_sigint_ends_a_stuck_send_at_once_and_it_is_never_resent(
        tmp_path: Path, fake_termux: FakeTermux,
        make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp()
    smsgw = _Smsgw(tmp_path, fake_termux)
    assert smsgw("config", "--url", webapp.url, "--no-check").returncode == 0
    msg_id = webapp.queue("+254700000002", "stuck phone")
    other = webapp.queue("+254700000003", "queued behind it")
    fake_termux.set_mode(hang="termux-sms-send")  # answers only after the 60 s send timeout
    out = tmp_path / "run.log"
    proc = smsgw.popen("run", out=out)
    try:
        wait_for(lambda: fake_termux.call_count("termux-sms-send") == 1, 60, "the send")
        proc.send_signal(signal.SIGINT)
        _wait_line(out, "stopping after the current step", proc)
        assert proc.poll() is None  # the first one waits for the send to finish
        proc.send_signal(signal.SIGINT)
        _wait_line(out, "stopping now", proc)
        code = proc.wait(timeout=30)  # a hang guard only, well below the send timeout
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    text = out.read_text(encoding="utf-8")
    assert code == 0, text
    assert "Traceback" not in text, text
    # Ended by the second signal, not by the send timeout:
    assert "termux-sms-send was ended: smsgw is stopping now" in text, text
    assert "did not answer within" not in text, text
    # Its intent was recorded: it awaits the phone's record; the next one was not begun.
    assert _state_of(smsgw, msg_id) == "SENDING"
    assert _state_of(smsgw, other) == "UNSENT"
    # The next run reconciles it from the phone (no row: still awaiting, not resent) and
    # sends the other one; the stuck one is handed to termux-sms-send once in all.
    fake_termux.clear_modes()
    res = smsgw("run", "--once")
    assert res.returncode == 0, res.stderr
    sends = [c["argv"][1] for c in fake_termux.calls("termux-sms-send")]
    assert sends == ["+254700000002", "+254700000003"], sends
    assert _state_of(smsgw, msg_id) == "SENDING"


def test_second_sigint_ends_a_hung_notification_watcher_call(
        tmp_path: Path, fake_termux: FakeTermux,
        make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp()
    smsgw = _Smsgw(tmp_path, fake_termux)
    assert smsgw("config", "--url", webapp.url, "--no-check",
                 "--notification-watch").returncode == 0
    fake_termux.set_mode(notification_access=0)  # termux-notification-list hangs
    out = tmp_path / "run.log"
    proc = smsgw.popen("run", out=out)
    try:
        wait_for(lambda: fake_termux.call_count("termux-notification-list") == 1, 60,
                 "the watcher's call")
        proc.send_signal(signal.SIGINT)
        _wait_line(out, "stopping after the current step", proc)
        proc.send_signal(signal.SIGINT)
        _wait_line(out, "stopping now", proc)
        code = proc.wait(timeout=20)  # a hang guard, below the call's 30 s timeout
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    text = out.read_text(encoding="utf-8")
    assert code == 0, text
    assert "Traceback" not in text, text
    # Ended by the signal: the watcher was not turned off as if Notification Access lacked.
    assert "did not answer" not in text, text
    res = smsgw("status", "--json")
    assert "disabled" not in res.stdout, res.stdout
