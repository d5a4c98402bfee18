"""A simulated phone for `smsgw demo`, tests and trying smsgw off a phone, modelled on what
Termux:API shows.

Like Android's SMS provider it keeps one table of rows with increasing `_id`s; a send
writes a `sent` row (or a `failed` one when told to fail), dates have second resolution,
and there are no delivery reports. `receive_raw()` stores an inbox row that cannot be
read, which read_inbox sets aside for take_bad_rows() as TermuxPhone does.

The provider lives in memory (`file=None`: `smsgw demo`, tests), or in a JSON file
(`smsgw run --phone simulated`, FILE_NAME in the state folder) so that it survives
restarts like a phone and `smsgw simulate ...` can drive it from another process: each
call reads the file under an exclusive `flock` of a lock file beside it, and a change is
written atomically (0600) before the lock is released.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import atomic_write_text, check_private_file, open_private
from ..errors import StateError
from ..health import PhoneHealth
from ..models import Clock, from_iso, to_iso, utcnow
from .base import FAILED, INBOX, SENT, BadRow, Phone, SmsRow, java_trim, normalize_number

FILE_NAME = "simulated-phone.json"  # in the state folder
FILE_VERSION = 1


@dataclass
class _Row:
    row_id: int
    kind: str
    address: str
    body: str
    date: datetime
    bad: BadRow | None = None  # an unreadable row (receive_raw)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"_id": self.row_id, "type": self.kind, "address": self.address,
                                "body": self.body, "date": to_iso(self.date)}
        if self.bad is not None:
            data["bad"] = {"raw": self.bad.raw, "reason": self.bad.reason, "key": self.bad.key}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Row:
        bad = data.get("bad")
        date = from_iso(data["date"])
        row_id = data["_id"]
        if date is None or not isinstance(row_id, int) or not all(
                isinstance(data[k], str) for k in ("type", "address", "body")):
            raise ValueError("a row of the wrong shape")
        return cls(row_id, data["type"], data["address"], data["body"], date,
                   BadRow(str(bad["raw"]), str(bad["reason"]), str(bad["key"]))
                   if bad is not None else None)


@dataclass(frozen=True)
class PhoneView:
    """What `smsgw simulate show` prints: every row oldest first (with its BadRow when the
    row cannot be read), the radio, and how many sends are still set to fail."""

    rows: list[tuple[SmsRow, BadRow | None]]
    radio_off: bool
    fail_next: int


class SimulatedPhone(Phone):
    """A simulated phone: `receive()` injects SMS, `fail_next_sends()` makes sends fail,
    `radio_off` makes every send fail. In memory, or in `file` (see the module)."""

    name = "simulated"

    def __init__(self, clock: Clock = utcnow, file: Path | str | None = None) -> None:
        self._clock = clock
        self._rows: list[_Row] = []
        self._lock = threading.RLock()
        self._fail_next = 0
        self._radio_off = False
        self.sends: list[tuple[str, str]] = []  # every (number, text) handed over
        self._bad_rows: dict[str, BadRow] = {}  # set aside by read_inbox, not yet taken
        self.file = Path(file) if file is not None else None
        self._holding = False  # this process holds the file's lock (calls nest)
        self._dirty = False
        self._seen: str | None = None  # the file's text when this process last read it
        if self.file is not None:
            with self._held(write=not self.file.exists()):
                for tmp in self.file.parent.glob(f".{self.file.name}.*.tmp"):  # a crash's
                    tmp.unlink(missing_ok=True)

    # the file ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _held(self, write: bool = False) -> Iterator[None]:
        """The provider for one call: in file mode, read under the file lock, and written
        back atomically if `write` (a nested call joins the outer one)."""
        with self._lock:
            if self.file is None or self._holding:
                self._dirty = self._dirty or write
                yield
                return
            fd = self._lock_file()
            try:
                self._holding, self._dirty = True, write
                self._load()
                yield
                if self._dirty:
                    self._save()
            except BaseException:
                self._seen = None  # the rows in memory may hold a change never written
                raise
            finally:
                self._holding = False
                os.close(fd)

    def _lock_file(self) -> int:
        assert self.file is not None
        lock = self.file.with_name(self.file.name + ".lock")
        try:
            fd = open_private(lock, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise StateError(f"cannot use the simulated phone's folder {lock.parent}: "
                             f"{exc.strerror}") from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _load(self) -> None:
        assert self.file is not None
        check_private_file(self.file)
        try:
            text = self.file.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._rows, self._fail_next, self._radio_off, self._seen = [], 0, False, None
            return
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read the simulated phone's file {self.file} ({exc}): "
                             "move it away to start with an empty phone") from None
        if text == self._seen:  # unchanged since this process last read or wrote it
            return
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
                raise ValueError("not a simulated phone")
            if int(data.get("version", FILE_VERSION)) > FILE_VERSION:
                raise ValueError("written by a newer smsgw")
            rows = [_Row.from_json(r) for r in data["rows"]]
            fail_next, radio_off = int(data.get("fail_next", 0)), bool(data.get("radio_off"))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            why = f"no {exc} field" if isinstance(exc, KeyError) else str(exc)
            raise StateError(f"the simulated phone's file {self.file} is damaged ({why}): "
                             "move it away to start with an empty phone") from None
        self._rows, self._fail_next, self._radio_off, self._seen = (
            rows, fail_next, radio_off, text)

    def _save(self) -> None:
        assert self.file is not None
        data = {"version": FILE_VERSION, "radio_off": self._radio_off,
                "fail_next": self._fail_next, "rows": [r.to_json() for r in self._rows]}
        # ASCII JSON: a lone surrogate in a body (half an emoji) survives as its escape.
        text = json.dumps(data, indent=0) + "\n"
        atomic_write_text(self.file, text)
        self._seen = text

    # the radio ---------------------------------------------------------------------
    @property
    def radio_off(self) -> bool:
        """While True every send ends as a failed row, as with no service on Android."""
        with self._held():
            return self._radio_off

    @radio_off.setter
    def radio_off(self, off: bool) -> None:
        with self._held(write=True):
            self._radio_off = bool(off)

    def _now(self) -> datetime:
        return self._clock().replace(microsecond=0)

    def _add(self, kind: str, address: str, body: str, bad: BadRow | None = None) -> _Row:
        row_id = self._rows[-1].row_id + 1 if self._rows else 1
        row = _Row(row_id, kind, address, body, self._now(), bad)
        self._rows.append(row)
        self._dirty = True
        return row

    def receive(self, address: str, body: str) -> None:
        """An SMS arrives from `address`."""
        with self._held(write=True):
            self._add(INBOX, address, body)

    def receive_raw(self, entry: Any, reason: str = "unreadable row") -> BadRow:
        """An inbox row arrives that cannot be read: `entry` is what termux-sms-list would
        print for it (any JSON value). read_inbox moves past it and sets it aside; returns
        the BadRow take_bad_rows() will give."""
        bad = BadRow.of(entry, reason)
        with self._held(write=True):
            self._add(INBOX, "", "", bad)
        return bad

    def take_bad_rows(self) -> list[BadRow]:
        with self._lock:
            rows = list(self._bad_rows.values())
            self._bad_rows.clear()
        return rows

    def fail_next_sends(self, count: int) -> None:
        """The next `count` sends end as failed rows, as with no service or radio off."""
        with self._held(write=True):
            self._fail_next = count

    def view(self) -> PhoneView:
        """Every row, the radio and the sends still set to fail (`smsgw simulate show`)."""
        with self._held():
            return PhoneView([(self._public(r), r.bad) for r in self._rows], self._radio_off,
                             self._fail_next)

    def send(self, number: str, text: str) -> None:
        number = normalize_number(number)
        with self._held():
            self.sends.append((number, text))
            body = java_trim(text)
            if not body:
                # Termux:API: SmsManager.divideMessage("") throws and the app swallows it.
                return
            failing = self.radio_off or self._fail_next > 0
            if self._fail_next > 0:
                self._fail_next -= 1
            # Android writes the row as sent, then flips it to failed.
            self._add(FAILED if failing else SENT, number, body)

    def read_inbox(self, position: dict[str, Any] | None,
                   since: datetime | None = None) -> tuple[list[SmsRow], dict[str, Any]]:
        with self._held():
            last_id = self._rows[-1].row_id if self._rows else 0
            if position is None:
                if since is None:
                    return [], {"id": last_id}
                if since.tzinfo is None:
                    since = since.replace(tzinfo=timezone.utc)
                floor = since.replace(microsecond=0)  # row dates have second resolution
                return self._inbox(r for r in self._rows if r.date >= floor), {"id": last_id}
            after = int(position.get("id", 0))
            return self._inbox(r for r in self._rows if r.row_id > after), {
                "id": max([after] + [r.row_id for r in self._rows if r.kind == INBOX])}

    def _inbox(self, rows: Any) -> list[SmsRow]:
        """The readable inbox rows of `rows`; the bad ones are set aside."""
        out = []
        for r in rows:
            if r.kind != INBOX:
                continue
            if r.bad is not None:
                self._bad_rows.pop(r.bad.key, None)
                self._bad_rows[r.bad.key] = r.bad
            else:
                out.append(self._public(r))
        return out

    def read_outgoing(self, since: datetime) -> list[SmsRow]:
        with self._held():
            return [self._public(r) for r in self._rows if r.kind in (SENT, FAILED)
                    and r.bad is None and r.date >= since.replace(microsecond=0)]

    def diagnose(self) -> str | None:
        return "radio off" if self.radio_off else None

    @staticmethod
    def _public(row: _Row) -> SmsRow:
        return SmsRow(kind=row.kind, address=row.address, body=row.body, date=row.date,
                      row_id=row.row_id)

    # A plugged-in phone with a SIM on a network; a test sets `phone.health` to another
    # PhoneHealth (e.g. a low battery), or None for a phone that cannot tell.
    health: PhoneHealth | None = PhoneHealth(
        battery_percent=80, plugged="PLUGGED_AC", battery_status="CHARGING",
        battery_health="GOOD", temperature=30.0, sim_state="ready",
        network_operator="Simulated", network_type="lte", data_state="connected")

    def read_health(self) -> PhoneHealth | None:
        return self.health
