"""An in-memory phone for `smsgw demo` and tests, modelled on what Termux:API shows.

Like Android's SMS provider it keeps one table of rows with increasing `_id`s; a send
writes a `sent` row (or a `failed` one when told to fail), dates have second resolution,
and there are no delivery reports. `receive_raw()` stores an inbox row that cannot be
read, which read_inbox sets aside for take_bad_rows() as TermuxPhone does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..health import PhoneHealth
from ..models import Clock, utcnow
from .base import FAILED, INBOX, SENT, BadRow, Phone, SmsRow, java_trim, normalize_number


@dataclass
class _Row:
    row_id: int
    kind: str
    address: str
    body: str
    date: datetime
    bad: BadRow | None = None  # an unreadable row (receive_raw)


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
        self._bad_rows: dict[str, BadRow] = {}  # set aside by read_inbox, not yet taken

    def _now(self) -> datetime:
        return self._clock().replace(microsecond=0)

    def _add(self, kind: str, address: str, body: str, bad: BadRow | None = None) -> _Row:
        row_id = self._rows[-1].row_id + 1 if self._rows else 1
        row = _Row(row_id, kind, address, body, self._now(), bad)
        self._rows.append(row)
        return row

    def receive(self, address: str, body: str) -> None:
        """An SMS arrives from `address`."""
        with self._lock:
            self._add(INBOX, address, body)

    def receive_raw(self, entry: Any, reason: str = "unreadable row") -> BadRow:
        """An inbox row arrives that cannot be read: `entry` is what termux-sms-list would
        print for it (any JSON value). read_inbox moves past it and sets it aside; returns
        the BadRow take_bad_rows() will give."""
        bad = BadRow.of(entry, reason)
        with self._lock:
            self._add(INBOX, "", "", bad)
        return bad

    def take_bad_rows(self) -> list[BadRow]:
        with self._lock:
            rows = list(self._bad_rows.values())
            self._bad_rows.clear()
        return rows

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
        with self._lock:
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
