"""The `smsgw` command line: parse options, build objects, call one core function.

Core modules are imported inside the commands: start-up time is felt on a phone, and
`smsgw status` must never import requests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any

import click

from . import __version__
from .config import Paths, Settings, default_paths, load_settings, redact_url, scrub
from .errors import Error, ExitCode, UserError

logger = logging.getLogger("smsgw")


class Ctx:
    """What every command needs: where files are, the settings, and --debug."""

    def __init__(self, debug: bool) -> None:
        self.debug = debug
        self.paths: Paths = default_paths()
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.paths)
        return self._settings

    def store(self) -> Any:
        from .store import Store

        self.paths.ensure()
        return Store(self.paths.state_dir, retention_days=self.settings.retention_days)


pass_ctx = click.make_pass_decorator(Ctx)


class SecretFilter(logging.Filter):
    """Last line of defence: the URL's secrets never reach a log line."""

    def __init__(self, url: str | None) -> None:
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        if self.url:
            record.msg = scrub(record.getMessage(), self.url)
            record.args = None
        return True


def setup_logging(paths: Paths, debug: bool, console: bool, url: str | None) -> None:
    """Event log: a rotating file (0600), plus stderr for foreground commands."""
    from logging.handlers import RotatingFileHandler

    paths.ensure()
    fd = os.open(paths.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    os.chmod(paths.log_file, 0o600)
    root = logging.getLogger("smsgw")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    secret_filter = SecretFilter(url)
    handler = RotatingFileHandler(paths.log_file, maxBytes=1_000_000, backupCount=3,
                                  encoding="utf-8")
    handlers: list[logging.Handler] = [handler]
    if console:
        stream = logging.StreamHandler(sys.stderr)
        # Under runit or Termux:Boot, stderr is a second log file: warnings only there,
        # everything in the rotating log.
        if not (debug or sys.stderr.isatty()):
            stream.setLevel(logging.WARNING)
        handlers.append(stream)
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(secret_filter)
        root.addHandler(h)


def fmt_time(iso: str | None, now: datetime | None = None) -> str:
    """A stored time for people: local-free UTC, with how long ago."""
    if not iso:
        return "never"
    dt = datetime.fromisoformat(iso)
    text = dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if now is not None:
        secs = int((now - dt).total_seconds())
        ago = f"{secs}s" if abs(secs) < 120 else f"{secs // 60} min" if abs(secs) < 7200 \
            else f"{secs // 3600} h"
        text += f" ({ago} ago)" if secs >= 0 else f" (in {ago.lstrip('-')})"
    return text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show debug logs and full tracebacks.")
@click.version_option(__version__, prog_name="smsgw")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """smsgw: send and receive SMS for a web application through an Android phone.

    It speaks the medic-gateway protocol (cht-gateway / SMSGateway app) over HTTP and drives
    the phone through Termux:API. Start with `smsgw doctor` and `smsgw config --url URL`.
    """
    ctx.obj = Ctx(debug)


# config ----------------------------------------------------------------------
def _duration_or_off(value: str | None) -> int | None | str:
    if value is None:
        return "keep"
    if value.lower() in ("off", "none", "0"):
        return None
    from .config import parse_duration

    return parse_duration(value)


@cli.command()
@click.option("--url", help="The webapp endpoint, e.g. https://user:pass@example.org/sms/")
@click.option("--no-check", is_flag=True, help="Save the URL without the GET handshake.")
@click.option("--interval", type=click.IntRange(5, 86400), help="Seconds between polls.")
@click.option("--cdma/--no-cdma", default=None, help="CDMA compatibility mode.")
@click.option("--cdma-prefix/--no-cdma-prefix", default=None,
              help="Prefix CDMA parts with n/N (default on).")
@click.option("--sim-slot", help="SIM slot (0-based) for sending, or 'none'.")
@click.option("--max-per-minute", type=click.IntRange(1, 10000),
              help="SMS parts sent per minute at most (Android's own default is 30).")
@click.option("--ttl", help="Fail messages still unsent after this long (e.g. 24h), or 'off'.")
@click.option("--compress-requests/--no-compress-requests", default=None,
              help="gzip request bodies (only if the webapp decodes them).")
@click.option("--ca-bundle", type=click.Path(dir_okay=False),
              help="CA certificates to trust for the webapp ('' for the system's).")
@click.option("--confirm-timeout", help="How long to wait for the phone's record of a send.")
@click.option("--notification-watch/--no-notification-watch", default=None,
              help="Cycle at once when a messaging app posts a notification.")
@click.option("--forward-since", metavar="WHEN",
              help="Forward incoming SMS received from WHEN on: 'now', or a local date and "
                   "time such as 2026-11-30T08:00 (default: when the URL was first set).")
@pass_ctx
def config(c: Ctx, url: str | None, no_check: bool, interval: int | None, cdma: bool | None,
           cdma_prefix: bool | None, sim_slot: str | None, max_per_minute: int | None,
           ttl: str | None, compress_requests: bool | None, ca_bundle: str | None,
           confirm_timeout: str | None, notification_watch: bool | None,
           forward_since: str | None) -> None:
    """Set or show the settings. With no option, print them (password as ***)."""
    from .config import parse_duration, parse_when, save_settings, validate_url
    from .models import to_iso, utcnow

    now = utcnow()
    since = parse_when(forward_since, now) if forward_since is not None else None

    # The file's own settings: an SMSGW_URL override must never be written into it.
    s = load_settings(c.paths, env={})
    changed = False
    if url is not None:
        s.url = validate_url(url)
        changed = True
    for name, value in (("interval", interval), ("cdma_mode", cdma), ("cdma_prefix", cdma_prefix),
                        ("max_parts_per_minute", max_per_minute),
                        ("compress_requests", compress_requests),
                        ("notification_watch", notification_watch)):
        if value is not None:
            setattr(s, name, value)
            changed = True
    if sim_slot is not None:
        if sim_slot.lower() == "none":
            s.sim_slot = None
        elif sim_slot.isdigit() and int(sim_slot) < 8:
            s.sim_slot = int(sim_slot)
        else:
            raise UserError("--sim-slot takes a slot number (0, 1, ...) or 'none'")
        changed = True
    ttl_value = _duration_or_off(ttl)
    if ttl_value != "keep":
        s.message_ttl = ttl_value  # type: ignore[assignment]
        changed = True
    if confirm_timeout is not None:
        s.confirm_timeout = parse_duration(confirm_timeout)
        changed = True
    if ca_bundle is not None:
        if ca_bundle and not os.path.isfile(ca_bundle):
            raise UserError(f"no such CA bundle file: {ca_bundle}")
        s.ca_bundle = os.path.abspath(ca_bundle) if ca_bundle else None
        changed = True
    if url is not None and not no_check:
        from .webapp import WebappClient

        client = WebappClient(s.url or "", connect_timeout=s.connect_timeout,
                              read_timeout=s.read_timeout, ca_bundle=s.ca_bundle)
        try:
            client.handshake()
        except Error as exc:
            raise UserError(f"{redact_url(s.url)} did not answer as a medic-gateway webapp: "
                            f"{exc} (settings not saved; use --no-check to save anyway)") from None
        finally:
            client.close()
        click.echo(f"✓ {redact_url(s.url)} answers as a medic-gateway webapp")
    if changed:
        save_settings(c.paths, s)
        click.echo(f"saved to {c.paths.config_file}")
    store = c.store()
    if since is not None:
        store.set_forward_since(since, now)
        click.echo(f"incoming SMS received from {fmt_time(to_iso(since))} on will be forwarded")
    elif url is not None and store.set_forward_since(now, now, keep=True):
        click.echo("incoming SMS received from now on will be forwarded (the inbox from "
                   "before stays private; see --forward-since)")
    if changed:
        from .daemon import daemon_running

        if daemon_running(c.paths):
            click.echo("restart the daemon to apply: sv restart smsgw (or stop and start "
                       "smsgw run)")
    shown = s.to_dict()
    shown["url"] = redact_url(s.url)
    start = store.forward_since(now)
    shown["forward_since"] = fmt_time(to_iso(start)) if start else None
    if os.environ.get("SMSGW_URL"):
        shown["url"] = f"{redact_url(c.settings.url)} (from SMSGW_URL)"
    width = max(len(k) for k in shown)
    for key, value in shown.items():
        click.echo(f"{key:<{width}}  {'-' if value is None else value}")


# status ----------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(c: Ctx, as_json: bool) -> None:
    """Health at a glance, from local state only (no network, no phone calls).

    Exit status: 0 healthy, 3 daemon not running, 4 last exchange with the webapp failed.
    """
    from .daemon import daemon_running
    from .models import utcnow

    now = utcnow()
    info = daemon_running(c.paths)
    summary = c.store().summary(now)
    s = c.settings
    last_ok, last_err = summary["last_exchange_ok"], summary["last_error"]
    failing = bool(last_err and (not last_ok or last_err["at"] > last_ok))
    code = ExitCode.DAEMON_DOWN if not info else ExitCode.WEBAPP_FAILING if failing \
        else ExitCode.OK
    data = {
        "healthy": code == ExitCode.OK,
        "exit_code": int(code),
        "daemon": {"running": bool(info), "pid": (info or {}).get("pid"),
                   "since": (info or {}).get("started")},
        "webapp": {"url": redact_url(s.url), "last_exchange_ok": last_ok,
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
                 "max_parts_per_minute": s.max_parts_per_minute},
    }
    text = json.dumps(data, indent=2) if as_json else _status_text(data, now)
    click.echo(scrub(text, s.url))
    sys.exit(int(code))


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
        lines.append(f"last error:    [{mark}] {fmt_time(err['at'], now)}: {err['text']}{said}")
    q = d["queues"]
    out = ", ".join(f"{k} {v}" for k, v in q["outgoing"].items() if v) or "empty"
    lines.append(f"outgoing:      {out}")
    inc = q["incoming"]
    lines.append(f"incoming:      {inc.get('WAITING', 0)} waiting for the webapp; "
                 f"{q['updates_queued']} status updates queued")
    if q["oldest_waiting"]:
        o = q["oldest_waiting"]
        lines.append(f"oldest unsent: {o['id']} to {o['to']} since {fmt_time(o['since'], now)}")
    if q["next_retry"]:
        lines.append(f"next retry:    {fmt_time(q['next_retry'], now)}")
    r = d["rate"]
    lines.append(f"rate:          {r['parts_last_minute']}/{r['max_parts_per_minute']} SMS parts "
                 "in the last minute")
    p = d["phone"]
    if p["last_error"]:
        lines.append(f"phone error:   {fmt_time(p['last_error']['at'], now)}: "
                     f"{p['last_error']['text']}")
    if p["notification_watcher"]:
        lines.append(f"notifications: {p['notification_watcher']}")
    if d["last_failures"]:
        lines.append("recent failures:")
        for f in d["last_failures"][-5:]:
            lines.append(f"  {f['id']}  to {f['to']}: {f['reason']}")
    lines.append("status:        " + ("healthy" if d["healthy"] else "UNHEALTHY"))
    return "\n".join(lines)


# messages --------------------------------------------------------------------
@cli.command()
@click.option("--state", "state_filter", help="Only messages in this state (e.g. FAILED).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def messages(c: Ctx, state_filter: str | None, limit: int, as_json: bool) -> None:
    """List messages from the webapp and SMS to the webapp, with their history."""
    from .models import utcnow

    out, incoming = c.store().messages(utcnow(), limit)
    if state_filter:
        want = state_filter.upper()
        out = [m for m in out if m.state.value == want]
        incoming = [m for m in incoming if m.state.value == want]
    if as_json:
        click.echo(json.dumps({"from_webapp": [m.to_dict() for m in out],
                               "to_webapp": [m.to_dict() for m in incoming]}, indent=2))
        return
    click.echo(f"From webapp ({len(out)}):")
    for m in out:
        history = " → ".join(h.state for h in m.history)
        reason = f" ({m.reason})" if m.reason else ""
        click.echo(f"  {m.id}  to {m.to}  {m.state.value}{reason}  retries {m.retries}")
        click.echo(f"      {history}   {m.content[:60]!r}")
    click.echo(f"To webapp ({len(incoming)}):")
    for i in incoming:
        click.echo(f"  {i.id}  from {i.from_}  {i.state.value}  {i.content[:60]!r}")


# log ---------------------------------------------------------------------------
@cli.command("log")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "lines", default=50, show_default=True, type=click.IntRange(0, 100000))
@pass_ctx
def log_cmd(c: Ctx, follow: bool, lines: int) -> None:
    """Show the event log."""
    import time
    from collections import deque

    path = c.paths.log_file
    if not path.exists():
        raise UserError(f"no log yet ({path}); it starts with `smsgw run`")
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in deque(fh, maxlen=lines) if lines else []:
            click.echo(line.rstrip("\n"))
        if not follow:
            return
        inode = os.fstat(fh.fileno()).st_ino
        try:
            while True:
                line = fh.readline()
                if line:
                    click.echo(line.rstrip("\n"))
                    continue
                time.sleep(0.5)
                try:
                    if os.stat(path).st_ino != inode:  # rotated
                        fh.close()
                        fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                        inode = os.fstat(fh.fileno()).st_ino
                except FileNotFoundError:
                    pass
        except KeyboardInterrupt:
            pass


# send / retry / hook -------------------------------------------------------------
@cli.command()
@click.argument("number")
@click.argument("text")
@pass_ctx
def send(c: Ctx, number: str, text: str) -> None:
    """Queue a local test SMS through the same path as webapp messages."""
    from .daemon import wake
    from .models import utcnow
    from .phone.base import java_trim, normalize_number

    number = normalize_number(number)
    if not java_trim(text):
        raise UserError("the text is empty (Termux:API trims spaces and control characters, "
                        "and sends nothing for an empty text)")
    msg = c.store().add_local(number, text, utcnow())
    click.echo(f"queued {msg.id} to {number}")
    if wake(c.paths) is None:
        click.echo("no daemon is running: it is sent by the next `smsgw run`", err=True)


@cli.command("retry")
@click.argument("ids", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every FAILED message.")
@pass_ctx
def retry_cmd(c: Ctx, ids: tuple[str, ...], all_failed: bool) -> None:
    """Send FAILED messages again, starting over from retry #1."""
    from .daemon import wake
    from .models import utcnow

    if not ids and not all_failed:
        raise click.UsageError("name message ids, or use --failed")
    result = c.store().retry(list(ids), all_failed, utcnow())
    for msg_id in result.retried:
        click.echo(f"{msg_id}: queued again")
    for msg_id in result.not_found:
        click.echo(f"{msg_id}: no such message (see smsgw messages)", err=True)
    for msg_id, state in result.wrong_state:
        click.echo(f"{msg_id}: is {state}, not FAILED; nothing to retry", err=True)
    if all_failed and not result.retried:
        click.echo("no FAILED message to retry")
    if result.retried and wake(c.paths) is None:
        click.echo("no daemon is running: they are sent by the next `smsgw run`", err=True)
    if result.not_found:
        sys.exit(ExitCode.NOT_FOUND)
    if result.wrong_state:
        sys.exit(ExitCode.WRONG_STATE)


@cli.command()
@pass_ctx
def hook(c: Ctx) -> None:
    """Wake the running daemon for an immediate cycle (for Termux:Tasker on SMS received)."""
    from .daemon import wake

    pid = wake(c.paths)
    if pid is None:
        click.echo("smsgw: no daemon is running; nothing to wake", err=True)
        sys.exit(ExitCode.DAEMON_DOWN)
    click.echo(f"woke smsgw (pid {pid})")


# run -----------------------------------------------------------------------------
def build_phone(kind: str, settings: Settings) -> Any:
    """The phone for `smsgw run`: Termux:API by default."""
    if kind == "simulated":
        from .phone.simulated import SimulatedPhone

        return SimulatedPhone()
    from .phone.termux import TermuxPhone, termux_api_installed

    if not termux_api_installed():
        raise UserError(
            "termux-api commands not found: run `pkg install termux-api` and install the "
            "Termux:API app (F-Droid), or use --phone simulated"
        )
    return TermuxPhone(sim_slot=settings.sim_slot, send_timeout=settings.send_timeout,
                       list_timeout=settings.list_timeout)


@cli.command()
@click.option("--phone", "phone_kind", type=click.Choice(["termux", "simulated"]),
              default="termux", show_default=True)
@click.option("--url", help="Webapp URL for this run (overrides the settings).")
@click.option("--once", is_flag=True, help="Run one full cycle and exit.")
@click.option("--interval", type=click.IntRange(1, 86400), help="Seconds between polls.")
@click.option("--max-cycles", type=click.IntRange(1), hidden=True)
@pass_ctx
def run(c: Ctx, phone_kind: str, url: str | None, once: bool, interval: int | None,
        max_cycles: int | None) -> None:
    """Run the gateway in the foreground (as runit and Termux:Boot expect)."""
    from .config import validate_url

    s = c.settings
    if url:
        s.url = validate_url(url)
    if interval:
        s.interval = interval
    if not s.url:
        raise UserError("no webapp URL: run `smsgw config --url URL` or pass --url")
    setup_logging(c.paths, c.debug, console=True, url=s.url)
    from .daemon import Daemon
    from .gateway import Gateway
    from .webapp import WebappClient

    phone = build_phone(phone_kind, s)
    webapp = WebappClient(s.url, connect_timeout=s.connect_timeout, read_timeout=s.read_timeout,
                          ca_bundle=s.ca_bundle, compress_requests=s.compress_requests)
    gateway = Gateway(c.store(), webapp, phone, s)
    daemon = Daemon(gateway, c.paths, s.interval, max_cycles=1 if once else max_cycles)
    if s.notification_watch and phone_kind == "termux":
        from .watcher import NotificationWatcher

        watcher = NotificationWatcher(c.store(), timeout=s.list_timeout)
        daemon.add_watcher(watcher.period, watcher.check)
    else:
        from .models import utcnow

        with c.store().unit(utcnow()) as u:  # no stale watcher state in `smsgw status`
            if u.meta("watcher"):
                u.set_meta("watcher", None)
    try:
        code = daemon.run()
    finally:
        webapp.close()
    report = daemon.last_report
    if once and (report is None or report.errors):
        failing = report is not None and any(e.startswith("exchange") for e in report.errors)
        code = ExitCode.WEBAPP_FAILING if failing else ExitCode.ERROR
    sys.exit(code)


# demo / testserver ---------------------------------------------------------------
@cli.command()
@click.option("--verbose", is_flag=True, help="Also print the gateway's log lines.")
def demo(verbose: bool) -> None:
    """Run the whole flow on a simulated phone against the built-in test webapp."""
    from .demo import run_demo

    sys.exit(run_demo(echo=click.echo, verbose=verbose))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8585, show_default=True, type=click.IntRange(0, 65535))
@click.option("--user", help="Require Basic auth with this user.")
@click.option("--password", help="... and this password.")
@click.option("--flavour", type=click.Choice(["reference", "cht", "php"]), default="reference",
              show_default=True,
              help="Behave like cht-core's gateway API (cht) or the multiOTP SMSGateway PHP "
                   "class (php), unkind parts included; see `smsgw testserver --help`.")
def testserver(host: str, port: int, user: str | None, password: str | None,
               flavour: str) -> None:
    """Serve the reference webapp (server side of the protocol) for trials and tests.

    \b
    Flavours:
      reference  strict protocol checks; offers each message until it gets a status
      cht        cht-core: exact Content-Type, 401/302 on bad auth, at most 25 messages
                 an answer, statuses applied in order (a state can go backwards)
      php        multiOTP SMSGateway: control characters raw in its JSON answers, each
                 message handed over once, `{}` when nothing is queued
    """
    from .testserver import serve

    serve(host, port, username=user, password=password, flavour=flavour)


# doctor --------------------------------------------------------------------------
@cli.command()
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per check.")
@pass_ctx
def doctor(c: Ctx, timeout: float) -> None:
    """Check the phone set-up and the webapp, and say how to fix what is wrong."""
    from .doctor import run_checks

    ok = run_checks(c.settings, timeout, echo=click.echo)
    sys.exit(ExitCode.OK if ok else ExitCode.ERROR)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one readable line per error, a traceback only with --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="smsgw", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(ExitCode.ERROR)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Error as exc:
        _fail(str(exc), exc.exit_code, debug)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the promise: no traceback without --debug
        _fail(f"unexpected error: {exc.__class__.__name__}: {exc} "
              "(run with --debug for details)", ExitCode.ERROR, debug)
    sys.exit(ExitCode.OK)


def _fail(text: str, code: int, debug: bool) -> None:
    url = None
    with contextlib.suppress(Error):
        url = load_settings(default_paths()).url
    if debug:
        import traceback

        click.echo(scrub(traceback.format_exc(), url), err=True)
    click.echo(f"smsgw: error: {scrub(text, url)}", err=True)
    sys.exit(code)


