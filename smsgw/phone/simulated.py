"""An in-memory phone for `smsgw demo` and tests, modelled on what Termux:API shows.

Like Android's SMS provider it keeps one table of rows with increasing `_id`s; a send
writes a `sent` row (or a `failed` one when told to fail), dates have second resolution,
and there are no delivery reports.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..models import Clock, utcnow
from .base import FAILED, INBOX, SENT, Phone, SmsRow, java_trim, normalize_number


@dataclass
class _Row:
    row_id: int
    kind: str
    address: str
    body: str
    date: datetime


class SimulatedPhone(Phone):
    """A phone in memory: `receive()` injects SMS, `fail_next_sends()` makes sends fail."""

    name = "simulated"

    def __init__(self, clock: Clock = utcnow) -> None:
        self._clock = clock
        self._rows: list[_Row] = []
        self._lock = threading.Lock()
        self._fail_next = 0
        self.radio_off = False
        self.sends: list[tuple[str, str]] = []  # every (number, text) handed over

    def _now(self) -> datetime:
        return self._clock().replace(microsecond=0)

    def _add(self, kind: str, address: str, body: str) -> _Row:
        row_id = self._rows[-1].row_id + 1 if self._rows else 1
        row = _Row(row_id, kind, address, body, self._now())
        self._rows.append(row)
        return row

    def receive(self, address: str, body: str) -> None:
        """An SMS arrives from `address`."""
        with self._lock:
            self._add(INBOX, address, body)

    def fail_next_sends(self, count: int) -> None:
        """The next `count` sends end as failed rows, as with no service or radio off."""
        with self._lock:
            self._fail_next = count

    def send(self, number: str, text: str) -> None:
        number = normalize_number(number)
        with self._lock:
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
        with self._lock:
            last_id = self._rows[-1].row_id if self._rows else 0
            if position is None:
                if since is None:
                    return [], {"id": last_id}
                if since.tzinfo is None:
                    since = since.replace(tzinfo=timezone.utc)
                floor = since.replace(microsecond=0)  # row dates have second resolution
                return [self._public(r) for r in self._rows
                        if r.kind == INBOX and r.date >= floor], {"id": last_id}
            after = int(position.get("id", 0))
            rows = [self._public(r) for r in self._rows if r.kind == INBOX and r.row_id > after]
            return rows, {"id": max([after] + [r.row_id for r in rows if r.row_id is not None])}

    def read_outgoing(self, since: datetime) -> list[SmsRow]:
        with self._lock:
            return [self._public(r) for r in self._rows
                    if r.kind in (SENT, FAILED) and r.date >= since.replace(microsecond=0)]

    def diagnose(self) -> str | None:
        return "radio off" if self.radio_off else None

    @staticmethod
    def _public(row: _Row) -> SmsRow:
        return SmsRow(kind=row.kind, address=row.address, body=row.body, date=row.date,
                      row_id=row.row_id)
