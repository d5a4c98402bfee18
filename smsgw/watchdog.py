"""The watchdog job's trace, cheap to read (a stat or two): `smsgw status` and `smsgw doctor`
warn when the job stopped running. The job itself is termux/watchdog/smsgw-watchdog."""

from __future__ import annotations

import os
from pathlib import Path

STALE_AFTER = 3600  # seconds: the job runs about every 15 to 30 minutes


def script() -> Path:
    """Where install.sh puts the watchdog script."""
    return Path(os.environ.get("HOME") or str(Path.home())) / ".termux" / "watchdog" / \
        "smsgw-watchdog"


def ran_file(data_dir: Path) -> Path:
    """The file every run of the watchdog touches."""
    return data_dir / "watchdog.ran"


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def stale(data_dir: Path, now: float) -> str | None:
    """Why the watchdog job looks dead (it has not run for over an hour), or None when it is
    not installed or ran lately."""
    try:
        installed = script().stat().st_mtime
    except OSError:
        return None
    try:
        last: float | None = ran_file(data_dir).stat().st_mtime
    except OSError:
        last = None
    since = now - (installed if last is None else last)
    if since <= STALE_AFTER:
        return None
    said = (f"has not run since it was installed ({_age(since)} ago)" if last is None
            else f"last ran {_age(since)} ago")
    return (f"the watchdog job {said}: Android defers or dropped it (exempt Termux:API from "
            "battery optimisation; smsgw doctor checks the job)")
