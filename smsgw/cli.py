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
from typing import Any

import click

from . import __version__
from .config import Paths, Settings, default_paths, load_settings, scrub
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


class OneLineFormatter(logging.Formatter):
    """Each event on one line: control characters in a message (an id or a reason from the
    webapp holding a newline or ESC) are escaped, so no line of the log can be forged.
    A traceback, added after the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        from .models import printable

        record.message = printable(record.message)
        return super().formatMessage(record)


def _private_log_handler(path: Any) -> logging.Handler:
    """A RotatingFileHandler whose files are opened 0600 and never through a link (the log
    holds SMS text and numbers; a rotated file would otherwise follow the umask)."""
    from logging.handlers import RotatingFileHandler

    from .config import open_private

    class PrivateRotatingFileHandler(RotatingFileHandler):
        def _open(self) -> Any:
            fd = open_private(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.fchmod(fd, 0o600)
            return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    return PrivateRotatingFileHandler(path, maxBytes=1_000_000, backupCount=3,
                                      encoding="utf-8")


def setup_logging(paths: Paths, debug: bool, console: bool, url: str | None) -> None:
    """Event log: a rotating file (0600), plus stderr for foreground commands."""
    paths.ensure()
    root = logging.getLogger("smsgw")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    fmt = OneLineFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    secret_filter = SecretFilter(url)
    handler = _private_log_handler(paths.log_file)
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
    "alert_to": "alert_to", "alert_after": "alert_after", "alert_every": "alert_every",
}
_FLAG_OPTIONS = {"cdma": "cdma_mode", "cdma_prefix": "cdma_prefix",
                 "compress_requests": "compress_requests",
                 "notification_watch": "notification_watch"}


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
    """Set or show the settings. With no option, print them (password as ***)."""
    from . import actions
    from .config import read_url_argument, read_url_file
    from .models import utcnow

    if url is not None and url_file is not None:
        raise click.UsageError("give --url or --url-file, not both")
    if url_file is not None:
        url = read_url_file(url_file)
    elif url is not None:
        url = read_url_argument(url, sys.stdin, sys.stdin.isatty(),
                                lambda text: click.prompt(text, hide_input=True))
    texts = {setting: options[name] for name, setting in _SETTING_OPTIONS.items()
             if options[name] is not None}
    flags = {setting: options[name] for name, setting in _FLAG_OPTIONS.items()
             if options[name] is not None}
    _print(actions.configure(c.paths, c.store, url=url, check=not no_check, texts=texts,
                             flags=flags, forward_since=forward_since, now=utcnow()))


# status ----------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(c: Ctx, as_json: bool) -> None:
    """Health at a glance, from local state only (no network, no phone calls).

    Exit status: 0 healthy, 3 daemon not running, 4 last exchange with the webapp failed.
    """
    from . import actions
    from .models import utcnow

    _print(actions.status(c.paths, c.settings, c.store(), utcnow(), as_json))


# messages --------------------------------------------------------------------
@cli.command()
@click.option("--state", "state_filter", help="Only messages in this state (e.g. FAILED).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def messages(c: Ctx, state_filter: str | None, limit: int, as_json: bool) -> None:
    """List messages from the webapp and SMS to the webapp, with their history."""
    from .models import printable, utcnow

    listing = c.store().messages(utcnow(), limit, state_filter.upper() if state_filter else None)
    out, incoming = listing.outgoing, listing.incoming
    if as_json:
        click.echo(json.dumps({"from_webapp": [m.to_dict() for m in out],
                               "to_webapp": [m.to_dict() for m in incoming]}, indent=2))
        return
    p = printable
    click.echo(f"From webapp ({len(out)}):")
    for m in out:
        history = " → ".join(h.state for h in m.history)
        reason = f" ({p(m.reason)})" if m.reason else ""
        click.echo(f"  {p(m.id)}  to {p(m.to)}  {m.state.value}{reason}  retries {m.retries}")
        click.echo(f"      {history}   {m.content[:60]!r}")
    if listing.more_outgoing:
        click.echo(f"  ... and {listing.more_outgoing} more (--limit)")
    click.echo(f"To webapp ({len(incoming)}):")
    for i in incoming:
        reason = f" ({p(i.reason)})" if i.reason else ""
        click.echo(f"  {i.id}  from {p(i.from_) or '?'}  {i.state.value}{reason}  "
                   f"{i.content[:60]!r}")
    if listing.more_incoming:
        click.echo(f"  ... and {listing.more_incoming} more (--limit)")


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
    from . import actions
    from .models import utcnow

    _print(actions.send(c.paths, c.store(), number, text, utcnow()))


@cli.command("retry")
@click.argument("ids", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every FAILED message.")
@pass_ctx
def retry_cmd(c: Ctx, ids: tuple[str, ...], all_failed: bool) -> None:
    """Send FAILED messages again, starting over from retry #1.

    Exit status: 5 when an id is unknown, 6 when a message is not FAILED (it is left as it
    is).
    """
    from . import actions
    from .models import utcnow

    if not ids and not all_failed:
        raise click.UsageError("name message ids, or use --failed")
    _print(actions.retry(c.paths, c.store(), list(ids), all_failed, utcnow()))


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
@click.option("--interval", type=int, help="Seconds between polls, for this run.")
@click.option("--max-cycles", type=click.IntRange(1), hidden=True)
@pass_ctx
def run(c: Ctx, phone_kind: str, url: str | None, once: bool, interval: int | None,
        max_cycles: int | None) -> None:
    """Run the gateway in the foreground (as runit and Termux:Boot expect)."""
    from . import actions

    if url:
        c.settings.url = actions.checked("url", url, "--url")
    if interval is not None:
        c.settings.interval = actions.checked("interval", interval, "--interval")
    if not c.settings.url:
        raise UserError("no webapp URL: run `smsgw config --url URL` or pass --url")
    setup_logging(c.paths, c.debug, console=True, url=c.settings.url)
    sys.exit(actions.run(c.paths, c.settings, c.store(), build_phone(phone_kind, c.settings),
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
    except InternalError as exc:
        _internal(exc, debug)
    except Error as exc:
        _fail(str(exc), exc.exit_code, debug)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the promise: no traceback without --debug
        _internal(exc, debug)
    sys.exit(ExitCode.OK)


def _internal(exc: BaseException, debug: bool) -> None:
    """A bug in smsgw: its traceback goes to the log file, the user gets one line."""
    where = "run with --debug for the details"
    with contextlib.suppress(Exception):
        paths = default_paths()
        logging.getLogger("smsgw").error("internal error: %s: %s", type(exc).__name__, exc,
                                         exc_info=exc)
        if not logging.getLogger("smsgw").handlers:
            import traceback

            url = load_settings(paths).url if paths.config_file.exists() else None
            paths.ensure()
            from .config import open_private

            fd = open_private(paths.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(scrub("".join(traceback.format_exception(exc)), url))
        where = f"the traceback is in {paths.log_file}; run with --debug to see it here"
    _fail(f"internal error (a bug in smsgw, please report it): {type(exc).__name__}: {exc}; "
          f"{where}", ExitCode.ERROR, debug)


def _fail(text: str, code: int, debug: bool) -> None:
    url = None
    with contextlib.suppress(Error):
        url = load_settings(default_paths()).url
    if debug:
        import traceback

        click.echo(scrub(traceback.format_exc(), url), err=True)
    click.echo(f"smsgw: error: {scrub(text, url)}", err=True)
    sys.exit(code)


