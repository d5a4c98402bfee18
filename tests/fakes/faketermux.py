"""FakeTermux: drive the fake termux-* executables from tests (see README.md here)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .provider import ENV_DIR, INBOX, LIST_TYPES, Provider

BIN_DIR = Path(__file__).resolve().parent / "bin"
_WHOLE = object()  # add_raw_row(): print the row's object (with `drop` and `fields` applied)


def _ms(at: datetime | None) -> int | None:
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return int(at.timestamp() * 1000)


class FakeTermux:
    """A fake phone in `state_dir`; its executables live in BIN_DIR.

    `env` is the environment for subprocesses; `install(monkeypatch)` applies it to this
    process (PATH with BIN_DIR first, FAKE_TERMUX_DIR set).
    """

    bin_dir = BIN_DIR

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.provider = Provider(self.dir)
        with self.provider.db():
            pass  # create the schema now
        # The executables run this interpreter (bin/* falls back to `python3` on PATH).
        python = self.dir / "python"
        if not python.exists():
            with contextlib.suppress(OSError):
                python.symlink_to(os.path.realpath(sys.executable))

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus what the fakes need."""
        path = os.environ.get("PATH", "")
        return dict(os.environ, PATH=f"{BIN_DIR}{os.pathsep}{path}", **{ENV_DIR: str(self.dir)})

    def install(self, monkeypatch: Any) -> FakeTermux:
        """Put the fakes first on PATH and point them at this state (undone by monkeypatch)."""
        monkeypatch.setenv("PATH", f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv(ENV_DIR, str(self.dir))
        return self

    # modes ----------------------------------------------------------------------------
    def set_mode(self, **modes: Any) -> dict[str, Any]:
        """Switch modes on (e.g. `hang=1`, `latency=0.2`); a None value switches one off."""
        return self.provider.set_modes(modes)

    def clear_modes(self) -> None:
        self.provider.set_modes({}, clear=True)

    @property
    def modes(self) -> dict[str, Any]:
        return self.provider.modes()

    def set_clock(self, at: datetime | None) -> None:
        """Fix the phone's clock at `at` (aware; naive means UTC), or None for real time."""
        self.set_mode(clock=None if at is None else at.isoformat())

    # SMS provider -------------------------------------------------------------------
    def receive(self, address: str, body: str, at: datetime | None = None) -> int:
        """An SMS arrives (inbox row dated `at` or the phone's now); returns its `_id`."""
        return self.provider.add_row(INBOX, address, body, _ms(at))

    def receive_many(self, messages: Iterable[tuple[str, str]], at: datetime | None = None,
                     step: timedelta = timedelta(milliseconds=1)) -> list[int]:
        """Many SMS arrive in one transaction, `step` apart from `at` (default: the phone's
        now); returns their `_id`s."""
        start = _ms(at) if at is not None else self.provider.now_ms()
        gap = int(step.total_seconds() * 1000)
        return self.provider.add_rows([(INBOX, a, b, start + k * gap)
                                       for k, (a, b) in enumerate(messages)])

    def add_row(self, kind: str | int, address: str, body: str,
                at: datetime | None = None) -> int:
        """Insert a row of any type (`sent`, `failed`, 6, ...), as written by Android."""
        code = LIST_TYPES[kind] if isinstance(kind, str) else kind
        return self.provider.add_row(code, address, body, _ms(at),
                                     creator="com.termux.api", read=1)

    def add_raw_row(self, address: str = "+254700000000", body: str = "",
                    at: datetime | None = None, *, kind: str | int = "inbox",
                    drop: Iterable[str] = (), fields: dict[str, Any] | None = None,
                    entry: Any = _WHOLE) -> int:
        """A real row in the provider (dated `at`, of `kind`, so selections, sort orders and
        pages treat it as any row) that termux-sms-list prints oddly: without the fields in
        `drop` (e.g. `("received",)`), with `fields` set to these JSON values
        (`{"received": "yesterday"}`, `{"body": None}`), or as `entry` (any JSON value:
        `"garbage"`, `None`, `[1]`) in place of the whole object. Returns its `_id`."""
        code = LIST_TYPES[kind] if isinstance(kind, str) else kind
        if code == INBOX:
            row_id = self.provider.add_row(code, address, body, _ms(at))
        else:
            row_id = self.provider.add_row(code, address, body, _ms(at),
                                           creator="com.termux.api", read=1)
        how: dict[str, Any] = {"drop": list(drop), "fields": dict(fields or {})}
        if entry is not _WHOLE:
            how["entry"] = entry
        self.provider.set_printed(row_id, how)
        return row_id

    def set_type(self, row_id: int, kind: str | int) -> None:
        self.provider.set_type(row_id, LIST_TYPES[kind] if isinstance(kind, str) else kind)

    def delete(self, row_id: int) -> bool:
        """Delete a row (its `_id` may then be reused by the next insert)."""
        return self.provider.delete(row_id)

    def rows(self, kind: str | int | None = None) -> list[dict[str, Any]]:
        """Raw provider rows (all columns), by `_id`."""
        code = LIST_TYPES[kind] if isinstance(kind, str) else kind
        return self.provider.rows(code)

    def add_contact(self, number: str, name: str) -> None:
        self.provider.add_contact(number, name)

    def notify(self, package: str, title: str, content: str = "") -> int:
        """Show a notification for termux-notification-list."""
        return self.provider.notify(package, title, content)

    # termux-job-scheduler ---------------------------------------------------------------
    def jobs(self) -> dict[int, dict[str, Any]]:
        """Pending jobs by id (`script`, `period_ms`, `persisted`, `network`, ...)."""
        from .jobscheduler import Jobs

        with self.provider.locked():
            return Jobs(self.provider).load()

    # calls ----------------------------------------------------------------------------
    def calls(self, name: str | None = None) -> list[dict[str, Any]]:
        """Logged invocations (name, argv, stdin_len, time, pid), optionally of one command."""
        return self.provider.calls(name)

    def call_count(self, name: str | None = None) -> int:
        return len(self.calls(name))

    def reset_calls(self) -> None:
        with self.provider.locked():
            self.provider.calls_path.unlink(missing_ok=True)


def script(tmp_path, monkeypatch, name: str, body: str) -> None:
    """A one-off executable `name` (a sh script of `body`) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
