"""Retries over the fake Termux phone with an injected clock, and `smsgw retry` bringing a
FAILED message back (the CLI in a subprocess, beside the store the gateway uses)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from smsgw.config import Settings
from smsgw.gateway import Gateway
from smsgw.models import utcnow
from smsgw.phone.termux import TermuxPhone
from smsgw.store import Store
from smsgw.webapp import WebappClient

pytest_plugins = ["fakes.fixtures"]

REPO = Path(__file__).resolve().parents[1]
NUMBER = "+1123123123"


def test_radio_off_walks_through_20_retries_then_retry_command_sends_it(
        tmp_path, fake_termux, make_webapp, clock, caplog):
    caplog.set_level(logging.INFO, logger="smsgw")
    home = tmp_path / "home"
    webapp = make_webapp()
    store = Store(home / "state")
    gateway = Gateway(store, WebappClient(webapp.url), TermuxPhone(send_timeout=10,
                      list_timeout=10), Settings(url=webapp.url), clock)

    def cycle():
        fake_termux.set_clock(clock.now)
        return gateway.cycle()

    cycle()  # first start: position after the existing inbox
    fake_termux.set_mode(radio_off=1)
    msg_id = webapp.queue(NUMBER, "Clinic day is Saturday")
    for _ in range(200):
        report = cycle()
        assert not report.errors
        if webapp.status_of(msg_id) == "FAILED":
            break
        with store.unit(clock.now) as u:
            msg = u.get(msg_id)  # None once FAILED and archived, before the webapp hears
            due = msg.due if msg else None
        # Jump to the next due time: the gateway must not send before it.
        clock.now = max(clock.now + timedelta(seconds=10), due or clock.now)
    sends = fake_termux.calls("termux-sms-send")
    assert len(sends) == 21
    assert webapp.status_of(msg_id) == "FAILED"
    failed = [u for u in webapp.updates() if u["id"] == msg_id and u["status"] == "FAILED"]
    assert failed and failed[-1]["reason"] == "no network operator"
    lines = [r.getMessage() for r in caplog.records]
    for n in (1, 2, 5, 20):
        minutes = round(n**1.5)
        expected = (f"Sending SMS to {NUMBER} failed (cause: no network operator) "
                    f"Retry #{n} in {minutes} min")
        assert sum(expected in line for line in lines) == 1, expected
    assert sum(f"Sending message to {NUMBER} failed (cause: no network operator) Not retrying"
               in line for line in lines) == 1
    # Each retry waited its backoff on the injected clock.
    times = [c["time"] for c in sends]
    assert times == sorted(times)

    # The radio is back; a person retries with the CLI while nothing else runs.
    fake_termux.set_mode(radio_off=None)
    env = {**os.environ, "SMSGW_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", "from smsgw.cli import main; main()",
                           "retry", msg_id], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"{msg_id}: queued again" in proc.stdout
    clock.now = max(clock.now, utcnow())  # the CLI stamped the retry with the real clock
    for _ in range(5):
        clock.advance(10)
        cycle()
        if webapp.status_of(msg_id) == "SENT":
            break
    assert webapp.status_of(msg_id) == "SENT"
    assert fake_termux.call_count("termux-sms-send") == 22
    assert webapp.statuses()[msg_id][-3:] == ["UNSENT", "PENDING", "SENT"]


def test_permission_error_is_a_failed_try_with_the_tools_words(
        tmp_path, fake_termux, make_webapp, clock):
    webapp = make_webapp()
    store = Store(tmp_path / "state")
    gateway = Gateway(store, WebappClient(webapp.url), TermuxPhone(), Settings(url=webapp.url),
                      clock)
    fake_termux.set_clock(clock.now)
    gateway.cycle()
    fake_termux.set_mode(permission_error=1)
    msg_id = webapp.queue(NUMBER, "hello")
    gateway.cycle()
    with store.unit(clock.now) as u:
        msg = u.get(msg_id)
        assert msg.retries == 1
        assert "Please grant the following permission" in (msg.reason or "")
    summary = store.summary(clock.now)
    assert "SEND_SMS" in summary["phone_error"]["text"]
    # Nothing reached the provider: no row, so no confusion with a real send later.
    assert fake_termux.rows("sent") == [] and fake_termux.rows("failed") == []
