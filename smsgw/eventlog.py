"""The operator's event log: its line format, and `smsgw log`, which reads it back.

Every line starts with its time in UTC and its level: `2026-12-07T09:00:00Z INFO ...`.
The log rotates (smsgw.log, then smsgw.log.1 .. .3, the highest the oldest); `smsgw log`
reads them all, oldest first. Lines of an older smsgw (local time, no zone:
`2026-12-07 10:00:00 INFO ...`) are shown as they are, and filtered by that local time.
A line that starts with no time (a traceback) belongs to the event before it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import UserError
from .models import printable

LINE_FORMAT = "%(asctime)s %(levelname)s %(message)s"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # always UTC: the formatter converts with time.gmtime
ROTATED = 3  # smsgw.log.1 .. smsgw.log.3, as the log handler keeps them
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_LEVEL = "(" + "|".join(LEVELS) + ")"
_UTC_LINE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) " + _LEVEL + r"\b")
_OLD_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:,\d+)? " + _LEVEL + r"\b")


@dataclass
class Entry:
    """One event: its first line's time and level (None when unknown) and its lines."""

    at: datetime | None
    level: str | None
    lines: list[str] = field(default_factory=list)


def parse_line(line: str) -> tuple[datetime | None, str | None]:
    """The time (aware) and level a log line starts with; (None, None) for a line that
    continues the event before it."""
    m = _UTC_LINE.match(line)
    if m:
        return datetime.strptime(m.group(1), TIME_FORMAT).replace(tzinfo=timezone.utc), \
            m.group(2)
    m = _OLD_LINE.match(line)
    if m:  # written by an older smsgw in the machine's local time
        return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").astimezone(), m.group(2)
    return None, None


def log_files(current: Path) -> list[Path]:
    """The log's files there are, oldest first."""
    files = [current.with_name(f"{current.name}.{n}") for n in range(ROTATED, 0, -1)]
    return [p for p in [*files, current] if p.exists()]


def entries(lines: Iterable[str]) -> Iterator[Entry]:
    """Lines grouped into events."""
    entry: Entry | None = None
    for line in lines:
        at, level = parse_line(line)
        if level is None and entry is not None:
            entry.lines.append(line)
            continue
        if entry is not None:
            yield entry
        entry = Entry(at, level, [line])
    if entry is not None:
        yield entry


def _read(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                yield line.rstrip("\n")
    except FileNotFoundError:  # rotated away while we read
        return


@dataclass
class Filter:
    """Which events `smsgw log` shows."""

    since: datetime | None = None
    msg_id: str | None = None
    level: str | None = None

    def __post_init__(self) -> None:
        self._rank = LEVELS.index(self.level.upper()) if self.level else 0
        self._id = None if self.msg_id is None else re.compile(
            r"(?<![\w-])" + re.escape(printable(self.msg_id)) + r"(?![\w-])")

    def keep(self, entry: Entry) -> bool:
        if self.since is not None and (entry.at is None or entry.at < self.since):
            return False
        if self.level and (entry.level is None or LEVELS.index(entry.level) < self._rank):
            return False
        return self._id is None or any(self._id.search(line) for line in entry.lines)


def show(current: Path, lines: int, wanted: Filter, follow: bool,
         echo: Callable[[str], None], poll: float = 0.5) -> None:
    """Print the last `lines` lines of the events `wanted` keeps, across the rotated
    files; with `follow`, then every new event it keeps until interrupted."""
    files = log_files(current)
    if not files:
        raise UserError(f"no log yet ({current}); it starts with `smsgw run`")
    tail: deque[str] = deque(maxlen=lines)
    if lines:
        for path in files:
            for entry in entries(_read(path)):
                if wanted.keep(entry):
                    tail.extend(entry.lines)
    for line in tail:
        echo(line)
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            _follow(current, wanted, echo, poll)


def _follow(current: Path, wanted: Filter, echo: Callable[[str], None], poll: float) -> None:
    """Print the events appended to the log from now on, following its rotation."""
    fh = None
    inode = None
    showing = False  # whether the event being continued was shown
    partial = ""
    rotated = False  # the file was renamed: read the old one to its end, then the new one
    try:
        while True:
            if fh is None:
                try:
                    fh = open(current, encoding="utf-8", errors="replace")  # noqa: SIM115
                except FileNotFoundError:
                    time.sleep(poll)
                    continue
                if inode is None:
                    fh.seek(0, os.SEEK_END)  # what is there was shown already
                inode = os.fstat(fh.fileno()).st_ino
            chunk = fh.readline()
            if chunk:
                partial += chunk
                if not partial.endswith("\n"):
                    continue  # a line being written: wait for its end
                line, partial = partial.rstrip("\n"), ""
                at, level = parse_line(line)
                if level is not None:
                    showing = wanted.keep(Entry(at, level, [line]))
                if showing:
                    echo(line)
                continue
            if rotated:  # the old file is read to its end: the new file from its start
                if partial:  # its last line was left without its end: show it all the same
                    line, partial = partial, ""
                    at, level = parse_line(line)
                    if level is not None:
                        showing = wanted.keep(Entry(at, level, [line]))
                    if showing:
                        echo(line)
                fh.close()
                fh = None
                rotated = False
                continue
            time.sleep(poll)
            # Lines may have been appended to the old file during the sleep, just before
            # the rotation: read them first (the loop above) on the next turn.
            with contextlib.suppress(FileNotFoundError):  # renamed, the new not yet there
                rotated = os.stat(current).st_ino != inode
    finally:
        if fh is not None:
            fh.close()
