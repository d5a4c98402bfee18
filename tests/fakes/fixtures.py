"""The `fake_termux` pytest fixture: enable with `from fakes.fixtures import fake_termux`."""

from __future__ import annotations

import os
import time

import pytest

from .faketermux import FakeTermux


@pytest.fixture
def fake_termux(tmp_path, monkeypatch) -> FakeTermux:
    """A fresh fake phone, its executables first on PATH for this test."""
    return FakeTermux(tmp_path / "fake-termux").install(monkeypatch)


@pytest.fixture
def local_tz():
    """Set the process's (and the fake phone's) time zone; restored afterwards."""
    old = os.environ.get("TZ")

    def set_tz(value: str) -> None:
        os.environ["TZ"] = value
        time.tzset()

    yield set_tz
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()

