"""Ids, numbers and reasons from a webapp cannot forge log lines or drive the terminal."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from runner import SmsgwRunner

from smsgw.models import printable
from smsgw.testserver import ReferenceWebapp

pytestmark = pytest.mark.usefixtures("no_proxies")

EVIL_ID = "m1\n2026-01-01 00:00:00 INFO message m1 sent (recorded by the phone)\x1b[2J"
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def test_printable_escapes_every_control_character() -> None:
    assert printable("a\nb\rc\x1b[31md\x00e\x7f\x9b\\f") == (
        "a\\x0ab\\x0dc\\x1b[31md\\x00e\\x7f\\x9b\\\\f")
    assert printable("Habari, é ✓ 😀") == "Habari, é ✓ 😀"


def test_no_forged_log_line_and_no_escape_sequence_on_the_terminal(
        tmp_path: Path, make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp()
    smsgw = SmsgwRunner(tmp_path)
    assert smsgw("config", "--url", webapp.url, "--no-check").returncode == 0
    webapp.queue("+1\x1b]0;owned\x07", "text", id=EVIL_ID)
    webapp.queue("+254700000001", "fine", id="m2\x1b[2J")
    res = smsgw("run", "--phone", "simulated", "--once")
    assert res.returncode == 0, res.stderr
    log = smsgw.log_file.read_text(encoding="utf-8")
    assert log.strip()
    for line in log.splitlines():
        assert LINE.match(line), line
    assert "\x1b" not in log
    for command in (("messages",), ("status",), ("retry", EVIL_ID)):
        res = smsgw(*command)
        assert "\x1b" not in res.stdout + res.stderr, command
        assert not any(LINE.match(line) for line in (res.stdout + res.stderr).splitlines())
    listing = smsgw("messages").stdout
    assert "m1\\x0a2026-01-01" in listing
