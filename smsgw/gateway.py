"""One gateway cycle: read the inbox, exchange with the webapp, send what is due, reconcile.

Knows no click, requests, subprocess or tinydb: it works through the Store, a webapp client
(anything with `exchange(messages, updates)`), and a Phone. The clock is a parameter.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from . import alerts, retry, segment
from .alertstate import AlertState, Episode
from .config import Settings, scrub_secrets, secrets_of
from .errors import PhoneError, StateError, WebappError
from .health import PhoneHealth
from .models import (
    AWAITING_PARTS,
    RATE_WINDOW,
    Clock,
    ExchangeProblem,
    InState,
    Offered,
    Outgoing,
    OutState,
    Part,
    PartState,
    PhoneProblem,
    Ref,
    span,
    utcnow,
)
from .phone.base import (
    FAILED,
    SENT,
    InvalidNumber,
    Phone,
    SmsRow,
    java_trim,
    normalize_number,
    number_digits,
)
from .store import Store, Unit

logger = logging.getLogger(__name__)

MAX_ROUNDS = 10  # POSTs in one cycle; bounds a webapp that keeps re-offering known ids
ROW_SLACK = timedelta(seconds=10)  # row dates have second resolution; phone clock jitter
SETTLE = timedelta(seconds=5)  # a sent row may still flip to failed right after it appears
DEFAULT_CAUSE = "the phone recorded the SMS as failed"
CLOCK_JUMP = 300  # seconds the wall clock may drift from the monotonic one between cycles
UNKNOWN_OUTCOME = "outcome unknown: no record on the phone"
HEALTH_EVERY = timedelta(minutes=15)  # the phone's health costs two termux calls a sample
HEALTH_CALLS = 2  # termux calls a health sample costs (battery, SIM and network)
HEALTH_BUDGET = 0.05  # termux calls per cycle the samples may add, on average


def _health_key(health: PhoneHealth) -> tuple[Any, ...]:
    """What of a health sample is worth a line in the event log when it changes."""
    return (health.on_power, health.battery_health, health.sim_state, health.network_operator,
            health.network_type, health.data_state, health.problem)


class WebappClient(Protocol):
    def exchange(self, messages: list[dict[str, Any]], updates: list[dict[str, Any]],
                 health: dict[str, Any] | None = None) -> list[Offered]: ...


@dataclass
class CycleReport:
    """What one cycle did, for logs, the daemon's pacing and tests."""

    received: int = 0
    posts: int = 0
    forwarded: int = 0
    updates_posted: int = 0
    new: int = 0
    known: int = 0
    invalid: int = 0
    handed: int = 0
    confirmed: int = 0
    failed_tries: int = 0
    failed: int = 0
    awaiting: int = 0
    remaining: int = 0
    next_send: datetime | None = None
    errors: list[str] = field(default_factory=list)  # the webapp's or the phone's
    internal_errors: list[str] = field(default_factory=list)  # bugs in smsgw

    @property
    def more(self) -> bool:
        """True when another cycle right away would have work to do."""
        return not self.errors and (self.remaining > 0 or self.new > 0)




@dataclass
class _RateLimited:
    """The rate budget is spent: sending waits until `until`."""

    until: datetime


@dataclass
class _Handoff:
    """One message's sends in flight: what to send and what happened."""

    ref: Ref
    number: str
    texts: list[tuple[int, str]]
    sms: dict[int, int] = field(default_factory=dict)  # SMS parts of each text
    outcome: dict[int, PartState] = field(default_factory=dict)
    error: Exception | None = None
    stop: bool = False


def invalid_reason(msg: Offered) -> str | None:
    """Why a webapp message cannot be sent, or None when it can."""
    if msg.problem:
        return msg.problem
    if not msg.id:
        return "missing id"
    if not msg.to:
        return "missing recipient (to)"
    if not msg.content:
        return "missing content"
    if not java_trim(msg.content):
        # Termux:API trims the text; an empty one makes the app throw and send nothing,
        # with no row and exit 0: refuse it here, not 15 minutes later as "unknown".
        return "empty content"
    try:
        normalize_number(msg.to)
    except InvalidNumber:
        return f"invalid phone number: {msg.to!r}"
    return None


class Gateway:
    """The cycle, over a store, a webapp client and a phone."""

    def __init__(self, store: Store, webapp: WebappClient | None, phone: Phone,
                 settings: Settings, clock: Clock = utcnow,
                 monotonic: Callable[[], float] | None = None) -> None:
        self.store = store
        self.webapp = webapp
        self.phone = phone
        self.settings = settings
        self.clock = clock
        # A test that moves the clock moves time itself, unless it says otherwise.
        self.monotonic = monotonic or (time.monotonic if clock is utcnow
                                       else lambda: clock().timestamp())
        # Parts this process handed over, by monotonic time: a clock that jumps ahead
        # must not empty the rate window.
        self._sent: list[tuple[float, int]] = []
        self._last_tick: tuple[datetime, float] | None = None
        self._rate_waiting: set[str] = set()  # ids whose wait for the rate budget was logged
        self.stopping = False
        self._born = self.monotonic()  # for the health report's uptime
        self._health_at: datetime | None = None  # the last health sample (None: none yet)
        self._health_loaded = False
        self._health_last: PhoneHealth | None = None  # that sample
        self._alerts_at: datetime | None = None  # when the alert step last looked

    def stop(self) -> None:
        """Stop at the next safe point: cut an exchange in progress (what it carried stays
        queued), never a send between its intent and its record. Signal-safe."""
        self.stopping = True
        abort = getattr(self.webapp, "abort", None)
        if abort is not None:
            abort()

    def stop_now(self) -> None:
        """Stop at once (a second stop signal): also end the phone call in progress; a send
        it carried is recorded as awaiting the phone's record, never resent blindly.
        Signal-safe."""
        self.stop()
        abort = getattr(self.phone, "abort", None)
        if abort is not None:
            abort()

    def _watch_clock(self) -> None:
        """Log and record a jump of the wall clock against the monotonic one."""
        now, mono = self.clock(), self.monotonic()
        if self._last_tick is not None:
            wall0, mono0 = self._last_tick
            jump = (now - wall0).total_seconds() - (mono - mono0)
            if abs(jump) > CLOCK_JUMP:
                logger.warning("the clock jumped %s by %s (from %s to %s)",
                               "ahead" if jump > 0 else "back", span(abs(jump)),
                               wall0.isoformat(timespec="seconds"),
                               now.isoformat(timespec="seconds"))
                self.store.record_clock_jump(now, jump)
        self._last_tick = (now, mono)

    def _recent_parts(self) -> tuple[int, float | None]:
        """Parts this process handed over within the rate window by the monotonic clock,
        and the seconds until the oldest of them leaves it."""
        mono = self.monotonic()
        window = RATE_WINDOW.total_seconds()
        self._sent = [(t, n) for t, n in self._sent if mono - t < window]
        if not self._sent:
            return 0, None
        return sum(n for _, n in self._sent), window - (mono - self._sent[0][0])

    def cycle(self) -> CycleReport:
        """One full cycle, in the protocol's order. Failures of one step are reported."""
        report = CycleReport()
        self._watch_clock()
        for step in (self.read_inbox, self.exchange, self.health, self.send_due,
                     self.reconcile, self.housekeeping):
            if self.stopping:
                break
            try:
                step(report)
            except StateError:
                raise
            except (PhoneError, WebappError) as exc:
                report.errors.append(f"{step.__name__}: {exc}")
                logger.error("%s failed: %s", step.__name__, exc)
            except Exception as exc:  # noqa: BLE001 - a bug of ours: log it whole, go on
                report.internal_errors.append(f"{step.__name__}: {type(exc).__name__}: {exc}")
                logger.error("internal error in %s (a bug in smsgw, please report it): %s: %s",
                             step.__name__, type(exc).__name__, exc, exc_info=True)
        return report

    # 1. inbox -------------------------------------------------------------
    def read_inbox(self, report: CycleReport) -> None:
        now = self.clock()
        position, start, had_error = self.store.inbox_state(now)
        try:
            rows, new_position = self.phone.read_inbox(position, since=start)
        except PhoneError as exc:
            self._phone_error(now, f"reading the inbox: {exc}")
            raise
        take = getattr(self.phone, "take_bad_rows", None)
        bad = take() if take is not None else []
        if rows or bad or new_position != position:
            stored = self.store.save_inbox(rows, new_position, now, bad=bad)
            report.received += sum(1 for m in stored if m.state is InState.WAITING)
        if had_error:  # the phone answers again: the old error is history, not status
            with self.store.unit(self.clock()) as u:
                u.phone_problem = None

    # 2-3. exchange ------------------------------------------------------------
    def exchange(self, report: CycleReport) -> None:
        if self.webapp is None:
            return
        for _ in range(MAX_ROUNDS):
            if self.stopping:
                return
            now = self.clock()
            batch = self.store.next_batch(now)
            try:
                offered = self.webapp.exchange(
                    [m.to_protocol() for m in batch.incoming],
                    [u.to_protocol() for u in batch.updates],
                    **self._health(now),
                )
            except WebappError as exc:
                self.store.record_exchange_error(now, str(exc), exc.status, exc.message)
                raise
            report.posts += 1
            checked = [self._check(msg) for msg in offered]
            result = self.store.complete_exchange(batch, checked, self.clock())
            report.forwarded += len(batch.incoming)
            report.updates_posted += len(batch.updates)
            report.new += len(result.new)
            report.known += len(result.known)
            report.invalid += len(result.invalid)
            report.remaining = result.remaining
            if not (result.new or result.remaining):
                return
        logger.info("exchange stopped after %d POSTs; the rest goes next cycle", MAX_ROUNDS)

    def _health(self, now: datetime) -> dict[str, Any]:
        """The exchange's `health` argument with --report-health; nothing without it, so
        that the POST is exactly the protocol's."""
        if not self.settings.report_health:
            return {}
        from .health_report import health_object

        return {"health": health_object(self.store.health(now), now=now,
                                        uptime_s=self.monotonic() - self._born)}

    # health and alerts (before sending, so an alert goes out in this cycle) --------------
    def health(self, report: CycleReport) -> None:
        """Sample the phone's health at most every health_period(), then decide the alerts.

        Without --alert-to an idle cycle costs nothing here: a sample every period (two
        termux calls and one state write). With it, one unit of work a cycle, which also
        saves a new sample."""
        now = self.clock()
        sample = self._sample_health(now, report)
        if self.settings.alert_to:
            self._alerts(now, sample)
        elif sample is not None:
            with self.store.unit(now) as u:
                u.phone_health = sample

    def health_period(self) -> timedelta:
        """How often the phone's health is read: every HEALTH_EVERY, or less often when the
        poll interval is long, so that an idle cycle costs at most HEALTH_BUDGET more
        termux calls on average (at the default 60 s: every 40 min)."""
        cycles = HEALTH_CALLS / HEALTH_BUDGET
        return max(HEALTH_EVERY, timedelta(seconds=self.settings.interval * cycles))

    def _sample_health(self, now: datetime, report: CycleReport) -> PhoneHealth | None:
        """A new sample when one is due (the caller saves it), else None."""
        if not self._health_loaded:
            with self.store.unit(now) as u:
                self._health_last = u.phone_health
            self._health_at = self._health_last.at if self._health_last is not None else None
            self._health_loaded = True
        if self._health_at is not None and timedelta(0) <= now - self._health_at < \
                self.health_period():
            return None
        if any(e.startswith("read_inbox:") for e in report.errors):
            return None  # the phone did not answer just now: no more hangs this cycle
        read = getattr(self.phone, "read_health", None)
        health = read() if read is not None else None
        if self.stopping:
            return None  # cut by a stop (Ctrl-C twice): it says nothing about the phone
        self._health_at = now
        if health is None:
            return None
        health = replace(health, at=now)
        # A line in the event log when what matters changed, not at every sample: the
        # battery's percentage is in `smsgw status`, and a low one alerts.
        last = self._health_last
        if last is None or _health_key(last) != _health_key(health):
            logger.info("phone health: %s", health.describe())
        else:
            logger.debug("phone health: %s", health.describe())
        self._health_last = health
        return health

    def _alerts(self, now: datetime, sample: PhoneHealth | None) -> None:
        """Observe the conditions and queue the alert SMS the policy decides (local
        messages, never posted to the webapp) with its state, in one unit of work."""
        confirm = timedelta(seconds=self.settings.confirm_timeout)
        seen_at, self._alerts_at = self._alerts_at, now

        def step(u: Unit, failing: ExchangeProblem | None
                 ) -> tuple[AlertState, list[alerts.Alert]]:
            before = u.phone_health
            if sample is not None:
                u.phone_health = sample
            health = sample if sample is not None else before
            state = u.alert_state
            problems: dict[str, str] = {}
            if self.webapp is not None and failing is not None:
                problems[alerts.WEBAPP] = failing.text
            phone = u.phone_problem
            latest = u.last_phone_error
            if phone is None and latest is not None and seen_at is not None \
                    and latest.at >= seen_at:
                phone = latest  # a send failed since the last look; the inbox read cleared it
            if phone is not None:
                problems[alerts.PHONE] = phone.text
            elif health is not None and health.timed_out and health.problem:
                # Only a hang is "not answering": a missing permission or an odd answer
                # is shown by `smsgw status`, not paged every --alert-every. One hang is a
                # blip (the phone may answer every other call until the next sample, 40
                # min at the default interval): a new sample that hangs after one that
                # hung too starts the episode, from the first; between samples it lasts
                # only while that episode does.
                if sample is not None and before is not None and before.timed_out \
                        and before.at is not None:
                    problems[alerts.PHONE] = health.problem
                    if alerts.PHONE not in state.active:
                        state = replace(state, active={
                            **state.active,
                            alerts.PHONE: Episode(before.at, health.problem)})
                elif sample is None and alerts.PHONE in state.active:
                    problems[alerts.PHONE] = health.problem
            unknown = sum(1 for f in u.failures
                          if f.reason == UNKNOWN_OUTCOME and timedelta(0) <= now - f.at <= confirm)
            # A backlog paced by the rate limit is moving, not stuck: messages count as
            # late only when no part was handed over for confirm_timeout.
            handed = [at for at, _ in u.rate_log.entries]
            moving = bool(handed) and now - max(handed) <= confirm
            late = 0 if moving else len(u.due(now - confirm))
            stuck = alerts.stuck_problem(now, u.awaiting_handoffs(), late, unknown, confirm)
            if stuck:
                problems[alerts.STUCK] = stuck
            battery = state.active.get(alerts.BATTERY)
            low = alerts.battery_condition(
                health, now, battery.text if battery is not None else None,
                max(alerts.SAMPLE_STALE, 2 * self.health_period()))
            if low:
                problems[alerts.BATTERY] = low
            secrets = secrets_of(self.settings)
            problems = {k: scrub_secrets(v, secrets) for k, v in problems.items()}
            return alerts.decide(
                state, problems, now, after=timedelta(seconds=self.settings.alert_after),
                every=timedelta(seconds=self.settings.alert_every))

        self.store.queue_alerts(now, normalize_number(self.settings.alert_to), step)

    # 4. send --------------------------------------------------------------
    def _check(self, msg: Offered) -> tuple[Offered, str | None]:
        """A message the webapp offered, with its SMS parts counted (kept on its record:
        what sending it costs), and why it cannot be sent (None when it can): invalid, or
        more SMS parts than `max_parts` (Android stalls a headless phone on a dialog past
        its sending limit)."""
        invalid = invalid_reason(msg)
        if invalid is not None:
            return msg, invalid
        assert msg.content is not None
        if self.settings.cdma_mode:
            count = len(segment.split_cdma(msg.content, prefix=self.settings.cdma_prefix))
        else:
            count = segment.count_parts(msg.content)
        limit = self.settings.max_parts
        return replace(msg, sms_parts=count), \
            f"too long: {count} parts (max {limit})" if count > limit else None

    def _parts_of(self, msg: Outgoing) -> list[Part]:
        if self.settings.cdma_mode:
            texts = segment.split_cdma(msg.content, prefix=self.settings.cdma_prefix)
        else:
            texts = [msg.content]
        return [Part(text=t) for t in texts]

    def send_due(self, report: CycleReport) -> None:
        """Send due messages in arrival order, alerts to the operator first, within the
        rate budget.

        One state write per message: the outcome of one send is saved together with the
        intent of the next (a crash in between leaves the first SENDING, which is
        reconciled from the phone's rows, never sent again).
        """
        now = self.clock()
        with self.store.unit(now) as u:
            self._expire(u)
            due = u.due(now)
        done: _Handoff | None = None
        for ref in due:
            if self.stopping:
                break
            with self.store.unit(self.clock()) as u:
                if done is not None:
                    self._finish(u, done, report)
                    done = None
                job = self._begin(u, ref)
            if job is None:
                continue
            if isinstance(job, _RateLimited):
                report.next_send = job.until
                break
            self._hand_over(job, report)
            done = job
            if job.stop:
                break
        if done is not None:
            with self.store.unit(self.clock()) as u:
                self._finish(u, done, report)

    def _expire(self, u: Unit) -> None:
        ttl = self.settings.message_ttl
        if not ttl:
            return
        for msg in u.unsent_since_before(u.now - timedelta(seconds=ttl)):
            u.transition(msg, OutState.FAILED, "expired",
                         detail=f"to {msg.to}, unsent after {span(ttl)}")

    def _begin(self, u: Unit, ref: Ref) -> _Handoff | _RateLimited | None:
        """Record the intent to send (SENDING) durably and say what to send; or say that
        the rate budget is spent until a time; None skips the message."""
        msg = u.get(ref)
        if msg is None or msg.state is not OutState.UNSENT:
            return None
        todo = [i for i, p in enumerate(msg.parts)
                if p.state in (PartState.UNSENT, PartState.FAILED)]
        if not msg.parts:
            msg.parts = self._parts_of(msg)
            todo = list(range(len(msg.parts)))
        # SMS parts, what the network counts (and bills), not the sends: a long text is
        # one send of several parts; a CDMA part is one send of one
        counts = {i: segment.count_parts(msg.parts[i].text) for i in todo}
        if len(todo) == len(msg.parts):  # every part goes: what the whole message costs
            msg.sms_parts = sum(counts.values())
        cost = sum(counts.values())
        log = u.rate_log.clamped(u.now)
        if log != u.rate_log:
            u.rate_log = log  # saved now, so that the entries age from here
        mono_used, mono_wait = self._recent_parts()
        used = max(log.used(u.now), mono_used)
        left = self.settings.max_parts_per_minute - used
        if not used:
            self._rate_waiting.clear()  # nothing in the window: nobody waits any more
        if cost > left and len(todo) > 1:
            # CDMA parts are SMS of their own: what fits the budget now, the rest later.
            fit, total = [], 0
            for i in todo:
                one = counts[i]
                if total + one > left:
                    break
                fit.append(i)
                total += one
            if fit:
                todo, cost = fit, total
        if used and cost > left:
            # Once per message and wait, not once per cycle: a backlog would fill the log.
            level = logging.DEBUG if msg.id in self._rate_waiting else logging.INFO
            self._rate_waiting.add(msg.id)
            logger.log(level, "rate limit: %d parts in the last minute; message %s waits",
                       used, msg.id)
            waits = [t for t in (log.next_free(u.now),
                                 None if mono_wait is None else u.now + timedelta(
                                     seconds=mono_wait)) if t is not None]
            return _RateLimited(max(waits) if waits else u.now)
        self._rate_waiting.discard(msg.id)
        for i in todo:
            msg.parts[i].move(PartState.SENDING)
            msg.parts[i].handoff = u.now
        self._sent.append((self.monotonic(), cost))
        u.rate_log = log.add(u.now, cost)
        u.transition(msg, OutState.SENDING)
        return _Handoff(msg.ref, msg.to, [(i, msg.parts[i].text) for i in todo],
                        {i: counts[i] for i in todo})

    def _hand_over(self, job: _Handoff, report: CycleReport) -> None:
        """Run the sends (no lock held): one termux-sms-send per part, stop at an error."""
        for i, text in job.texts:
            try:
                self.phone.send(job.number, text)
            except (InvalidNumber, PhoneError) as exc:
                job.error = exc
                maybe_sent = getattr(exc, "maybe_sent", False)
                job.outcome[i] = PartState.SENDING if maybe_sent else PartState.FAILED
                job.stop = maybe_sent  # the phone is not answering: try again next cycle
                return
            job.outcome[i] = PartState.PENDING
            report.handed += 1

    def _finish(self, u: Unit, job: _Handoff, report: CycleReport) -> None:
        """Record what the sends of one message did."""
        msg = u.get(job.ref)
        assert msg is not None
        error = job.error
        for i, _ in job.texts:  # parts after a failure were never attempted
            msg.parts[i].move(job.outcome.get(i, PartState.UNSENT))
        u.touch(msg)
        if isinstance(error, PhoneError):
            self._phone_error_in(u, f"sending {msg.id}: {error}")
        if isinstance(error, InvalidNumber):
            u.transition(msg, OutState.FAILED, str(error))
            report.failed += 1
        elif isinstance(error, PhoneError) and error.maybe_sent:
            u.note(logging.ERROR, "message %s: %s; the outcome is checked on the phone",
                   msg.id, error)
        elif error is not None and not any(p.state is PartState.PENDING for p in msg.parts):
            self._failed_try(u, msg, str(error), report)
        else:
            # With some parts handed over, a failed one is retried once they are settled.
            sms = sum(n for i, n in job.sms.items() if job.outcome.get(i) is PartState.PENDING)
            u.transition(msg, OutState.PENDING, detail=f"handed to the phone, to {msg.to}, "
                         f"{sms} SMS part{'' if sms == 1 else 's'}")

    def _failed_try(self, u: Unit, msg: Outgoing, cause: str, report: CycleReport) -> None:
        """A try failed: schedule the protocol's retry, or give up after 20."""
        decision = retry.after_failure(msg.retries, u.now, msg.to, cause)
        report.failed_tries += 1
        if decision.give_up:
            u.transition(msg, OutState.FAILED, cause, detail=decision.log_line,
                         level=logging.ERROR)
            report.failed += 1
        else:
            msg.retries = decision.retries
            msg.due = decision.due
            u.transition(msg, OutState.UNSENT, cause, detail=decision.log_line,
                         level=logging.WARNING)

    # 5. reconcile -------------------------------------------------------------
    def reconcile(self, report: CycleReport) -> None:
        """Learn SENT or failed tries from the phone's rows; give up on unknown outcomes."""
        now = self.clock()
        with self.store.unit(now) as u:
            handoffs = [at or now for at in u.awaiting_handoffs()]
        report.awaiting = len(handoffs)
        if not handoffs:
            return
        since = min(handoffs) - ROW_SLACK
        try:
            rows = sorted(self.phone.read_outgoing(since),
                          key=lambda r: (r.date, r.row_id or 0))
        except PhoneError as exc:
            self._phone_error(now, f"reading sent messages: {exc}")
            raise
        cause: str | None = None
        if any(r.kind == FAILED for r in rows):
            cause = self.phone.diagnose() or DEFAULT_CAUSE

        now = self.clock()
        with self.store.unit(now) as u:
            # Rows dated before `since` are never read again, so their keys can go.
            # Counts, not a set: without `_id` (old Termux:API) two identical SMS sent
            # in the same second are two rows with one key.
            used = {k: v for k, v in u.used_rows.items() if v[0] >= since}
            consumed = Counter({k: n for k, (_, n) in used.items()})
            candidates = self._index_rows(rows)
            touched: dict[str, Outgoing] = {}
            parts = [(m, i, p) for m in u.awaiting_phone() for i, p in enumerate(m.parts)
                     if p.state in AWAITING_PARTS]
            parts.sort(key=lambda t: (t[2].handoff or now, t[0].seq, t[1]))
            for msg, _, part in parts:
                index = self._match(msg, part, rows, candidates, consumed)
                if index is None:
                    if part.handoff and now - part.handoff > timedelta(
                            seconds=self.settings.confirm_timeout):
                        part.move(PartState.UNKNOWN)
                        touched[msg.id] = msg
                    continue
                row = rows[index]
                consumed[row.key] += 1
                if row.kind == SENT and now - row.date < SETTLE:
                    continue  # reserved for this part; decided next time
                used[row.key] = (row.date, used.get(row.key, (row.date, 0))[1] + 1)
                part.row = row.key
                part.move(PartState.SENT if row.kind == SENT else PartState.FAILED)
                touched[msg.id] = msg
            u.used_rows = used
            for msg in touched.values():
                u.touch(msg)  # part changes are saved even when the message waits
                self._settle(u, msg, cause or DEFAULT_CAUSE, report)

    @staticmethod
    def _index_rows(rows: list[SmsRow]) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """Rows by (number digits, trimmed body): (row index, occurrence of its key)."""
        seen: Counter[str] = Counter()
        index: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for i, row in enumerate(rows):
            if row.kind in (SENT, FAILED):
                key = (number_digits(row.address), java_trim(row.body))
                index.setdefault(key, []).append((i, seen[row.key]))
            seen[row.key] += 1
        return index

    @staticmethod
    def _match(msg: Outgoing, part: Part, rows: list[SmsRow],
               candidates: dict[tuple[str, str], list[tuple[int, int]]],
               consumed: Counter[str]) -> int | None:
        """Index of the oldest row not yet used that records this part's send."""
        earliest = (part.handoff or datetime.min) - ROW_SLACK
        for i, occurrence in candidates.get((number_digits(msg.to), java_trim(part.text)), ()):
            row = rows[i]
            if occurrence >= consumed[row.key] and row.date >= earliest:
                return i
        return None

    def _settle(self, u: Unit, msg: Outgoing, cause: str, report: CycleReport) -> None:
        states = [p.state for p in msg.parts]
        if any(s in AWAITING_PARTS for s in states):
            return  # wait for every part before deciding
        if all(s is PartState.SENT for s in states):
            u.transition(msg, OutState.SENT, detail=f"to {msg.to}, recorded by the phone")
            report.confirmed += 1
            return
        if all(s in (PartState.SENT, PartState.UNSENT) for s in states):
            # Paced: the parts sent are SENT, the others wait for the rate budget.
            msg.due = u.now
            u.transition(msg, OutState.UNSENT)
            return
        if any(s is PartState.UNKNOWN for s in states):
            u.transition(msg, OutState.FAILED, UNKNOWN_OUTCOME, level=logging.ERROR,
                         detail=f"to {msg.to}; not resent automatically (smsgw retry {msg.id})")
            report.failed += 1
            return
        self._failed_try(u, msg, cause, report)

    # housekeeping -------------------------------------------------------------
    def housekeeping(self, report: CycleReport) -> None:
        now = self.clock()
        self.store.archive_finished(now)
        self.store.daily_backup(now)
        with self.store.unit(now) as u:
            if report.next_send is None:
                report.next_send = u.next_retry()
            if self.webapp is not None:
                report.remaining = u.queued_for_webapp()

    def _phone_error(self, now: datetime, text: str) -> None:
        with self.store.unit(now) as u:
            self._phone_error_in(u, text)

    @staticmethod
    def _phone_error_in(u: Unit, text: str) -> None:
        u.phone_problem = PhoneProblem(u.now, text)
