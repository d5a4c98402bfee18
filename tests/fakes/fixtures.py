"""The `fake_termux` pytest fixture: enable with `from fakes.fixtures import fake_termux`."""

from __future__ import annotations

import pytest

from .faketermux import FakeTermux


@pytest.fixture
def fake_termux(tmp_path, monkeypatch) -> FakeTermux:
    """A fresh fake phone, its executables first on PATH for this test."""
    return FakeTermux(tmp_path / "fake-termux").install(monkeypatch)
