"""The Phone interface: what smsgw needs from Android, shaped by what Termux:API really gives.

There are no delivery reports and no send results: a send only hands the text to the
phone, and what happened is learned later from the rows Android writes in its SMS
provider (type sent, or failed). See tests/fakes/README.md (the facts, with their sources).
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import UserError
from ..health import PhoneHealth

INBOX = "inbox"
SENT = "sent"
FAILED = "failed"

_NUMBER = re.compile(r"\+?[0-9]{3,20}")
_SEPARATORS = str.maketrans("", "", " -.")


class InvalidNumber(UserError):
    """A destination that must never reach a command line."""


def normalize_number(raw: object) -> str:
    """Return the number as `+digits` or `digits`, or raise InvalidNumber.

    Spaces, dashes and dots are dropped; anything else that is not a digit (commas,
    letters, shell or option characters) is refused.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidNumber(f"not a phone number: {raw!r}")
    number = raw.strip().translate(_SEPARATORS)
    if not _NUMBER.fullmatch(number):
        raise InvalidNumber(f"not a phone number: {raw!r}")
    return number


_JAVA_TRIMMED = "".join(chr(c) for c in range(0x21))


def java_trim(text: str) -> str:
    """Trim as Termux:API does (Java's String.trim: every char <= U+0020, nothing else)."""
    return text.strip(_JAVA_TRIMMED)


def number_digits(address: str) -> str:
    """The digits that identify a number, so `+254 7..`, `00254..` and `2547..` compare equal."""
    digits = "".join(ch for ch in address if ch.isdigit())
    return digits[2:] if digits.startswith("00") else digits


@dataclass(frozen=True)
class SmsRow:
    """One row of Android's SMS provider as termux-sms-list shows it.

    `date` is the row's date as aware UTC (second resolution: termux-sms-list prints
    `yyyy-MM-dd HH:mm:ss`). `row_id` is the provider's `_id`, None on old Termux:API.
    """

    kind: str  # INBOX, SENT, FAILED, or another provider type name
    address: str
    body: str
    date: datetime
    row_id: int | None = None

    @property
    def key(self) -> str:
        """Identity of the row across reads: `_id` alone may be reused after a delete.

        The kind is left out on purpose: a sent row that turns failed is the same row.
        """
        # surrogatepass: a lone surrogate (half an emoji, printed by termux-sms-list as a
        # \udXXX escape) must not raise; every body valid in UTF-8 keeps the same key.
        digest = hashlib.sha256(self.body.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"{self.row_id}|{number_digits(self.address)}|{int(self.date.timestamp())}|{digest}"


BAD_RAW_CHARS = 500  # characters of a bad row's JSON text kept in BadRow.raw
BAD_REASON_CHARS = 200  # characters of a BadRow.reason
# Fields of a listed row that change while the row stays the same: whether it was read on the
# phone, the contact name, the conversation. A bad row's key leaves them out.
_VOLATILE_FIELDS = ("read", "sender", "threadid")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def json_text(value: Any, *, sort_keys: bool = False) -> str:
    """`value` as compact JSON that is always valid UTF-8: non-ASCII text stays readable,
    a lone surrogate becomes its \\udXXX escape."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=sort_keys, separators=(",", ":"),
                      default=repr)
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class BadRow:
    """An inbox row the phone listed but that cannot be read as an SMS (no `received` date,
    an unreadable one, not a JSON object, a body that is not a text...): set aside, so it
    never blocks the rows after it. See Phone.take_bad_rows.

    `raw` is the entry as compact JSON (valid UTF-8, at most BAD_RAW_CHARS characters, cut
    with "..."); `reason` says what is wrong (at most BAD_REASON_CHARS characters, never the
    body's text); `key` ("bad|" and 16 hex digits) is a hash of the whole entry without the
    fields that change while the row stays the same (`read`, `sender`, `threadid`), so the
    same row listed again has the same key.
    """

    raw: str
    reason: str
    key: str

    @classmethod
    def of(cls, entry: Any, reason: str) -> BadRow:
        """The BadRow for `entry` (a JSON value as listed) that is unreadable for `reason`."""
        stable = ({k: v for k, v in entry.items() if k not in _VOLATILE_FIELDS}
                  if isinstance(entry, dict) else entry)
        digest = hashlib.sha256(json_text(stable, sort_keys=True).encode("utf-8")).hexdigest()
        return cls(raw=_clip(json_text(entry), BAD_RAW_CHARS),
                   reason=_clip(" ".join(reason.split()), BAD_REASON_CHARS),
                   key=f"bad|{digest[:16]}")


class Phone(ABC):
    """What the gateway needs from a phone. Implementations: TermuxPhone, SimulatedPhone."""

    name: str = "phone"

    @abstractmethod
    def send(self, number: str, text: str) -> None:
        """Hand one SMS to the phone. Returning means PENDING, never SENT.

        Raises InvalidNumber before anything runs, PhoneError when the phone refused
        (with `maybe_sent` set when the outcome cannot be known).
        """

    @abstractmethod
    def read_inbox(self, position: dict[str, Any] | None,
                   since: datetime | None = None) -> tuple[list[SmsRow], dict[str, Any]]:
        """Rows received after `position`, oldest first, and the position after them.

        `position` is opaque JSON-able state owned by the implementation. With None
        (first start):
        - `since` None: nothing is returned and the position is set after the newest row,
          so the phone's old inbox is not forwarded;
        - `since` an aware datetime (e.g. when the gateway was set up): the inbox rows
          received at or after `since` are returned, compared at second resolution (a row
          whose local `received` time may stand for a second >= `since` counts), so SMS that
          arrived before the first successful read are forwarded once; the position is set
          after the newest row.
        When `position` is given, `since` is ignored.
        """

    @abstractmethod
    def read_outgoing(self, since: datetime) -> list[SmsRow]:
        """Sent and failed rows dated at or after `since`, oldest first."""

    def take_bad_rows(self) -> list[BadRow]:
        """The inbox rows set aside as unreadable by the read_inbox calls since the last call
        (each key once, oldest first), and forget them.

        read_inbox never fails on such a row: its position moves past it and the rows around
        it are returned as usual. A row is set aside by the read that first meets it; a read
        from an older position may set the same row aside again (same `key`). Call this
        right after read_inbox and store both together.
        """
        return []

    def diagnose(self) -> str | None:
        """Best-known cause of a failed send ("no SIM", "no network operator"), or None."""
        return None

    def abort(self) -> None:  # noqa: B027 - a default, not an abstract method
        """End the call to the phone in progress at once, and refuse new ones (a second
        stop signal). Signal-safe: sets a flag, at most a kill(2). Default: nothing runs."""

    def read_health(self) -> PhoneHealth | None:
        """The phone's battery, SIM and network now (without `at`), or None when this
        phone cannot tell. Never raises for the phone's own failures (a hang, a missing
        permission): what could not be read is in PhoneHealth.problem. It costs phone
        calls: the gateway samples it at most every HEALTH_EVERY."""
        return None
