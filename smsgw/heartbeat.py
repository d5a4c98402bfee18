"""Heartbeat pings for a monitoring service (`smsgw config --ping-url URL`).

After each cycle the daemon tells the Heartbeat how it went. A healthy cycle GETs the ping
URL, at most once per `every` seconds; an unhealthy one (the exchange with the webapp
failed, the phone reported an error, or a step hit a bug) GETs the URL with `/fail`
appended to its path, the convention of healthchecks.io and its kin. A change between
healthy and unhealthy is signalled at once.

The GET runs in a daemon thread, so the cycle never waits for it: at most one ping is in
flight, and one that is still running when the next is due is skipped (or, past
`abandon_after`, abandoned: its result is ignored). Failures of the ping itself are
logged once per streak. The URL never appears in a log line: services put their token in
its path, so it is shown as `scheme://host/***`.

No requests here (`smsgw status` reads the last ping's record through this module): the
HTTP GET is a function given by the caller (webapp.Pinger.get).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .config import atomic_write_text, redact_ping_url
from .models import to_iso, utcnow

if TYPE_CHECKING:
    from .gateway import CycleReport

logger = logging.getLogger(__name__)

PING_TIMEOUT = 10.0  # seconds one ping may take in all
RECORD_NAME = "heartbeat.json"  # the last ping and its result, beside the state


def fail_url(url: str) -> str:
    """The URL with `/fail` appended to its path, query kept: `https://h/abc?x=1` ->
    `https://h/abc/fail?x=1`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/fail"))


def healthy(report: CycleReport | None) -> bool:
    """A cycle is healthy when it ran, and neither the webapp, the phone nor a bug in a
    step made it report an error."""
    return report is not None and not report.errors and not report.internal_errors


class Heartbeat:
    """Decides when to ping and which URL; the GET itself is `get(url) -> (ok, text)`."""

    def __init__(self, url: str, every: float, get: Callable[[str], tuple[bool, str]], *,
                 record: Path | None = None, abandon_after: float = 3 * PING_TIMEOUT,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.every = every
        self.get = get
        self.record = record
        self.abandon_after = abandon_after
        self.monotonic = monotonic
        self.shown = redact_ping_url(url)
        self._last: tuple[float, bool] | None = None  # when the last ping started, and kind
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._generation = 0  # a ping's result counts only if it is still the current one
        self._lock = threading.Lock()
        self._failing = False  # in a streak of failed pings (logged at its start only)

    def after_cycle(self, report: CycleReport | None) -> None:
        """Ping for this cycle if one is due; returns at once."""
        good = healthy(report)
        now = self.monotonic()
        if self._last is not None and self._last[1] == good and now - self._last[0] < self.every:
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                if now - self._started < self.abandon_after:
                    logger.debug("heartbeat: the previous ping is still running; skipped")
                    return
                logger.warning("heartbeat: a ping to %s hung for %.0f s; abandoned",
                               self.shown, now - self._started)
            self._generation += 1
            generation = self._generation
            self._started = now
            self._last = (now, good)
            self._thread = threading.Thread(target=self._ping, args=(good, generation),
                                            name="smsgw-heartbeat", daemon=True)
            self._thread.start()

    def join(self, timeout: float = PING_TIMEOUT + 1) -> None:
        """Wait at most `timeout` seconds for the ping in flight (for `smsgw run --once`)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _ping(self, good: bool, generation: int) -> None:
        kind = "ok" if good else "fail"
        what = "healthy" if good else "/fail"
        try:
            ok, text = self.get(self.url if good else fail_url(self.url))
        except Exception as exc:  # noqa: BLE001 - a bug of ours: logged whole, never fatal
            logger.error("internal error in the heartbeat ping (a bug in smsgw, please "
                         "report it): %s", type(exc).__name__, exc_info=True)
            return
        with self._lock:
            if generation != self._generation:
                return  # abandoned: a newer ping has the say
            if ok:
                if self._failing:
                    logger.info("heartbeat: pings reach %s again", self.shown)
                self._failing = False
                logger.debug("heartbeat: %s ping to %s: %s", what, self.shown, text)
            else:
                if not self._failing:
                    logger.warning("heartbeat: a %s ping to %s failed: %s (not logged "
                                   "again until a ping gets through)", what, self.shown, text)
                self._failing = True
            self._save(kind, ok, text)

    def _save(self, kind: str, ok: bool, text: str) -> None:
        if self.record is None:
            return
        entry = {"at": to_iso(utcnow()), "kind": kind, "ok": ok, "result": text}
        try:
            atomic_write_text(self.record, json.dumps(entry) + "\n")
        except OSError as exc:
            logger.debug("heartbeat: cannot write %s: %s", self.record, exc.strerror)


def last_ping(data_dir: Path) -> dict[str, Any] | None:
    """The record of the last ping (`at`, `kind` ok/fail, `ok`, `result`), or None."""
    try:
        data = json.loads((data_dir / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not {"at", "kind", "ok", "result"} <= data.keys():
        return None
    return data
