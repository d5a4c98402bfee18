"""Phones smsgw can drive: the Phone interface, Termux:API, and a simulated phone."""

from .base import (
    FAILED,
    INBOX,
    SENT,
    BadRow,
    InvalidNumber,
    Phone,
    SmsRow,
    normalize_number,
)

__all__ = ["FAILED", "INBOX", "SENT", "BadRow", "InvalidNumber", "Phone", "SmsRow",
           "normalize_number"]
