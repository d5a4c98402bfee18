"""Fake termux-api executables and the FakeTermux helper that drives them in tests."""

from .faketermux import BIN_DIR, FakeTermux, script

__all__ = ["BIN_DIR", "FakeTermux", "script"]
