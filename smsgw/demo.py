"""`smsgw demo`: the whole flow on a simulated phone against the built-in reference webapp.

Everything is real except the phone and the clock: the webapp is the reference server on
127.0.0.1 spoken to over HTTP, the state is a real store in a temporary folder. The clock
is virtual (10 s a cycle) so that retries and confirmations play out in a few seconds.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .actions import fmt_time
from .config import Settings
from .gateway import Gateway
from .models import utcnow
from .phone.simulated import SimulatedPhone
from .store import Store
from .testserver import ReferenceWebapp
from .webapp import WebappClient

STEP = timedelta(seconds=10)
MAX_CYCLES = 80

LONG_TEXT = (
    "Reminder: the community health clinic in Kisumu runs its vaccination day on Saturday "
    "from 8am to 4pm. Please bring the child's health card, and tell your neighbours with "
    "children under five. Vitamin A and deworming tablets will also be given. Questions? "
    "Reply to this number or ask your community health volunteer. Thank you!"
)


class VirtualClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = utcnow().replace(microsecond=0)
        self.start = self.now

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now

    def label(self) -> str:
        secs = int((self.now - self.start).total_seconds())
        return f"t+{secs // 60:02d}:{secs % 60:02d}"


def run_demo(echo: Callable[[str], None] = print, verbose: bool = False) -> int:
    """Run the demo and print a transcript. Returns 0 only if the whole flow completed."""
    events = _Events()
    logger = logging.getLogger("smsgw")
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(events)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="    log: %(message)s")
        logger.propagate = True
    clock = VirtualClock()
    webapp = ReferenceWebapp()
    url = webapp.start()
    try:
        with tempfile.TemporaryDirectory(prefix="smsgw-demo-") as tmp:
            return _run(echo, clock, webapp, url, Path(tmp), events)
    finally:
        webapp.stop()
        logger.removeHandler(events)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


class _Events(logging.Handler):
    """Collects the gateway's warnings (retries, refusals) for the transcript."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _run(echo: Callable[[str], None], clock: VirtualClock, webapp: ReferenceWebapp, url: str,
         folder: Path, events: _Events) -> int:
    phone = SimulatedPhone(clock)
    store = Store(folder / "state")
    client = WebappClient(url)
    gateway = Gateway(store, client, phone, Settings(url=url), clock)

    echo(f"smsgw demo: reference webapp at {url}, simulated phone, state in a temp folder")
    echo("")
    gateway.cycle()  # first start: the phone's old inbox is not forwarded

    queued = {
        "demo-hello": ("+254700000001", "Hello from the demo webapp!"),
        "demo-long": ("+254700000002", LONG_TEXT),
        "demo-bad-number": ("not a number", "This one cannot be sent"),
        "demo-twice": ("+254700000003", "This message is offered twice but sent once"),
    }
    echo("The webapp queues:")
    for msg_id, (to, text) in queued.items():
        webapp.queue(to, text, id=msg_id)
        echo(f"  {msg_id:<16} to {to:<14} {_short(text)}")
    phone.fail_next_sends(1)
    echo("The phone will fail its first send, so one message is retried.")
    incoming = [("+254711000001", "Hello gateway, this is a patient"),
                ("+254711000002", "STOP")]
    for sender, text in incoming:
        phone.receive(sender, text)
    echo(f"The phone receives {len(incoming)} SMS.")
    echo("")

    seen_status: dict[str, list[str]] = {}
    sends_seen = 0
    received_seen = 0
    offered_again = False
    for _ in range(MAX_CYCLES):
        clock.now += STEP
        report = gateway.cycle()
        t = clock.label()
        for number, text in phone.sends[sends_seen:]:
            echo(f"{t}  phone    sends to {number}: {_short(text)}")
        sends_seen = len(phone.sends)
        for msg in webapp.received()[received_seen:]:
            echo(f"{t}  webapp   received SMS {msg['id'][:8]}… from {msg['from']}: "
                 f"{_short(msg['content'])}")
        received_seen = len(webapp.received())
        for msg_id, statuses in webapp.statuses().items():
            for status in statuses[len(seen_status.get(msg_id, [])):]:
                reason = _reason(webapp, msg_id, status)
                echo(f"{t}  webapp   {msg_id} is {status}{reason}")
            seen_status[msg_id] = list(statuses)
        for line in events.lines:
            echo(f"{t}  gateway  {line}")
        events.lines.clear()
        for err in report.errors:
            echo(f"{t}  error    {err}")
        if not offered_again and webapp.status_of("demo-twice") == "SENT":
            webapp.offer_again("demo-twice")
            offered_again = True
            echo(f"{t}  webapp   offers demo-twice again (same id)")
        if offered_again and _settled(webapp, queued, incoming, report):
            break

    return _verdict(echo, webapp, phone, queued, incoming)


def _settled(webapp: ReferenceWebapp, queued: dict[str, tuple[str, str]],
             incoming: list[tuple[str, str]], report) -> bool:  # type: ignore[no-untyped-def]
    final = all(webapp.status_of(i) in ("SENT", "FAILED") for i in queued)
    twice = webapp.statuses().get("demo-twice", [])
    return (final and len(webapp.received()) >= len(incoming) and twice.count("SENT") >= 2
            and not report.more and not report.awaiting)


def _verdict(echo: Callable[[str], None], webapp: ReferenceWebapp, phone: SimulatedPhone,
             queued: dict[str, tuple[str, str]], incoming: list[tuple[str, str]]) -> int:
    echo("")
    echo("Result:")
    ok = True
    for msg_id, (_to, text) in queued.items():
        status = webapp.status_of(msg_id)
        reason = _reason(webapp, msg_id, status or "")
        sends = sum(1 for n, t in phone.sends if t == text.strip())
        good = status == "SENT" or (status == "FAILED" and bool(reason))
        if msg_id == "demo-twice":
            good = good and sends == 1
        ok &= good
        echo(f"  {'✓' if good else '✗'} {msg_id:<16} {status}{reason}; handed to the phone "
             f"{sends} time{'s' if sends != 1 else ''}")
    got = webapp.received()
    for sender, text in incoming:
        match = [m for m in got if m.get("from") == sender and m.get("content") == text]
        fields = bool(match) and all(k in match[0] for k in
                                     ("id", "from", "content", "sms_sent", "sms_received"))
        ok &= fields
        echo(f"  {'✓' if fields else '✗'} SMS from {sender} reached the webapp"
             + (f" as {match[0]['id']} (received {_when(match[0]['sms_received'])})"
                if match else ""))
    echo("")
    echo("demo complete: every promise held" if ok else "demo FAILED: see the ✗ lines above")
    return 0 if ok else 1


def _when(ms: object) -> str:
    """The protocol's milliseconds since the epoch as a UTC time for people."""
    if not isinstance(ms, int) or isinstance(ms, bool):
        return repr(ms)
    return fmt_time(datetime.fromtimestamp(ms / 1000, timezone.utc))


def _reason(webapp: ReferenceWebapp, msg_id: str, status: str) -> str:
    if status != "FAILED":
        return ""
    for update in reversed(webapp.updates()):
        if update.get("id") == msg_id and update.get("status") == "FAILED":
            return f" ({update.get('reason')})"
    return ""


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 1] + "…")
