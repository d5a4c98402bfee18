# Shared by every test file in tests/: keep it small (a clock, reference webapps, no proxies).
"""Fixtures shared by the smsgw tests."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from smsgw.testserver import ReferenceWebapp

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=timezone.utc)


class Clock:
    """A clock for code that takes `clock=`: it moves only when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 10) -> datetime:
        """Move forward by `seconds` and return the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture(autouse=True)
def _smsgw_logging_restored() -> Iterator[None]:
    """A command run in this process (`main([...])`) sets up smsgw's logging for good, as
    it does in its own process: put the "smsgw" logger back as it was after each test, so
    no test inherits another's log file or propagation."""
    log = logging.getLogger("smsgw")
    handlers, propagate, level = list(log.handlers), log.propagate, log.level
    yield
    for handler in log.handlers:
        if handler not in handlers:
            handler.close()
    log.handlers[:] = handlers
    log.propagate = propagate
    log.setLevel(level)


@pytest.fixture
def clock() -> Clock:
    """A fresh clock at T0."""
    return Clock()


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Talk to 127.0.0.1 directly whatever the environment says."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def make_webapp() -> Iterator[Callable[..., ReferenceWebapp]]:
    """Start reference webapps on 127.0.0.1, port 0; all are stopped at teardown."""
    apps: list[ReferenceWebapp] = []

    def make(**kwargs: Any) -> ReferenceWebapp:
        app = ReferenceWebapp("127.0.0.1", 0, **kwargs)
        app.start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Show the figures the reliability tests print, even when output is captured."""
    lines: list[str] = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "nodeid", "").startswith("tests/reliability/"):
                text = getattr(report, "capstdout", "").strip()
                if text:
                    lines.append(text)
    if lines:
        terminalreporter.section("reliability figures")
        for text in lines:
            terminalreporter.write_line(text)


# CI runs the property tests on fixed examples, so a red run can be replayed; local runs
# keep exploring new ones.
if os.environ.get("CI"):
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True)
    _hypothesis_settings.load_profile("ci")
