"""What the commands do. Each `smsgw` command parses its options, calls one function here,
and prints what it returns: health, exit codes and settings changes are decided here, not
in cli.py. Nothing here imports requests except `configure`, and only when it must.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .config import (
    SPECS,
    Paths,
    Settings,
    redact_ping_url,
    redact_setting,
    redact_url,
    scrub_secrets,
    secrets_of,
)
from .errors import ExitCode, UserError
from .models import printable

if TYPE_CHECKING:
    from .store import Store

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a command prints (stdout, stderr lines) and its exit code."""

    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    code: ExitCode = ExitCode.OK
    data: Any = None


def fmt_time(iso: str | datetime | None, now: datetime | None = None) -> str:
    """A stored time for people: UTC, with how long ago."""
    if not iso:
        return "never"
    from .models import span

    dt = datetime.fromisoformat(iso) if isinstance(iso, str) else iso
    text = dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if now is not None:
        secs = (now - dt).total_seconds()
        text += f" ({span(secs)} ago)" if secs >= 0 else f" (in {span(-secs)})"
    return text


# config --------------------------------------------------------------------------------
_OPTION_OF = {"url": "--url", "interval": "--interval", "sim_slot": "--sim-slot",
              "max_parts_per_minute": "--max-per-minute", "message_ttl": "--ttl",
              "ca_bundle": "--ca-bundle", "confirm_timeout": "--confirm-timeout",
              "max_parts": "--max-parts", "exchange_deadline": "--exchange-deadline",
              "allow_redirects_to": "--allow-redirects-to", "cdma_mode": "--cdma",
              "cdma_prefix": "--cdma-prefix", "compress_requests": "--compress-requests",
              "notification_watch": "--notification-watch", "ping_url": "--ping-url",
              "ping_every": "--ping-every", "report_health": "--report-health",
              "alert_to": "--alert-to",
              "alert_after": "--alert-after", "alert_every": "--alert-every"}


def configure(paths: Paths, store_of: Any, *, url: str | None, check: bool,
              texts: dict[str, str], flags: dict[str, bool], forward_since: str | None,
              now: datetime) -> Outcome:
    """`smsgw config`: check every change against the settings' bounds, check a new URL
    with the webapp's handshake, save, set where forwarding starts, and show the settings.
    Nothing is saved when anything is wrong."""
    import dataclasses
    import os

    from .config import (
        change_settings,
        load_settings,
        parse_setting,
        parse_when,
        save_settings,
    )

    result = Outcome()
    # The file's own settings: an SMSGW_URL override must never be written into it.
    current = load_settings(paths, env={})
    since = parse_when(forward_since, now) if forward_since is not None else None
    changes: dict[str, Any] = {name: parse_setting(name, text, _OPTION_OF[name])
                               for name, text in texts.items()}
    changes.update(flags)
    if url is not None:
        changes["url"] = url
    new = change_settings(current, changes, lambda name: _OPTION_OF.get(name, name))
    if new.ca_bundle and new.ca_bundle != current.ca_bundle:
        if not os.path.isfile(new.ca_bundle):
            raise UserError(f"no such CA bundle file: {new.ca_bundle}")
        new = dataclasses.replace(new, ca_bundle=os.path.abspath(new.ca_bundle))
    if url is not None and check:
        _handshake(new)
        result.out.append(f"✓ {redact_url(new.url)} answers as a medic-gateway webapp")
    changed = bool(changes)
    from .config import record_folders

    # for the watchdog, boot and Tasker scripts (no SMSGW_HOME there)
    followed_elsewhere = record_folders(paths)
    if followed_elsewhere:
        result.err.append(f"note: {followed_elsewhere}")
    if changed:
        save_settings(paths, new)
        result.out.append(f"saved to {paths.config_file}")
        _log_changes(current, new)
    store = store_of()
    if since is not None:
        store.set_forward_since(since, now)
        result.out.append(f"incoming SMS received from {fmt_time(since)} on will be forwarded")
    elif url is not None and store.set_forward_since(now, now, keep=True):
        result.out.append("incoming SMS received from now on will be forwarded (the inbox "
                          "from before stays private; see --forward-since)")
    if changed:
        from .daemon import daemon_running

        if daemon_running(paths):
            result.out.append("restart the daemon to apply: sv restart smsgw (or stop and "
                              "start smsgw run)")
    shown: dict[str, Any] = new.to_dict()
    shown.update({name: redact(shown[name]) for name, redact in _REDACTED.items()})
    start = store.forward_since(now)
    shown["forward_since"] = fmt_time(start) if start else None
    if os.environ.get("SMSGW_URL"):
        shown["url"] = f"{redact_url(load_settings(paths).url)} (from SMSGW_URL)"
    width = max(len(k) for k in shown)
    result.out += [f"{key:<{width}}  {'-' if value is None else value}"
                   for key, value in shown.items()]
    return result


# Settings that hold secrets (config.Spec.secret), and how each is shown: in output and in
# the event log alike.
_REDACTED = {name: functools.partial(redact_setting, name)
             for name, spec in SPECS.items() if spec.secret}


def _log_changes(old: Settings, new: Settings) -> None:
    """One line of the event log for each setting changed, secret ones redacted."""
    before, after = old.to_dict(), new.to_dict()
    for name, value in after.items():
        if value != before.get(name):
            logger.info("config: %s changed: %s -> %s (%s)", name,
                        redact_setting(name, before.get(name)), redact_setting(name, value),
                        _OPTION_OF.get(name, name))


def _handshake(settings: Settings) -> None:
    from .errors import Error
    from .webapp import WebappClient

    client = WebappClient(settings.url or "", connect_timeout=settings.connect_timeout,
                          read_timeout=settings.read_timeout, ca_bundle=settings.ca_bundle,
                          deadline=settings.exchange_deadline,
                          allow_redirects_to=_hosts(settings.allow_redirects_to))
    try:
        client.handshake()
    except Error as exc:
        raise UserError(f"{redact_url(settings.url)} did not answer as a medic-gateway webapp: "
                        f"{exc} (settings not saved; use --no-check to save anyway)") from None
    finally:
        client.close()


def _hosts(text: str | None) -> list[str]:
    return [h.strip() for h in (text or "").split(",") if h.strip()]


# status ----------------------------------------------------------------------------------
def status(paths: Paths, settings: Settings, store: Store, now: datetime,
           as_json: bool) -> Outcome:
    """Health at a glance, from local state only; the exit code says healthy (0), daemon
    not running (3) or the last exchange with the webapp failed (4)."""
    import json

    from .daemon import daemon_running

    info = daemon_running(paths)
    summary = store.summary(now)
    last_ok, last_err = summary["last_exchange_ok"], summary["last_error"]
    failing = summary["webapp_failing"]
    code = ExitCode.DAEMON_DOWN if not info else ExitCode.WEBAPP_FAILING if failing \
        else ExitCode.OK
    data = {
        "healthy": code == ExitCode.OK,
        "exit_code": int(code),
        "daemon": {"running": bool(info), "pid": (info or {}).get("pid"),
                   "since": (info or {}).get("started")},
        "webapp": {"url": redact_url(settings.url), "last_exchange_ok": last_ok,
                   "last_error": last_err, "failing": failing,
                   "consecutive_failures": summary["webapp_failures"]},
        "queues": {"outgoing": summary["outgoing"], "incoming": summary["incoming"],
                   "updates_queued": summary["updates_queued"],
                   "oldest_waiting": summary["oldest_waiting"],
                   "next_retry": summary["next_retry"],
                   "by_state": summary["by_state"], "retrying": summary["retrying"]},
        "counters": summary["counters"],
        "last_failures": summary["last_failures"],
        "phone": {"last_error": summary["phone_error"],
                  "notification_watcher": summary["watcher"]},
        "rate": {"parts_last_minute": summary["parts_last_minute"],
                 "max_parts_per_minute": settings.max_parts_per_minute},
        "clock_jump": summary["clock_jump"],
        "phone_health": summary["phone_health"],
        "alerts": {"to": settings.alert_to, **summary["alerts"]},
    }
    if settings.ping_url:
        from .heartbeat import last_ping

        data["heartbeat"] = {"url": redact_ping_url(settings.ping_url),
                             "last": last_ping(paths.data_dir)}
    import time

    from .watchdog import stale

    watchdog = stale(paths.data_dir, time.time())  # two stat() calls at most
    if watchdog:
        data["watchdog"] = {"warning": watchdog}
    text = json.dumps(data, indent=2) if as_json else _status_text(data, now)
    if watchdog and not as_json:
        text += f"\nwarning:       {watchdog}"
    return Outcome(out=[scrub_secrets(text, secrets_of(settings))], code=code, data=data)


def _status_text(d: dict[str, Any], now: datetime) -> str:
    lines = []
    dmn = d["daemon"]
    lines.append(f"daemon:        running (pid {dmn['pid']}, since {fmt_time(dmn['since'], now)})"
                 if dmn["running"] else "daemon:        NOT RUNNING (start it: smsgw run, or "
                 "sv up smsgw)")
    w = d["webapp"]
    lines.append(f"webapp:        {w['url'] or 'not configured (smsgw config --url URL)'}")
    lines.append(f"last exchange: {fmt_time(w['last_exchange_ok'], now)}")
    if w["last_error"]:
        err = w["last_error"]
        message = err.get("message")
        # the error text often holds the webapp's words already: never say them twice
        said = f" — webapp said: {message}" if message and message not in err["text"] else ""
        mark = "FAILING" if w["failing"] else "earlier"
        lines.append(f"last error:    [{mark}] {fmt_time(err['at'], now)}: "
                     f"{printable(err['text'])}{printable(said)}")
    q = d["queues"]
    groups = q["by_state"]
    order = ["UNSENT", "RETRYING", "SENDING", "PENDING", "SENT", "DELIVERED", "FAILED"]
    out = ", ".join(f"{'retrying' if k == 'RETRYING' else k} {groups[k]['count']} (oldest "
                    f"{_age(groups[k]['oldest_since'], now)})" for k in order if k in groups)
    lines.append(f"outgoing:      {out or 'empty'}")
    for r in q["retrying"][:5]:
        lines.append(f"  retrying {printable(r['id'])} to {printable(r['to'])}: retry "
                     f"#{r['retries']} due {fmt_time(r['next_try'], now)}"
                     + (f"; last try: {printable(r['reason'])}" if r["reason"] else ""))
    if len(q["retrying"]) > 5:
        lines.append(f"  ... and {len(q['retrying']) - 5} more retrying (smsgw messages "
                     "--state UNSENT)")
    inc = q["incoming"]
    aside = f"; {inc['SET_ASIDE']} set aside" if inc.get("SET_ASIDE") else ""
    lines.append(f"incoming:      {inc.get('WAITING', 0)} waiting for the webapp{aside}; "
                 f"{_plural(q['updates_queued'], 'status update')} queued")
    if q["oldest_waiting"]:
        o = q["oldest_waiting"]
        lines.append(f"oldest unsent: {printable(o['id'])} to {printable(o['to'])} since "
                     f"{fmt_time(o['since'], now)}")
    if q["next_retry"]:
        lines.append(f"next retry:    {fmt_time(q['next_retry'], now)}")
    c = d["counters"]
    lines.append(f"counts (UTC):  {'today':>9} {'7 days':>9} {'all time':>9}")
    for key, label in (("sent", "sent"), ("failed", "failed"), ("received", "received"),
                       ("parts", "SMS parts"), ("phone_errors", "phone errors")):
        lines.append(f"  {label:<12} {c['today'][key]:>9} {c['last_7_days'][key]:>9} "
                     f"{c['all_time'][key]:>9}")
    r = d["rate"]
    lines.append(f"rate:          {r['parts_last_minute']}/{r['max_parts_per_minute']} SMS parts "
                 "in the last minute")
    p = d["phone"]
    if p["last_error"]:
        lines.append(f"phone error:   {fmt_time(p['last_error']['at'], now)}: "
                     f"{printable(p['last_error']['text'])}")
    if p["notification_watcher"]:
        lines.append(f"notifications: {p['notification_watcher']}")
    lines += _health_lines(d, now)
    if d.get("clock_jump"):
        j = d["clock_jump"]
        lines.append(f"clock:         jumped {'ahead' if j['seconds'] > 0 else 'back'} by "
                     f"{abs(j['seconds'])} s at {fmt_time(j['at'], now)}")
    if d.get("heartbeat"):
        last = d["heartbeat"]["last"]
        said = "no ping yet" if last is None else (
            f"{'/fail' if last['kind'] == 'fail' else 'healthy'} ping at "
            f"{fmt_time(last['at'], now)}: "
            + ("delivered" if last["ok"] else f"NOT DELIVERED ({printable(last['result'])})"))
        lines.append(f"heartbeat:     {d['heartbeat']['url']}, {said}")
    if d["last_failures"]:
        lines.append("recent failures:")
        for f in d["last_failures"][-5:]:
            lines.append(f"  {printable(f['id'])}  to {printable(f['to'])}: "
                         f"{printable(f['reason'])}")
    lines.append("status:        " + ("healthy" if d["healthy"] else "UNHEALTHY"))
    return "\n".join(lines)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _age(iso: str, now: datetime) -> str:
    """How long ago a stored time was: 45s, 12 min, 3 h, 2 days."""
    from .models import span

    return span(now - datetime.fromisoformat(iso))


def stats(store: Store, now: datetime, *, days: int, week: bool, form: str) -> Outcome:
    """`smsgw stats`: per UTC day (or ISO week) of the last `days` days, messages SENT and
    FAILED, SMS received, SMS parts of the messages sent, and the median time from arrival
    to SENT; from the archive and the queues, each message once. `form` is table, csv or
    json."""
    import csv
    import io
    import json
    import statistics

    today = now.astimezone(timezone.utc).date()
    first = today - timedelta(days=days - 1)

    def key(day: Any) -> str:
        if not week:
            return str(day.isoformat())
        year, number, _ = day.isocalendar()
        return f"{year}-W{number:02d}"

    keys = list(dict.fromkeys(key(first + timedelta(days=n)) for n in range(days)))
    rows: dict[str, dict[str, Any]] = {k: {"sent": 0, "failed": 0, "received": 0,
                                           "sms_parts": 0, "waits": []} for k in keys}

    def row(at: datetime) -> dict[str, Any] | None:
        day = at.astimezone(timezone.utc).date()
        return rows[key(day)] if first <= day <= today else None

    every = store.messages(now, 10**9)
    for msg in every.outgoing:
        for h in msg.history:
            r = row(h.at)
            if r is None:
                continue
            if h.state == "SENT":
                r["sent"] += 1
                r["sms_parts"] += msg.sms_count()
                r["waits"].append((h.at - msg.created).total_seconds())
            elif h.state == "FAILED":
                r["failed"] += 1
    for inc in every.incoming:
        r = row(inc.stored)
        if r is not None:
            r["received"] += 1
    label = "week" if week else "day"
    names = ("sent", "failed", "received", "sms_parts")

    def finish(k: str, r: dict[str, Any]) -> dict[str, Any]:
        waits = r["waits"]
        return {label: k, **{n: r[n] for n in names},
                "median_seconds_to_sent": round(statistics.median(waits), 1) if waits else None}

    table = [finish(k, r) for k, r in rows.items()]
    total = finish("total", {**{n: sum(r[n] for r in rows.values()) for n in names},
                             "waits": [w for r in rows.values() for w in r["waits"]]})
    retention = store.retention.days
    if form == "json":
        data = {"by": label, "from": first.isoformat(), "to": today.isoformat(),
                "rows": table, "total": total, "archive_retention_days": retention}
        return Outcome(out=[json.dumps(data, indent=2)], data=data)
    if form == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([label, *names, "median_seconds_to_sent"])
        for r in table:
            writer.writerow([r[label], *(r[n] for n in names),
                             "" if r["median_seconds_to_sent"] is None
                             else r["median_seconds_to_sent"]])
        return Outcome(out=buf.getvalue().splitlines())
    width = max(len(label), *(len(r[label]) for r in table), len("total"))
    out = [f"{label + ' (UTC)':<{width + 6}}{'sent':>8}{'failed':>8}{'received':>10}"
           f"{'SMS parts':>11}  median to SENT"]
    for r in [*table, total]:
        wait = r["median_seconds_to_sent"]
        out.append(f"{r[label]:<{width + 6}}{r['sent']:>8}{r['failed']:>8}{r['received']:>10}"
                   f"{r['sms_parts']:>11}  {'-' if wait is None else _duration(wait)}")
    if days > retention:
        out.append(f"(the archive keeps {retention} days: older days count only messages "
                   "still queued)")
    return Outcome(out=out)


def _duration(seconds: float) -> str:
    """A median wait for people: 42 s, 3.5 min, 2.0 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _health_lines(d: dict[str, Any], now: datetime) -> list[str]:
    """The phone's last health sample and the alerts, for `smsgw status`."""
    from .health import PhoneHealth

    lines = []
    if d.get("phone_health"):
        health = PhoneHealth.from_dict(d["phone_health"])
        lines.append(f"phone health:  {printable(health.describe())}; read "
                     f"{fmt_time(health.at, now)}")
    a = d.get("alerts") or {}
    if a.get("to"):
        active = ", ".join(f"{k} since {fmt_time(e['since'], now)}"
                           + ("" if e.get("alerted") else " (not alerted yet)")
                           for k, e in (a.get("active") or {}).items())
        lines.append(f"alerts:        to {printable(a['to'])}; "
                     + (f"ACTIVE: {printable(active)}" if active else "no problem"))
    elif a.get("active"):
        lines.append("alerts:        off (smsgw config --alert-to NUMBER)")
    if a.get("last_sent"):
        sent = a["last_sent"]
        lines.append(f"last alert:    {fmt_time(sent['at'], now)}: {printable(sent['text'])}")
    return lines


# send / retry ------------------------------------------------------------------------------
def send(paths: Paths, store: Store, number: str, text: str, now: datetime) -> Outcome:
    """Queue a local test SMS (never posted to the webapp) and wake the daemon."""
    from .daemon import wake
    from .phone.base import java_trim, normalize_number

    number = normalize_number(number)
    if not java_trim(text):
        raise UserError("the text is empty (Termux:API trims spaces and control characters, "
                        "and sends nothing for an empty text)")
    msg = store.add_local(number, text, now)
    result = Outcome(out=[f"queued {msg.id} to {number}"])
    if wake(paths) is None:
        result.err.append("no daemon is running: it is sent by the next `smsgw run`")
    return result


def retry(paths: Paths, store: Store, ids: list[str], all_failed: bool,
          now: datetime) -> Outcome:
    """Send FAILED messages again from retry #1; exit 5 for an unknown id, 6 for a message
    that is not FAILED (nothing is changed for those)."""
    from .daemon import wake

    res = store.retry(ids, all_failed, now)
    p = printable
    result = Outcome(out=[f"{p(i)}: queued again" for i in res.retried])
    result.err += [f"{p(i)}: no such message (see smsgw messages)" for i in res.not_found]
    result.err += [_ambiguous(text, ids) for text, ids in res.ambiguous]
    result.err += [f"{p(i)}: is {state}, not FAILED; nothing to retry"
                   for i, state in res.wrong_state]
    if all_failed and not res.retried:
        result.out.append("no FAILED message to retry")
    if res.retried and wake(paths) is None:
        result.err.append("no daemon is running: they are sent by the next `smsgw run`")
    result.code = (ExitCode.NOT_FOUND if res.not_found or res.ambiguous else
                   ExitCode.WRONG_STATE if res.wrong_state else ExitCode.OK)
    return result


def log_id(store_of: Any, text: str, now: datetime) -> str:
    """The message id `smsgw log --id` looks for: the id of the one message (from the webapp,
    local or incoming, active or archived) that `text` is a prefix of; `text` itself when it
    is an exact id or names none (the log outlives the archive, and the state may be
    damaged); refused, with the candidates, when it names several."""
    from .errors import StateError

    try:
        known = store_of().completion_ids(now, "any")
    except StateError:
        return text
    found = [i for i in known if i.startswith(text)]
    if text in found or len(found) != 1:
        if len(found) > 1 and text not in found:
            raise AmbiguousId(_ambiguous(text, found))
        return text
    return found[0]


class AmbiguousId(UserError):
    """An id prefix naming several messages (exit 5, as retry and cancel)."""

    exit_code = ExitCode.NOT_FOUND


def _ambiguous(text: str, ids: list[str], shown: int = 10) -> str:
    """One line for an id prefix that names several messages, with the candidates."""
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return (f"{printable(text)}: ambiguous id prefix, matches {len(ids)} messages: "
            f"{', '.join(printable(i) for i in ids[:shown])}{more}; give more of the id")


_WHY_NOT_CANCELLED = {
    "SENDING": "already handed to the phone; it cannot be called back",
    "PENDING": "already handed to the phone; it cannot be called back",
    "SENT": "already sent; nothing to cancel",
    "DELIVERED": "already sent; nothing to cancel",
    "FAILED": "already finished; nothing to cancel",
}


def cancel(paths: Paths, store: Store, ids: list[str], now: datetime) -> Outcome:
    """FAIL messages not yet handed to the phone with the reason `cancelled`, and wake the
    daemon so the webapp hears it soon; exit 5 for an unknown or ambiguous id, 6 for a
    message that cannot be cancelled (nothing is changed for those)."""
    from .daemon import wake

    res = store.cancel(ids, now)
    p = printable
    result = Outcome()
    for msg_id, local, gone, total in res.cancelled:
        told = "a local message, never posted" if local else "the webapp hears FAILED"
        sent = f"; {gone} of its {total} parts had already gone out" if gone else ""
        result.out.append(f"{p(msg_id)}: cancelled ({told}){sent}")
    result.err += [f"{p(i)}: no such message (see smsgw messages)" for i in res.not_found]
    result.err += [_ambiguous(text, found) for text, found in res.ambiguous]
    result.err += [f"{p(i)}: is {state}: {_WHY_NOT_CANCELLED.get(state, 'cannot be cancelled')}"
                   for i, state in res.wrong_state]
    if res.cancelled and wake(paths) is None and any(not c[1] for c in res.cancelled):
        result.err.append("no daemon is running: the webapp hears it at the next `smsgw run`")
    result.code = (ExitCode.NOT_FOUND if res.not_found or res.ambiguous else
                   ExitCode.WRONG_STATE if res.wrong_state else ExitCode.OK)
    return result


def stop(paths: Paths, timeout: float = 30.0) -> Outcome:
    """`smsgw stop`: stop the daemon on purpose and wait up to `timeout` s for it to exit
    (see daemon.stop_daemon); the watchdog then leaves it down until the next `smsgw run`."""
    from .daemon import stop_daemon

    pid = stop_daemon(paths, timeout)
    if pid is None:
        return Outcome(out=["smsgw is not running; it stays down until `smsgw run` (the "
                            "watchdog will not start it)"])
    return Outcome(out=[f"stopped smsgw (pid {pid}); it stays down until `smsgw run`"])


# messages ----------------------------------------------------------------------------------
class BadOption(UserError):
    """A value of an option the command cannot use (exit 2, as click's usage errors)."""

    exit_code = ExitCode.USAGE


def valid_states() -> list[str]:
    """Every state a message can be in, outgoing then incoming."""
    from .models import InState, OutState

    return [s.value for s in OutState] + [s.value for s in InState]


def when(text: str, option: str, now: datetime) -> datetime:
    """The time a --since or --until value names (config.parse_since: the one rule of
    `smsgw messages` and `smsgw log`); a value it cannot read is a usage error (exit 2)."""
    from .config import parse_since

    try:
        return parse_since(text, now, option)
    except UserError as exc:
        raise BadOption(str(exc)) from None


def messages(store: Store, now: datetime, *, limit: int, states: tuple[str, ...] = (),
             number: str | None = None, direction: str | None = None,
             since: str | None = None, until: str | None = None,
             id_prefix: str | None = None, full: bool = False,
             as_json: bool = False) -> Outcome:
    """`smsgw messages`: the filters are checked, then applied before the limit."""
    import json

    from .store import MessageFilter

    known = valid_states()
    wanted = {s.strip().upper() for s in states}
    bad = [s for s in states if s.strip().upper() not in known]
    if bad:
        raise BadOption(f"unknown state {', '.join(repr(b) for b in bad)} for --state; "
                        f"valid states: {', '.join(known)}")
    if number is not None and not number.strip():
        raise BadOption("--number: give a number (or its last digits) or a sender name")
    only = MessageFilter(states=frozenset(wanted), number=number, direction=direction,
                         since=when(since, "--since", now) if since else None,
                         until=when(until, "--until", now) if until else None,
                         id_prefix=id_prefix)
    listing = store.messages(now, limit, only=only)
    out, incoming = listing.outgoing, listing.incoming
    if as_json:
        data = {"from_webapp": [m.to_dict() for m in out],
                "to_webapp": [m.to_dict() for m in incoming],
                "more_from_webapp": listing.more_outgoing,
                "more_to_webapp": listing.more_incoming}
        return Outcome(out=[json.dumps(data, indent=2)], data=data)
    p = printable
    lines: list[str] = []
    if direction != "in":
        lines.append(f"From webapp ({len(out)}):")
        for m in out:
            reason = f" ({p(m.reason)})" if m.reason else ""
            local = "  (local, smsgw send)" if m.local else ""
            lines.append(f"  {p(m.id)}  to {p(m.to)}  {m.state.value}{reason}  "
                         f"retries {m.retries}{local}")
            if full:
                history = " → ".join(f"{h.state} {fmt_time(h.at)}" for h in m.history)
            else:
                history = " → ".join(h.state for h in m.history)
            lines.append(f"      created {fmt_time(m.created)}, last change "
                         f"{fmt_time(m.last_activity)}: {history}")
            lines.append(f"      {_text(m.content, full)}")
        if listing.more_outgoing:
            lines.append(f"  ... and {listing.more_outgoing} more (--limit)")
    if direction != "out":
        lines.append(f"To webapp ({len(incoming)}):")
        for i in incoming:
            reason = f" ({p(i.reason)})" if i.reason else ""
            forwarded = f", forwarded {fmt_time(i.forwarded)}" if i.forwarded else ""
            lines.append(f"  {i.id}  from {p(i.from_) or '?'}  {i.state.value}{reason}")
            lines.append(f"      received {fmt_time(i.stored)}{forwarded}")
            lines.append(f"      {_text(i.content, full)}")
        if listing.more_incoming:
            lines.append(f"  ... and {listing.more_incoming} more (--limit)")
    return Outcome(out=lines)


TEXT_SHOWN = 60  # characters of a text `smsgw messages` shows without --full


def _text(text: str, full: bool) -> str:
    """A message's text on one line (control characters escaped by repr), cut with an
    ellipsis unless `full`."""
    if not full and len(text) > TEXT_SHOWN:
        return repr(text[:TEXT_SHOWN]) + "…"
    return repr(text)


def complete_ids(paths: Paths, kind: str, states: frozenset[str] | None,
                 incomplete: str) -> list[str]:
    """Ids starting with `incomplete`, for shell completion; nothing (and no file created)
    when there is no state yet."""
    from .models import utcnow
    from .store import Store

    if not (paths.state_dir / "state.json").exists():
        return []
    store = Store(paths.state_dir)
    return [i for i in store.completion_ids(utcnow(), kind, states)
            if i.startswith(incomplete)]


# run -----------------------------------------------------------------------------------
def checked(name: str, value: Any, source: str) -> Any:
    """A setting given for one run (`smsgw run --url`, `--interval`), checked against the
    same bounds as the saved one; refused naming where it came from."""
    from .config import validate_setting

    return validate_setting(name, value, source)


def run(paths: Paths, settings: Settings, store: Store, phone: Any, *, once: bool,
        max_cycles: int | None) -> int:
    """The gateway in the foreground until stopped; the exit code of `smsgw run`."""
    from .daemon import Daemon
    from .gateway import Gateway
    from .models import utcnow
    from .webapp import WebappClient

    assert settings.url is not None
    from .config import record_folders

    followed_elsewhere = record_folders(paths)  # for the watchdog, boot and Tasker scripts
    if followed_elsewhere:
        logger.warning("%s", followed_elsewhere)
    webapp = WebappClient(settings.url, connect_timeout=settings.connect_timeout,
                          read_timeout=settings.read_timeout, ca_bundle=settings.ca_bundle,
                          compress_requests=settings.compress_requests,
                          deadline=settings.exchange_deadline,
                          allow_redirects_to=_hosts(settings.allow_redirects_to))
    gateway = Gateway(store, webapp, phone, settings)
    daemon = Daemon(gateway, paths, settings.interval, max_cycles=1 if once else max_cycles)
    heartbeat, pinger = _heartbeat(paths, settings)
    if heartbeat is not None:
        daemon.heartbeat = heartbeat.after_cycle
    if settings.notification_watch and phone.name == "termux":
        from .watcher import NotificationWatcher

        watcher = NotificationWatcher(store, timeout=settings.list_timeout,
                                      abort=getattr(phone, "call_abort", None))
        daemon.add_watcher(watcher.period, watcher.check)
    else:
        with store.unit(utcnow()) as u:  # no stale watcher state in `smsgw status`
            u.watcher = None
    try:
        code = daemon.run()
        if once and heartbeat is not None:
            heartbeat.join()  # the process ends next: let its ping finish
    finally:
        webapp.close()
        if pinger is not None:
            pinger.close()
    report = daemon.last_report
    if once and (report is None or report.errors or report.internal_errors):
        failing = report is not None and any(e.startswith("exchange") for e in report.errors)
        code = ExitCode.WEBAPP_FAILING if failing else ExitCode.ERROR
    return int(code)


def _heartbeat(paths: Paths, settings: Settings) -> tuple[Any, Any]:
    """(Heartbeat, Pinger) for the ping URL, or (None, None) without one."""
    if not settings.ping_url:
        return None, None
    from .heartbeat import PING_TIMEOUT, RECORD_NAME, Heartbeat
    from .webapp import Pinger

    pinger = Pinger(settings.ping_url, timeout=PING_TIMEOUT)
    heartbeat = Heartbeat(settings.ping_url, settings.ping_every, pinger.get,
                          record=paths.data_dir / RECORD_NAME)
    logger.info("heartbeat pings to %s, at most every %ds while healthy", heartbeat.shown,
                settings.ping_every)
    return heartbeat, pinger


# backup / restore ------------------------------------------------------------------------
def backup(paths: Paths, list_only: bool, now: datetime) -> Outcome:
    """`smsgw backup`: take a backup of the state now and print its path; with `list_only`,
    list the backups there are, newest first."""
    from .store import backup as backups

    if list_only:
        found = backups.backups(paths.state_dir)
        if not found:
            return Outcome(out=[f"no backup yet in {paths.state_dir / backups.FOLDER} "
                                "(the daemon takes one a day; `smsgw backup` takes one now)"])
        return Outcome(out=[f"{b.path}  {fmt_time(b.taken, now)}  {b.size} bytes"
                            for b in reversed(found)])
    made = backups.take(paths.state_dir, now)
    return Outcome(out=[str(made.path)])


def restore(paths: Paths, file: str, now: datetime) -> Outcome:
    """`smsgw restore FILE`: put a backup back as the state, the daemon stopped; the current
    state is kept beside it; messages finished since the backup are not queued again."""
    from pathlib import Path

    from .daemon import AlreadyRunning, DaemonLock, read_pid_info
    from .store import backup as backups

    paths.ensure()
    lock = DaemonLock(paths)  # held to the end: no daemon starts on the state meanwhile
    try:
        lock.acquire(None)
    except AlreadyRunning:
        pid = (read_pid_info(paths) or {}).get("pid") or "?"
        raise AlreadyRunning(
            f"smsgw is running for {paths.data_dir} (pid {pid}): stop it first "
            "(`smsgw stop`, or `sv down smsgw` under runit), then restore") from None
    try:
        done = backups.restore(paths.state_dir, Path(file), now)
    finally:
        lock.release()
    out = [f"restored the state from {done.source}"]
    if done.kept_aside is not None:
        out.append(f"the previous state file is kept as {done.kept_aside}")
    if done.dropped:
        out.append(f"{len(done.dropped)} message(s) finished since the backup stay finished "
                   f"(not sent again): {', '.join(printable(i) for i in done.dropped)}")
    if done.newer:
        out.append(f"{done.newer} message(s) taken from the previous state, where they were "
                   "newer")
    if done.waiting_sms or done.waiting_updates:
        out.append(f"kept from the previous state, still to go to the webapp: "
                   f"{done.waiting_sms} received SMS, {done.waiting_updates} status "
                   "update(s)")
    return Outcome(out=out)
