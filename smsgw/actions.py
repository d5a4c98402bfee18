"""What the commands do. Each `smsgw` command parses its options, calls one function here,
and prints what it returns: health, exit codes and settings changes are decided here, not
in cli.py. Nothing here imports requests except `configure`, and only when it must.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .config import Paths, Settings, redact_url, scrub
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
    dt = datetime.fromisoformat(iso) if isinstance(iso, str) else iso
    text = dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if now is not None:
        secs = int((now - dt).total_seconds())
        ago = f"{secs}s" if abs(secs) < 120 else f"{secs // 60} min" if abs(secs) < 7200 \
            else f"{secs // 3600} h"
        text += f" ({ago} ago)" if secs >= 0 else f" (in {ago.lstrip('-')})"
    return text


# config --------------------------------------------------------------------------------
_OPTION_OF = {"url": "--url", "interval": "--interval", "sim_slot": "--sim-slot",
              "max_parts_per_minute": "--max-per-minute", "message_ttl": "--ttl",
              "ca_bundle": "--ca-bundle", "confirm_timeout": "--confirm-timeout",
              "max_parts": "--max-parts", "exchange_deadline": "--exchange-deadline",
              "allow_redirects_to": "--allow-redirects-to", "cdma_mode": "--cdma",
              "cdma_prefix": "--cdma-prefix", "compress_requests": "--compress-requests",
              "notification_watch": "--notification-watch", "alert_to": "--alert-to",
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
    if changed:
        save_settings(paths, new)
        result.out.append(f"saved to {paths.config_file}")
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
    shown["url"] = redact_url(new.url)
    start = store.forward_since(now)
    shown["forward_since"] = fmt_time(start) if start else None
    if os.environ.get("SMSGW_URL"):
        shown["url"] = f"{redact_url(load_settings(paths).url)} (from SMSGW_URL)"
    width = max(len(k) for k in shown)
    result.out += [f"{key:<{width}}  {'-' if value is None else value}"
                   for key, value in shown.items()]
    return result


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
                   "next_retry": summary["next_retry"]},
        "last_failures": summary["last_failures"],
        "phone": {"last_error": summary["phone_error"],
                  "notification_watcher": summary["watcher"]},
        "rate": {"parts_last_minute": summary["parts_last_minute"],
                 "max_parts_per_minute": settings.max_parts_per_minute},
        "clock_jump": summary["clock_jump"],
        "phone_health": summary["phone_health"],
        "alerts": {"to": settings.alert_to, **summary["alerts"]},
    }
    text = json.dumps(data, indent=2) if as_json else _status_text(data, now)
    return Outcome(out=[scrub(text, settings.url)], code=code, data=data)


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
        said = f" — webapp said: {err['message']}" if err.get("message") else ""
        mark = "FAILING" if w["failing"] else "earlier"
        lines.append(f"last error:    [{mark}] {fmt_time(err['at'], now)}: "
                     f"{printable(err['text'])}{printable(said)}")
    q = d["queues"]
    out = ", ".join(f"{k} {v}" for k, v in q["outgoing"].items() if v) or "empty"
    lines.append(f"outgoing:      {out}")
    inc = q["incoming"]
    aside = f"; {inc['SET_ASIDE']} set aside" if inc.get("SET_ASIDE") else ""
    lines.append(f"incoming:      {inc.get('WAITING', 0)} waiting for the webapp{aside}; "
                 f"{q['updates_queued']} status updates queued")
    if q["oldest_waiting"]:
        o = q["oldest_waiting"]
        lines.append(f"oldest unsent: {printable(o['id'])} to {printable(o['to'])} since "
                     f"{fmt_time(o['since'], now)}")
    if q["next_retry"]:
        lines.append(f"next retry:    {fmt_time(q['next_retry'], now)}")
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
    if d["last_failures"]:
        lines.append("recent failures:")
        for f in d["last_failures"][-5:]:
            lines.append(f"  {printable(f['id'])}  to {printable(f['to'])}: "
                         f"{printable(f['reason'])}")
    lines.append("status:        " + ("healthy" if d["healthy"] else "UNHEALTHY"))
    return "\n".join(lines)


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
    result.err += [f"{p(i)}: is {state}, not FAILED; nothing to retry"
                   for i, state in res.wrong_state]
    if all_failed and not res.retried:
        result.out.append("no FAILED message to retry")
    if res.retried and wake(paths) is None:
        result.err.append("no daemon is running: they are sent by the next `smsgw run`")
    result.code = (ExitCode.NOT_FOUND if res.not_found else
                   ExitCode.WRONG_STATE if res.wrong_state else ExitCode.OK)
    return result


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
    webapp = WebappClient(settings.url, connect_timeout=settings.connect_timeout,
                          read_timeout=settings.read_timeout, ca_bundle=settings.ca_bundle,
                          compress_requests=settings.compress_requests,
                          deadline=settings.exchange_deadline,
                          allow_redirects_to=_hosts(settings.allow_redirects_to))
    gateway = Gateway(store, webapp, phone, settings)
    daemon = Daemon(gateway, paths, settings.interval, max_cycles=1 if once else max_cycles)
    if settings.notification_watch and phone.name == "termux":
        from .watcher import NotificationWatcher

        watcher = NotificationWatcher(store, timeout=settings.list_timeout)
        daemon.add_watcher(watcher.period, watcher.check)
    else:
        with store.unit(utcnow()) as u:  # no stale watcher state in `smsgw status`
            u.watcher = None
    try:
        code = daemon.run()
    finally:
        webapp.close()
    report = daemon.last_report
    if once and (report is None or report.errors or report.internal_errors):
        failing = report is not None and any(e.startswith("exchange") for e in report.errors)
        code = ExitCode.WEBAPP_FAILING if failing else ExitCode.ERROR
    return int(code)
