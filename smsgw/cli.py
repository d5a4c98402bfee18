"""The `smsgw` command line: parse options, build objects, call one core function.

Core modules are imported inside the commands: start-up time is felt on a phone, and
`smsgw status` must never import requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

import click

from . import __version__
from .config import Paths, Settings, default_paths, load_settings, scrub_secrets, secrets_of
from .errors import Error, ExitCode, InternalError, UserError

logger = logging.getLogger("smsgw")


class Ctx:
    """What every command needs: where files are, the settings, and --debug."""

    def __init__(self, debug: bool) -> None:
        self.debug = debug
        self.paths: Paths = default_paths()
        self._settings: Settings | None = None
        self._store: Any = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.paths)
        return self._settings

    def store(self) -> Any:
        """The one Store of this process."""
        if self._store is None:
            from .store import Store

            self.paths.ensure()
            self._store = Store(self.paths.state_dir, retention_days=self.settings.retention_days)
        return self._store


pass_ctx = click.make_pass_decorator(Ctx)


def _secrets(url: str | None = None) -> tuple[str, ...]:
    """What no text of smsgw may show: the secrets of the saved settings (webapp URL, ping
    URL, see config.Spec.secret), of SMSGW_URL, and of `url` (one being set now)."""
    saved = None
    with contextlib.suppress(Error, OSError):  # the file alone: a bad SMSGW_URL hides nothing
        saved = load_settings(default_paths(), env={})
    given = [u for u in (url, os.environ.get("SMSGW_URL")) if u]
    return secrets_of(saved, *(Settings(url=u) for u in given))


class SecretFilter(logging.Filter):
    """Last line of defence: no secret of the settings (nor of `url`, one being set) reaches
    a log line, whether in its message or in its traceback."""

    def __init__(self, url: str | None) -> None:
        super().__init__()
        self.secrets = _secrets(url)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = scrub_secrets(record.getMessage(), self.secrets)
            record.args = None
            if record.exc_info and not record.exc_text:  # formatted here, so scrubbed
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = scrub_secrets(record.exc_text, self.secrets)
            if record.stack_info:
                record.stack_info = scrub_secrets(record.stack_info, self.secrets)
        return True


class OneLineFormatter(logging.Formatter):
    """Each event on one line: control characters in a message (an id or a reason from the
    webapp holding a newline or ESC) are escaped, so no line of the log can be forged.
    A traceback, added after the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        from .models import printable

        record.message = printable(record.message)
        return super().formatMessage(record)


def _private_log_handler(path: Any, rotate: bool = True) -> logging.Handler:
    """A RotatingFileHandler whose files are opened 0600 and never through a link (the log
    holds SMS text and numbers; a rotated file would otherwise follow the umask).

    Without `rotate` it only appends: a command that logs a line or two beside a running
    daemon must not rotate the file under it (two processes rotating one log lose lines).
    """
    from logging.handlers import RotatingFileHandler

    from .config import open_private

    class PrivateRotatingFileHandler(RotatingFileHandler):
        def _open(self) -> Any:
            fd = open_private(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.fchmod(fd, 0o600)
            return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    return PrivateRotatingFileHandler(path, maxBytes=1_000_000 if rotate else 0,
                                      backupCount=3, encoding="utf-8")


def setup_logging(paths: Paths, debug: bool, console: bool, url: str | None) -> None:
    """Event log: a rotating file (0600), plus stderr for foreground commands. Each line
    starts with its time in UTC (`2026-12-07T09:00:00Z INFO ...`, see eventlog.py).
    Without `console` (a command run beside the daemon) the file is appended to, never
    rotated: the daemon rotates it."""
    import time

    from .eventlog import LINE_FORMAT, TIME_FORMAT

    paths.ensure()
    root = logging.getLogger("smsgw")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    fmt = OneLineFormatter(LINE_FORMAT, TIME_FORMAT)
    fmt.converter = time.gmtime
    secret_filter = SecretFilter(url)
    handler = _private_log_handler(paths.log_file, rotate=console)
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show debug logs and full tracebacks.")
@click.version_option(__version__, prog_name="smsgw")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """smsgw: send and receive SMS for a web application through an Android phone.

    It speaks the medic-gateway protocol (cht-gateway / SMSGateway app) over HTTP and drives
    the phone through Termux:API. Start with `smsgw doctor` and `smsgw config --url URL`.

    \b
    Exit codes:
      0  success (status: healthy)
      1  error (the message says what to do)
      2  wrong usage (an unknown option, a missing argument)
      3  no daemon is running (status, hook)
      4  the last exchange with the webapp failed (status, run --once)
      5  no such message id, or an id prefix naming several (retry, cancel)
      6  the message is not in a state for this (retry: not FAILED; cancel:
         already handed to the phone or finished)
      7  a daemon is already running for this state folder (run, restore)
    """
    ctx.obj = Ctx(debug)


# config ----------------------------------------------------------------------
# Options of `smsgw config` that set one setting each: option name -> setting. Their types
# and bounds are in config.SPECS, so the options take text and the core checks it.
_SETTING_OPTIONS = {
    "interval": "interval", "sim_slot": "sim_slot", "max_per_minute": "max_parts_per_minute",
    "ttl": "message_ttl", "ca_bundle": "ca_bundle", "confirm_timeout": "confirm_timeout",
    "max_parts": "max_parts", "exchange_deadline": "exchange_deadline",
    "allow_redirects_to": "allow_redirects_to",
    "ping_url": "ping_url", "ping_every": "ping_every",
    "alert_to": "alert_to", "alert_after": "alert_after", "alert_every": "alert_every",
}
_FLAG_OPTIONS = {"cdma": "cdma_mode", "cdma_prefix": "cdma_prefix",
                 "compress_requests": "compress_requests",
                 "notification_watch": "notification_watch",
                 "report_health": "report_health"}


@cli.command()
@click.option("--url", help="The webapp endpoint, e.g. https://user:pass@example.org/sms/; "
                            "'-' reads it from standard input (hidden on a terminal), which "
                            "keeps the password out of ps and the shell history.")
@click.option("--url-file", type=click.Path(dir_okay=False),
              help="Read the URL from the first line of FILE (mode 600).")
@click.option("--no-check", is_flag=True, help="Save the URL without the GET handshake.")
@click.option("--interval", metavar="SECONDS", help="Seconds between polls (1 to 86400).")
@click.option("--cdma/--no-cdma", default=None, help="CDMA compatibility mode.")
@click.option("--cdma-prefix/--no-cdma-prefix", default=None,
              help="Prefix CDMA parts with n/N (default on).")
@click.option("--sim-slot", help="SIM slot (0-based) for sending, or 'none'.")
@click.option("--max-per-minute", metavar="N",
              help="SMS parts sent per minute at most (Android's own default is 30).")
@click.option("--max-parts", metavar="N",
              help="Refuse texts longer than N SMS parts (default 10).")
@click.option("--ttl", help="Fail messages still unsent after this long (e.g. 24h), or 'off'.")
@click.option("--compress-requests/--no-compress-requests", default=None,
              help="gzip request bodies (only if the webapp decodes them).")
@click.option("--ca-bundle", help="CA certificates to trust for the webapp ('' for the "
                                  "system's).")
@click.option("--confirm-timeout", help="How long to wait for the phone's record of a send.")
@click.option("--exchange-deadline", metavar="DURATION",
              help="How long one exchange with the webapp may take in all (default 120s).")
@click.option("--allow-redirects-to", metavar="HOSTS",
              help="Hosts (comma-separated) the webapp may redirect to, or 'none'.")
@click.option("--notification-watch/--no-notification-watch", default=None,
              help="Cycle at once when a messaging app posts a notification.")
@click.option("--ping-url", metavar="URL",
              help="GET this URL after healthy cycles, URL/fail after unhealthy ones (a "
                   "healthchecks.io-style heartbeat); '-' reads it from standard input; "
                   "'none' turns it off.")
@click.option("--ping-every", metavar="DURATION",
              help="Healthy heartbeat pings at most this often (default 5m).")
@click.option("--report-health/--no-report-health", default=None,
              help="Add an \"smsgw\" health object to each POST to the webapp.")
@click.option("--alert-to", metavar="NUMBER",
              help="Send alert SMS to this number when the gateway is unhealthy, and when it "
                   "recovers; 'none' turns alerts off.")
@click.option("--alert-after", metavar="DURATION",
              help="How long a webapp or phone problem lasts before an alert (default 30m).")
@click.option("--alert-every", metavar="DURATION",
              help="At most one alert per problem this often (default 6h).")
@click.option("--forward-since", metavar="WHEN",
              help="Forward incoming SMS received from WHEN on: 'now', or a local date and "
                   "time such as 2026-11-30T08:00 (default: when the URL was first set).")
@pass_ctx
def config(c: Ctx, url: str | None, url_file: str | None, no_check: bool,
           forward_since: str | None, **options: Any) -> None:
    """Set or show the settings. With no option, print them (password as ***).

    Each change is written to the event log (smsgw log), the URL's password as ***.
    """
    from . import actions
    from .config import read_url_argument, read_url_file
    from .models import utcnow

    if url is not None and url_file is not None:
        raise click.UsageError("give --url or --url-file, not both")
    if options["ping_url"] == "-":  # the token stays out of ps and the shell history
        if url == "-":
            raise click.UsageError("only one of --url and --ping-url can read standard input")
        options["ping_url"] = read_url_argument(
            "-", sys.stdin, sys.stdin.isatty(), lambda text: click.prompt(text, hide_input=True),
            option="--ping-url", what="heartbeat URL")
    if url_file is not None:
        url = read_url_file(url_file)
    elif url is not None:
        url = read_url_argument(url, sys.stdin, sys.stdin.isatty(),
                                lambda text: click.prompt(text, hide_input=True))
    texts = {setting: options[name] for name, setting in _SETTING_OPTIONS.items()
             if options[name] is not None}
    flags = {setting: options[name] for name, setting in _FLAG_OPTIONS.items()
             if options[name] is not None}
    saved_url = None
    with contextlib.suppress(Error):  # a damaged file is reported by configure itself
        saved_url = c.settings.url
    setup_logging(c.paths, c.debug, console=False, url=url or saved_url)
    _print(actions.configure(c.paths, c.store, url=url, check=not no_check, texts=texts,
                             flags=flags, forward_since=forward_since, now=utcnow()))


# status ----------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(c: Ctx, as_json: bool) -> None:
    """Health at a glance, from local state only (no network, no phone calls): the
    daemon, the webapp, the queues by state, retries and their next try, what was sent,
    failed and received today / in 7 days / in all, the rate budget, phone errors.

    Exit status: 0 healthy, 3 daemon not running, 4 last exchange with the webapp failed.
    """
    from . import actions
    from .models import utcnow

    _print(actions.status(c.paths, c.settings, c.store(), utcnow(), as_json))


# messages --------------------------------------------------------------------
def _complete(kind: str, states: frozenset[str] | None = None) -> Any:
    """A click `shell_complete` callback listing ids (of `kind`, in `states`); it never
    fails: completion must not print a traceback into the user's shell."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
        try:
            from . import actions

            return actions.complete_ids(default_paths(), kind, states, incomplete)
        except Exception:  # noqa: BLE001 - a damaged state means no candidates, no noise
            return []

    return complete


def _complete_state(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    from .actions import valid_states

    return [s for s in valid_states() if s.startswith(incomplete.upper())]


@cli.command()
@click.option("--state", "states", multiple=True, metavar="STATE",
              shell_complete=_complete_state,
              help="Only messages in this state (e.g. FAILED, WAITING); repeat for several.")
@click.option("--number", metavar="NUMBER",
              help="Only messages to or from a number ending with these digits "
                   "(+254 700 000 001, 700000001), or from this sender name.")
@click.option("--direction", type=click.Choice(["in", "out"]),
              help="in: SMS to the webapp; out: messages from the webapp.")
@click.option("--since", metavar="WHEN",
              help="Only messages that reached smsgw since WHEN: a time back from now "
                   "(2h, 30m, 1h30m, 7d) or a date and time in UTC (2026-11-30, "
                   "2026-11-30T08:00).")
@click.option("--until", metavar="WHEN", help="... and until WHEN (same forms).")
@click.option("--id", "id_prefix", metavar="ID", shell_complete=_complete("any"),
              help="Only messages whose id starts with ID.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000),
              help="The newest N of each direction, after the filters.")
@click.option("--full", is_flag=True, help="Whole texts, and the time of each state.")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output, stable for scripts: from_webapp and to_webapp "
                   "(lists of records), more_from_webapp and more_to_webapp (left out by "
                   "--limit); see the README.")
@pass_ctx
def messages(c: Ctx, states: tuple[str, ...], number: str | None, direction: str | None,
             since: str | None, until: str | None, id_prefix: str | None, limit: int,
             full: bool, as_json: bool) -> None:
    """List messages from the webapp and SMS to the webapp, with their history.

    Times are UTC. The filters apply before --limit.
    """
    from . import actions
    from .models import utcnow

    _print(actions.messages(c.store(), utcnow(), limit=limit, states=states, number=number,
                            direction=direction, since=since, until=until,
                            id_prefix=id_prefix, full=full, as_json=as_json))


# log ---------------------------------------------------------------------------
@cli.command("log")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "lines", default=50, show_default=True, type=click.IntRange(0, 100000),
              help="Show the last N lines (of those the other options keep).")
@click.option("--since", metavar="WHEN",
              help="Only events since WHEN: a time back from now (2h, 30m, 1h30m, 1d) or "
                   "a date and time in UTC (2026-12-07, 2026-12-07T09:00).")
@click.option("--id", "msg_id", metavar="ID",
              help="Only lines naming this message (its id, or a unique prefix of it).")
@click.option("--level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
                                           case_sensitive=False),
              help="Only events of this level and above (WARNING: warnings and errors).")
@pass_ctx
def log_cmd(c: Ctx, follow: bool, lines: int, since: str | None, msg_id: str | None,
            level: str | None) -> None:
    """Show the event log: what the gateway and the operator did, one event a line, in
    UTC, with the message id. Reads the rotated files too (smsgw.log.3 .. smsgw.log)."""
    from .actions import log_id, when
    from .eventlog import Filter, show
    from .models import utcnow

    now = utcnow()
    if msg_id is not None:
        msg_id = log_id(c.store, msg_id, now)
    wanted = Filter(since=when(since, "--since", now) if since else None, msg_id=msg_id,
                    level=level)
    show(c.paths.log_file, lines, wanted, follow, click.echo)


# stats ---------------------------------------------------------------------------
@cli.command()
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 3660),
              help="How many UTC days back, today included.")
@click.option("--week", is_flag=True, help="One row a week (ISO weeks) instead of a day.")
@click.option("--csv", "as_csv", is_flag=True, help="Comma-separated values.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def stats(c: Ctx, days: int, week: bool, as_csv: bool, as_json: bool) -> None:
    """Messages sent and failed, SMS received, SMS parts sent (what airtime costs) and the
    median time from arrival to SENT, per UTC day or week, from the archive (kept
    `retention_days`) and the queues."""
    from . import actions
    from .models import utcnow

    if as_csv and as_json:
        raise click.UsageError("give --csv or --json, not both")
    _print(actions.stats(c.store(), utcnow(), days=days, week=week,
                         form="csv" if as_csv else "json" if as_json else "table"))


# send / retry / hook -------------------------------------------------------------
@cli.command()
@click.argument("number")
@click.argument("text")
@pass_ctx
def send(c: Ctx, number: str, text: str) -> None:
    """Queue a local test SMS through the same path as webapp messages."""
    from . import actions
    from .models import utcnow

    setup_logging(c.paths, c.debug, console=False, url=c.settings.url)
    _print(actions.send(c.paths, c.store(), number, text, utcnow()))


@cli.command("retry")
@click.argument("ids", nargs=-1, shell_complete=_complete("out", frozenset({"FAILED"})))
@click.option("--failed", "all_failed", is_flag=True, help="Retry every FAILED message.")
@pass_ctx
def retry_cmd(c: Ctx, ids: tuple[str, ...], all_failed: bool) -> None:
    """Send FAILED messages again, starting over from retry #1.

    An ID may be a unique prefix of the id. Exit status: 5 when an id is unknown or an
    ambiguous prefix, 6 when a message is not FAILED (it is left as it is).
    """
    from . import actions
    from .models import utcnow

    if not ids and not all_failed:
        raise click.UsageError("name message ids, or use --failed")
    setup_logging(c.paths, c.debug, console=False, url=c.settings.url)
    _print(actions.retry(c.paths, c.store(), list(ids), all_failed, utcnow()))


@cli.command()
@click.argument("ids", nargs=-1, required=True,
                shell_complete=_complete("out", frozenset({"UNSENT"})))
@pass_ctx
def cancel(c: Ctx, ids: tuple[str, ...]) -> None:
    """Cancel messages not yet handed to the phone (UNSENT: first try or waiting for a
    retry): they end FAILED with the reason `cancelled`, which the webapp hears.

    An ID may be a unique prefix of the id. Exit status: 5 when an id is unknown or an
    ambiguous prefix, 6 when a message cannot be cancelled (already handed to the phone,
    or finished; it is left as it is).
    """
    from . import actions
    from .models import utcnow

    setup_logging(c.paths, c.debug, console=False, url=c.settings.url)
    _print(actions.cancel(c.paths, c.store(), list(ids), utcnow()))


def _print(outcome: Any) -> None:
    """Print what a core function returned, and exit with its code."""
    for line in outcome.out:
        click.echo(line)
    for line in outcome.err:
        click.echo(line, err=True)
    if outcome.code:
        sys.exit(int(outcome.code))


@cli.command()
@pass_ctx
def hook(c: Ctx) -> None:
    """Wake the running daemon for an immediate cycle (for Termux:Tasker on SMS received).

    Exit status: 0 woken, 3 no daemon is running.
    """
    from .daemon import wake

    pid = wake(c.paths)
    if pid is None:
        click.echo("smsgw: no daemon is running; nothing to wake", err=True)
        sys.exit(ExitCode.DAEMON_DOWN)
    click.echo(f"woke smsgw (pid {pid})")


def _log_beside_daemon(c: Ctx) -> None:
    """The event log for stop, backup and restore (appended to, as cancel does), even with
    a damaged config.json: these must work then, and none of them logs the URL."""
    try:
        url = c.settings.url
    except UserError:
        url = None
    setup_logging(c.paths, c.debug, console=False, url=url)


@cli.command()
@click.option("--timeout", default=30.0, show_default=True,
              type=click.FloatRange(0, 3600), help="Seconds to wait for the daemon to exit.")
@pass_ctx
def stop(c: Ctx, timeout: float) -> None:
    """Stop the daemon on purpose: the watchdog leaves it down until the next `smsgw run`."""
    from . import actions

    _log_beside_daemon(c)
    _print(actions.stop(c.paths, timeout))


# run -----------------------------------------------------------------------------
def build_phone(kind: str, settings: Settings, state_dir: Any = None) -> Any:
    """The phone for `smsgw run`: Termux:API by default. The simulated phone keeps its SMS
    in `state_dir` (in memory without it), so it survives restarts like a phone."""
    if kind == "simulated":
        from .phone.simulated import SimulatedPhone

        if state_dir is None:
            return SimulatedPhone()
        from .simulation import phone_file

        return SimulatedPhone(file=phone_file(state_dir))
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
              default="termux", show_default=True,
              help="termux: the phone, through Termux:API. simulated: a phone kept in the "
                   "state folder, for trying smsgw anywhere; drive it with `smsgw simulate`.")
@click.option("--url", help="Webapp URL for this run (overrides the settings).")
@click.option("--once", is_flag=True, help="Run one full cycle and exit.")
@click.option("--interval", type=int, help="Seconds between polls, for this run.")
@click.option("--max-cycles", type=click.IntRange(1), hidden=True)
@pass_ctx
def run(c: Ctx, phone_kind: str, url: str | None, once: bool, interval: int | None,
        max_cycles: int | None) -> None:
    """Run the gateway in the foreground (as runit and Termux:Boot expect).

    Exit status: 0 stopped cleanly; with --once, 4 when the exchange with the webapp
    failed and 1 on another error; 7 when a daemon already runs for this state folder.
    """
    from . import actions

    if url:
        c.settings.url = actions.checked("url", url, "--url")
    if interval is not None:
        c.settings.interval = actions.checked("interval", interval, "--interval")
    if not c.settings.url:
        raise UserError("no webapp URL: run `smsgw config --url URL` or pass --url")
    setup_logging(c.paths, c.debug, console=True, url=c.settings.url)
    sys.exit(actions.run(c.paths, c.settings, c.store(),
                         build_phone(phone_kind, c.settings, c.paths.state_dir),
                         once=once, max_cycles=max_cycles))


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

    The endpoint to configure is printed first (http://127.0.0.1:8585/smsgateway/ by
    default; /api/sms for cht). Try it with `smsgw run --phone simulated`.

    \b
    Flavours:
      reference  strict protocol checks; offers each message until it gets a status
      cht        cht-core: exact Content-Type, 401/302 on bad auth, at most 25 messages
                 an answer, statuses applied in order (a state can go backwards)
      php        multiOTP SMSGateway: control characters raw in its JSON answers, each
                 message handed over once, `{}` when nothing is queued

    \b
    Control API, beside the endpoint (JSON; no auth, so it answers 127.0.0.1 only):
      POST   /api/queue        {"to": NUMBER, "content": TEXT, "id": optional}: queue a
                               message for the gateway to send; answers {"id": ...}
      GET    /api/state        what the gateway posted: "received" (incoming SMS),
                               "updates", and each "queued" message with its "statuses"
      POST   /api/faults       {"kind": "status", "count": 1, "status": 500}: the next
                               POSTs misbehave (kinds: status, html, slow, timeout,
                               reset, malformed, wrong_types, bad_entry, huge, gzip_bomb,
                               redirect_loop)
      DELETE /api/faults       drop the faults not served yet
      POST   /api/offer_again  {"id": ID}: offer a message again
      POST   /api/reset        forget every message, record and fault

    \b
    Queue a message, then read what the gateway posted:
      curl -s -X POST http://127.0.0.1:8585/api/queue \\
           -d '{"to": "+15550002222", "content": "hello from the webapp"}'
      curl -s http://127.0.0.1:8585/api/state
    """
    from .testserver import serve

    serve(host, port, username=user, password=password, flavour=flavour)


# simulate ------------------------------------------------------------------------
@cli.group()
def simulate() -> None:
    """Act on the simulated phone of `smsgw run --phone simulated` (no phone needed).

    Its SMS live in the state folder (simulated-phone.json), so these commands work while
    the daemon runs, and the phone keeps its SMS across restarts.
    """


@simulate.command("receive")
@click.argument("sender", metavar="FROM")
@click.argument("text")
@pass_ctx
def simulate_receive(c: Ctx, sender: str, text: str) -> None:
    """An SMS from FROM arrives on the simulated phone (the daemon is woken to forward it)."""
    from .simulation import receive

    _print(receive(c.paths, sender, text))


@simulate.command("fail-next")
@click.argument("count", default=1, type=click.IntRange(0, 10000))
@pass_ctx
def simulate_fail_next(c: Ctx, count: int) -> None:
    """The next COUNT sends (default 1; 0 cancels) fail as Android records it: a failed row."""
    from .simulation import fail_next

    _print(fail_next(c.paths, count))


@simulate.command("radio")
@click.argument("state", type=click.Choice(["on", "off"]))
@pass_ctx
def simulate_radio(c: Ctx, state: str) -> None:
    """Turn the simulated phone's radio off (every send fails, as without service) or on."""
    from .simulation import radio

    _print(radio(c.paths, state == "on"))


@simulate.command("show")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100000),
              help="Show the newest N rows.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def simulate_show(c: Ctx, limit: int, as_json: bool) -> None:
    """The simulated phone's SMS rows (received, sent, failed), newest last."""
    from .simulation import show

    _print(show(c.paths, limit, as_json))


# doctor --------------------------------------------------------------------------
@cli.command()
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per check.")
@pass_ctx
def doctor(c: Ctx, timeout: float) -> None:
    """Check the phone set-up and the webapp, and say how to fix what is wrong."""
    from .doctor import run_checks

    ok = run_checks(c.settings, timeout, echo=click.echo)
    sys.exit(ExitCode.OK if ok else ExitCode.ERROR)


# backup / restore ------------------------------------------------------------------
@cli.command()
@click.option("--list", "list_only", is_flag=True, help="List the backups, newest first.")
@pass_ctx
def backup(c: Ctx, list_only: bool) -> None:
    """Back up the state now and print the file's path (the daemon takes one a day)."""
    from . import actions
    from .models import utcnow

    _log_beside_daemon(c)
    _print(actions.backup(c.paths, list_only, utcnow()))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@pass_ctx
def restore(c: Ctx, file: str) -> None:
    """Put a backup FILE back as the state (the daemon must be stopped).

    The current state file is kept beside it, and messages finished since the backup are
    never sent again.
    """
    from . import actions
    from .models import utcnow

    _log_beside_daemon(c)
    _print(actions.restore(c.paths, file, utcnow()))


def main(argv: list[str] | None = None) -> None:
    """Entry point: one readable line per error, a traceback only with --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="smsgw", standalone_mode=False)
    except _NO_ARGS_IS_HELP as exc:  # `smsgw`, `smsgw simulate`: the help, as click shows it
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted; nothing was changed", ExitCode.ERROR, debug)
    except click.ClickException as exc:
        _fail(_click_error(exc, args), exc.exit_code, debug)
    except InternalError as exc:
        _internal(exc, debug)
    except Error as exc:
        _fail(str(exc), exc.exit_code, debug)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        from .errors import os_error_text

        text = os_error_text(exc)
        if text is None:  # not one the user can fix (a bad file descriptor...): a bug
            _internal(exc, debug)
        else:
            _fail(text, ExitCode.ERROR, debug)
    except Exception as exc:  # noqa: BLE001 - the promise: no traceback without --debug
        _internal(exc, debug)
    sys.exit(ExitCode.OK)


# click 8.2+ raises this (a UsageError) for a group run without its command; before, it
# printed the help itself.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _click_error(exc: click.ClickException, args: list[str]) -> str:
    """Click's error on one line, lower-case like ours, with where to read the usage."""
    text = " ".join(exc.format_message().split()).rstrip(".")
    text = text[:1].lower() + text[1:]
    if isinstance(exc, click.UsageError):
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            path = ctx.command_path
        else:  # an option's value was missing: click knows no command yet
            name = next((a for a in args if a in cli.commands), None)
            path = f"smsgw {name}" if name else "smsgw"
        text += f" (see {path} --help)"
    return text


def _internal(exc: BaseException, debug: bool) -> None:
    """A bug in smsgw: its traceback goes to the log file, the user gets one line."""
    where = "run with --debug for the details"
    with contextlib.suppress(Exception):
        paths = default_paths()
        logging.getLogger("smsgw").error("internal error: %s: %s", type(exc).__name__, exc,
                                         exc_info=exc)
        if not logging.getLogger("smsgw").handlers:
            import traceback

            paths.ensure()
            from .config import open_private

            fd = open_private(paths.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(scrub_secrets("".join(traceback.format_exception(exc)), _secrets()))
        where = f"the traceback is in {paths.log_file}; run with --debug to see it here"
    _fail(f"internal error (a bug in smsgw, please report it): {type(exc).__name__}: {exc}; "
          f"{where}", ExitCode.ERROR, debug)


def _fail(text: str, code: int, debug: bool) -> None:
    secrets = _secrets()
    if debug:
        import traceback

        click.echo(scrub_secrets(traceback.format_exc(), secrets), err=True)
    click.echo(f"smsgw: error: {scrub_secrets(text, secrets)}", err=True)
    sys.exit(code)


