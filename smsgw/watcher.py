"""Optional notification watcher: cycle at once when a messaging app posts a notification.

Termux:API has no SMS-received event; `termux-notification-list` is the nearest thing. It
needs Notification Access for Termux:API, and without it the command hangs: the watcher
then turns itself off and `smsgw status` says why.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .errors import PhoneError, PhoneTimeout
from .models import utcnow
from .phone import termux
from .store import Store

logger = logging.getLogger(__name__)

# Package names of SMS apps: Google Messages, AOSP, Samsung, Signal, QKSMS, Fossify...
MESSAGING_HINTS = ("messaging", "mms", "sms")


def is_messaging_app(package: str) -> bool:
    """Whether a notification's package looks like an SMS app (Google, AOSP, Samsung, Signal)."""
    package = package.lower()
    return any(hint in package for hint in MESSAGING_HINTS)


class NotificationWatcher:
    """Polls termux-notification-list; `check()` is True when a new SMS notification appeared."""

    period = 15.0

    def __init__(self, store: Store, timeout: float = 10.0,
                 abort: termux.CallAbort | None = None) -> None:
        self.store = store
        self.timeout = timeout
        self.abort = abort  # the phone's: a second stop signal ends a call of ours too
        self.enabled = True
        self._seen: set[str] | None = None

    def _say(self, text: str) -> None:
        with self.store.unit(utcnow()) as u:
            u.watcher = text

    def check(self) -> bool:
        if not self.enabled:
            return False
        try:
            out = termux.run_command(("termux-notification-list",), timeout=self.timeout,
                                     abort=self.abort)
        except PhoneTimeout:
            self.enabled = False
            why = ("disabled: termux-notification-list did not answer; grant Notification "
                   "Access to Termux:API (Android settings), then restart smsgw")
            logger.warning("notification watcher %s", why)
            self._say(why)
            return False
        except PhoneError as exc:
            logger.info("notification watcher: %s", exc)
            return False
        try:
            items: Any = json.loads(out or "[]")
        except ValueError:
            return False
        if not isinstance(items, list):
            return False
        keys = {f"{n.get('key')}|{n.get('when')}" for n in items
                if isinstance(n, dict) and is_messaging_app(str(n.get("packageName", "")))}
        first = self._seen is None
        new = keys - (self._seen or set())
        self._seen = keys
        if first:
            self._say("watching notifications of messaging apps")
            return False
        if new:
            logger.info("new SMS notification: cycling now")
        return bool(new)
