"""Settings: what they are, where they live, validation, atomic 0600 saves, URL redaction."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import functools
import json
import logging
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit, urlunsplit

from .errors import InternalError, UserError, os_error_text

logger = logging.getLogger(__name__)

APP_NAME = "smsgw"
FORBIDDEN_PASSWORD_CHARS = "#/?@"


@dataclass
class Settings:
    """Everything a user can set. Times are in seconds."""

    url: str | None = None
    interval: int = 60
    cdma_mode: bool = False
    cdma_prefix: bool = True
    sim_slot: int | None = None
    max_parts_per_minute: int = 30
    message_ttl: int | None = None
    compress_requests: bool = False
    ca_bundle: str | None = None
    confirm_timeout: int = 900
    send_timeout: float = 60.0
    list_timeout: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retention_days: int = 30
    notification_watch: bool = False
    max_parts: int = 10  # SMS parts one message may take; more is refused as too long
    exchange_deadline: float = 120.0  # seconds an exchange with the webapp may take in all
    allow_redirects_to: str | None = None  # hosts (comma-separated) the webapp may redirect to
    ping_url: str | None = None  # a monitoring service's heartbeat URL (token in its path)
    ping_every: int = 300  # seconds between healthy heartbeat pings at most
    report_health: bool = False  # add the "smsgw" health object to each POST
    alert_to: str | None = None  # the operator's number for alert SMS; None: no alerts
    alert_after: int = 1800  # seconds a webapp or phone problem lasts before an alert
    alert_every: int = 21600  # seconds between two alerts for one condition, at least

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> Settings:
        """Build from a saved dict, every value checked against SPECS (UserError naming
        `source`); unknown keys are ignored (a newer version may add some)."""
        return cls(**{k: validate_setting(k, v, source) for k, v in data.items() if k in SPECS})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DAY = 86400


@dataclass(frozen=True)
class Spec:
    """The type and bounds of one setting: the only place they are defined.

    `kind` is bool, int (a whole number; an integral float is taken too), float (int or
    float) or str. `option` is the `smsgw config` option that sets it, if any, and
    `null_words` how that option spells "none". `unit` names what the number counts.
    A `secret` setting is never shown whole: output and the event log show it redacted
    (`redact_setting`), and every text smsgw prints or logs is scrubbed of what it holds
    (`secrets_of`). The webapp URL (`is_url`) hides its password, user name alone and
    query values; another secret is a token URL such as a heartbeat's, its path hidden too.
    """

    kind: type
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    option: str | None = None
    null_words: tuple[str, ...] = ()
    unit: str = ""
    is_url: bool = False
    secret: bool = False
    what: str = "a file path"  # what a text setting holds
    check: Callable[[str], str] | None = None  # checks a text value (UserError), no secrets
    pattern: str | None = None  # a text setting must match it (spaces, dashes, dots dropped)

    def describe(self, for_option: bool = False) -> str:
        """What a valid value is, e.g. 'a whole number from 5 to 86400, or null'; with
        `for_option`, as the command line spells it ('a duration ...', "or 'none'")."""
        if self.kind is bool:
            text = "true or false"
        elif self.is_url:
            text = "a webapp URL (text)"
        elif self.kind is str:
            text = f"{self.what} (text)"
        elif for_option and self.unit == "seconds" and self.kind is int:
            text = (f"a duration (e.g. 90s, 15m, 24h, 7d) from {_human(self.minimum)} "
                    f"to {_human(self.maximum)}")
        else:
            noun = "a whole number" if self.kind is int else "a number"
            unit = f" of {self.unit}" if self.unit else ""
            text = (f"{noun}{unit} from {_bound(self.minimum, self.unit)} "
                    f"to {_bound(self.maximum, self.unit)}")
        if not self.nullable:
            return text
        words = [w for w in self.null_words if w]
        return f"{text}, or {words[0]!r}" if for_option and words else f"{text}, or null"


SPECS: dict[str, Spec] = {
    "url": Spec(str, nullable=True, option="--url", is_url=True, secret=True),
    "interval": Spec(int, 1, DAY, option="--interval"),
    "cdma_mode": Spec(bool, option="--cdma/--no-cdma"),
    "cdma_prefix": Spec(bool, option="--cdma-prefix/--no-cdma-prefix"),
    "sim_slot": Spec(int, 0, 7, nullable=True, option="--sim-slot", null_words=("none",)),
    "max_parts_per_minute": Spec(int, 1, 10000, option="--max-per-minute"),
    "message_ttl": Spec(int, 60, 30 * DAY, nullable=True, option="--ttl",
                        null_words=("off", "none", "0"), unit="seconds"),
    "compress_requests": Spec(bool, option="--compress-requests/--no-compress-requests"),
    "ca_bundle": Spec(str, nullable=True, option="--ca-bundle", null_words=("",)),
    "confirm_timeout": Spec(int, 5, 7 * DAY, option="--confirm-timeout", unit="seconds"),
    "send_timeout": Spec(float, 1, 600, unit="seconds"),
    "list_timeout": Spec(float, 1, 600, unit="seconds"),
    "connect_timeout": Spec(float, 1, 600, unit="seconds"),
    "read_timeout": Spec(float, 1, 600, unit="seconds"),
    "retention_days": Spec(int, 1, 3650, unit="days"),
    "notification_watch": Spec(bool, option="--notification-watch/--no-notification-watch"),
    "max_parts": Spec(int, 1, 100, option="--max-parts"),
    "exchange_deadline": Spec(float, 5, 3600, option="--exchange-deadline", unit="seconds"),
    "allow_redirects_to": Spec(str, nullable=True, option="--allow-redirects-to",
                               null_words=("", "none"), what="host names, comma-separated"),
    "ping_url": Spec(str, nullable=True, option="--ping-url", null_words=("", "none"),
                     what="an http:// or https:// URL", check=lambda u: validate_ping_url(u),
                     secret=True),
    "ping_every": Spec(int, 10, DAY, option="--ping-every", unit="seconds"),
    "report_health": Spec(bool, option="--report-health/--no-report-health"),
    "alert_to": Spec(str, nullable=True, option="--alert-to", null_words=("", "none", "off"),
                     what="a phone number (an optional + and 3 to 20 digits)",
                     pattern=r"\+?[0-9]{3,20}"),
    "alert_after": Spec(int, 60, 7 * DAY, option="--alert-after", unit="seconds"),
    "alert_every": Spec(int, 60, 30 * DAY, option="--alert-every", unit="seconds"),
}


def _bound(value: float | None, unit: str) -> str:
    text = f"{value:d}" if isinstance(value, int) else f"{value:g}"
    return f"{text} ({_human(value)})" if unit == "seconds" and value and value >= 60 else text


def _human(seconds: float | None) -> str:
    """60 -> '1 min', 604800 -> '7 days'."""
    seconds = seconds or 0
    for size, name in ((DAY, "day"), (3600, "hour"), (60, "min")):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {name}{'s' if count != 1 and name != 'min' else ''}"
    return f"{seconds:g} s"


def _is_option_or_variable(source: str) -> bool:
    return source.startswith("-") or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", source))


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _setting_error(name: str, source: str, problem: str) -> UserError:
    if _is_option_or_variable(source):
        return UserError(f"{source} {problem}")
    return UserError(f'the settings in {source} are invalid: "{name}" {problem}; '
                     "fix or remove that file")


def validate_setting(name: str, value: Any, source: str) -> Any:
    """`value` checked against SPECS[name], in its stored type (an int for a whole number,
    a float for a number of seconds, the URL stripped).

    `source` is where the value came from, for the message: an option (`--interval`), an
    environment variable (`SMSGW_URL`), or else a file (`/path/config.json`). A wrong type
    (a bool is not a number, text is not a number) or a value out of bounds raises one
    UserError line naming it. A secret setting's value never appears in a message.
    """
    spec = SPECS.get(name)
    if spec is None:
        raise InternalError(f"no such setting: {name!r}")
    if value is None or (spec.nullable and spec.kind is str and value == ""):
        if spec.nullable:
            return None
        checked = _NOT_VALID
    else:
        checked = _check_type(spec, value)
    if checked is _NOT_VALID:
        got = "" if spec.secret else f" (got {_shown(value)})"
        wanted = spec.describe(for_option=source.startswith("-"))
        raise _setting_error(name, source, f"must be {wanted}{got}")
    if spec.is_url:
        try:
            return validate_url(checked)
        except UserError as exc:
            problem = scrub(str(exc), checked)
            raise _setting_error(name, source,
                                 f"is not a usable webapp URL: {problem}") from None
    if spec.check is not None:
        try:
            return spec.check(checked)
        except UserError as exc:
            problem = scrub_secrets(str(exc), tuple(setting_secrets(name, checked)))
            raise _setting_error(name, source, f"is not usable: {problem}") from None
    return checked


_NOT_VALID = object()


def _check_type(spec: Spec, value: Any) -> Any:
    """The value in the stored type, or _NOT_VALID."""
    if spec.kind is bool:
        return value if isinstance(value, bool) else _NOT_VALID
    if spec.kind is str:
        if isinstance(value, str) and spec.pattern is not None:
            value = value.strip().translate(str.maketrans("", "", " -."))
            return value if re.fullmatch(spec.pattern, value) else _NOT_VALID
        return value if isinstance(value, str) else _NOT_VALID
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _NOT_VALID
    if isinstance(value, float) and (
            not math.isfinite(value) or (spec.kind is int and not value.is_integer())):
        return _NOT_VALID
    if spec.minimum is not None and value < spec.minimum:
        return _NOT_VALID
    if spec.maximum is not None and value > spec.maximum:
        return _NOT_VALID
    return int(value) if spec.kind is int else float(value)


def parse_setting(name: str, text: str, source: str) -> Any:
    """A setting given as text on the command line, converted and then validated.

    Durations take units ('90s', '15m', '24h', '7d'); a nullable setting takes its null
    words ('none' for --sim-slot, 'off' for --ttl, '' for --ca-bundle).
    """
    spec = SPECS.get(name)
    if spec is None:
        raise InternalError(f"no such setting: {name!r}")
    if spec.nullable and text.strip().lower() in spec.null_words:
        return None
    value: Any = text
    if spec.kind is bool:
        word = text.strip().lower()
        value = True if word in ("true", "yes", "on", "1") else \
            False if word in ("false", "no", "off", "0") else text
    elif spec.kind in (int, float):
        word = text.strip().lower()
        if spec.unit == "seconds" and re.fullmatch(r"\d+\s*[smhd]?", word):
            value = parse_duration(word)
        elif spec.kind is int and re.fullmatch(r"[+-]?\d+", word):
            value = int(word)
        elif spec.kind is float and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", word):
            value = float(word)
    return validate_setting(name, value, source)


def change_settings(settings: Settings, changes: dict[str, Any],
                    source_of: Callable[[str], str]) -> Settings:
    """A new Settings with `changes` applied, each validated (UserError naming
    `source_of(name)`, e.g. the option that gave it). `settings` is left as it was."""
    checked = {name: validate_setting(name, value, source_of(name))
               for name, value in changes.items()}
    return dataclasses.replace(settings, **checked)


@dataclass(frozen=True)
class Paths:
    """Where smsgw keeps its files. SMSGW_HOME puts everything under one folder."""

    config_dir: Path
    data_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.json"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "smsgw.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "daemon.pid"

    @property
    def daemon_lock(self) -> Path:
        return self.data_dir / "daemon.lock"

    def ensure(self) -> None:
        """Create the folders, private to the user."""
        for folder in (self.config_dir, self.data_dir, self.state_dir):
            make_private_dir(folder)


def default_paths(env: dict[str, str] | None = None) -> Paths:
    """The XDG locations (click's app dir for config), or SMSGW_HOME when set."""
    env = dict(os.environ) if env is None else env
    home = env.get("SMSGW_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(config_dir=root, data_dir=root)
    import click  # local: keeps the import out of modules that never need it

    config_dir = Path(click.get_app_dir(APP_NAME, force_posix=False))
    xdg_data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Paths(config_dir=config_dir, data_dir=Path(xdg_data) / APP_NAME)


def make_private_dir(folder: Path) -> None:
    """mkdir -p with mode 0700, then check_private_dir (which makes it 0700 if it can)."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UserError(os_error_text(exc, "create the folder")
                        or f"cannot create the folder {folder}: {exc.strerror}") from None
    check_private_dir(folder)


def check_private_dir(folder: Path) -> None:
    """Refuse a folder that is not ours or that others can write to; make it 0700.

    Nothing happens when the folder does not exist. A folder of ours that stays readable
    by others (a read-only mount) is only warned about: reading still works.
    """
    try:
        st = folder.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"cannot use the folder {folder}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{folder} is not a folder: remove it or set SMSGW_HOME to another "
                        "place")
    me = os.geteuid()
    if st.st_uid != me:
        raise UserError(
            f"the folder {folder} belongs to another user (uid {st.st_uid}; you are uid "
            f"{me}): smsgw keeps the webapp password there, so use a folder of your own "
            "(e.g. set SMSGW_HOME to a folder in your home)"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode == 0o700:
        return
    try:
        os.chmod(folder, 0o700)
        return
    except OSError as exc:
        why = exc.strerror
    if mode & 0o022:
        raise UserError(
            f"the folder {folder} can be changed by other users (mode {mode:04o}) and "
            f"cannot be made private ({why}): run `chmod 700 {folder}`, or use a folder "
            "of your own (e.g. set SMSGW_HOME)"
        )
    logger.warning("cannot make %s private: %s", folder, why)  # e.g. a read-only mount


def check_private_file(path: Path) -> None:
    """Refuse a file of smsgw's that is a link, belongs to another user, or that others may
    write: it could be swapped for a file of theirs. A missing file is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UserError(f"{path} is a symbolic link: smsgw does not follow links for its "
                        f"private files; remove it (rm {path}) and try again")
    if st.st_uid != os.getuid():
        raise UserError(f"the file {path} belongs to another user (uid {st.st_uid}; you are "
                        f"uid {os.getuid()}): move it away and use a folder of your own")
    if st.st_mode & 0o022:
        raise UserError(f"the file {path} can be changed by other users (mode "
                        f"{stat.S_IMODE(st.st_mode):04o}): run `chmod 600 {path}`")


def open_private(path: Path, flags: int) -> int:
    """os.open for smsgw's own files: never through a symbolic link, closed on exec, mode
    0600 when created. A link is refused with a UserError; other OSErrors propagate."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise UserError(
                f"{path} is a symbolic link: smsgw does not follow links for its private "
                f"files; remove it (rm {path}) and try again"
            ) from None
        raise


def atomic_write_text(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half."""
    import tempfile  # here: it costs `smsgw status` and `hook` ~4 ms of start-up

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load_settings(paths: Paths, env: dict[str, str] | None = None) -> Settings:
    """Read the config file (defaults when absent); SMSGW_URL overrides the URL.

    A file that cannot be parsed, or holds a wrong type or a value out of bounds, raises
    one UserError line naming the file (and the field); the file is never changed.
    """
    env = dict(os.environ) if env is None else env
    settings = Settings()
    source = str(paths.config_file)
    if paths.config_file.exists():
        try:
            data = json.loads(paths.config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise UserError(
                f"cannot read the settings in {source} ({exc.__class__.__name__}); "
                "fix or remove that file, then run `smsgw config --url ...` again"
            ) from None
        if not isinstance(data, dict):
            raise UserError(f"the settings in {source} are not a JSON object; fix or remove "
                            "that file")
        settings = Settings.from_dict(data, source)
    if env.get("SMSGW_URL"):
        settings.url = validate_setting("url", env["SMSGW_URL"], "SMSGW_URL")
    return settings


def save_settings(paths: Paths, settings: Settings) -> None:
    """Save atomically, mode 0600 (the URL may hold a password)."""
    make_private_dir(paths.config_dir)
    atomic_write_text(paths.config_file, json.dumps(settings.to_dict(), indent=2) + "\n")


def validate_url(url: str) -> str:
    """Check a webapp URL: http(s), a host, and a password the protocol allows."""
    url = url.strip()
    _refuse_spaces(url)
    _refuse_hidden_password(url)
    if _USER_CUT.match(url):
        raise UserError(
            "the user name of the URL must not contain '/', '?' or '#': they end the host "
            "name early, and the password would travel in the path"
        )
    parts = _split_http_url(url, detail=True)
    if parts.password is not None:
        password = unquote(parts.password)
        for ch in password:
            if ch in FORBIDDEN_PASSWORD_CHARS:
                raise UserError(_password_message(ch))
            if ord(ch) > 0xFF:
                raise UserError(
                    "the password may only use ISO-8859-1 characters "
                    f"(found U+{ord(ch):04X}); choose another password"
                )
    return url


def validate_ping_url(url: str) -> str:
    """Check a heartbeat URL (http or https, a host); the message never shows the URL."""
    url = url.strip()
    _refuse_spaces(url)
    _split_http_url(url, detail=False)
    return url


def _refuse_spaces(url: str) -> None:
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UserError("the URL contains spaces or control characters; percent-encode them")


def _split_http_url(url: str, detail: bool) -> SplitResult:
    """The parts of an http(s) URL that has a valid host name and port, or a UserError.
    With `detail`, a parse error says what the parser found (it may quote part of the URL,
    so the caller scrubs it)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        raise UserError(f"not a valid URL: {exc}" if detail else "not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UserError("the URL must start with http:// or https://")
    if not parts.hostname:
        raise UserError("the URL has no host name")
    if not re.fullmatch(r"[\w.-]+|[0-9a-f:.]+", parts.hostname):
        raise UserError(f"not a valid host name: {parts.hostname!r}")
    return parts


def _host_port(parts: SplitResult) -> str:
    """`host`, `host:port`, `[v6]:port` of parsed URL parts: no user info (ValueError for a
    bad port)."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host += f":{parts.port}"
    return host


def redact_ping_url(url: str | None) -> str | None:
    """A heartbeat URL for display: scheme and host only, since services such as
    healthchecks.io put the secret token in the path (`https://hc-ping.com/***`)."""
    if url is None:
        return None
    found = _parts_and_host(url)
    if found is None:
        return "<invalid URL>"
    parts, host = found
    return f"{parts.scheme}://{host}/***"


def _parts_and_host(url: str) -> tuple[SplitResult, str] | None:
    """The URL's parts and its `host[:port]` for display, or None when it has no host or
    cannot be parsed."""
    try:
        parts = urlsplit(url)
        return (parts, _host_port(parts)) if parts.hostname else None
    except ValueError:
        return None


_USER_CUT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^@/?#]*[/?#][^@]*:[^@]*@[^@/?#]+(?:[/?#].*)?$",
                       re.S)
_USERINFO = re.compile(
    r"^[A-Za-z][A-Za-z0-9+.-]*://([^@/?#:]*):(.*?)@([^@/?#]+)(?:[/?#].*)?$", re.S
)


def _refuse_hidden_password(url: str) -> None:
    """Catch passwords holding # / ? @, which URL parsing would silently cut short."""
    m = _USERINFO.match(url)
    if not m:
        return
    password = m.group(2)
    if re.match(r"^\d+(?:[/?#]|$)", password):  # a port, then an @ in the path or query
        return
    for ch in password:
        if ch in FORBIDDEN_PASSWORD_CHARS:
            raise UserError(_password_message(ch))


def _password_message(ch: str) -> str:
    return (
        f"the password must not contain {ch!r}: medic-gateway webapps refuse "
        f"{' '.join(FORBIDDEN_PASSWORD_CHARS)} in passwords, even percent-encoded; "
        "choose another password"
    )


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without user info, and (user, password) for Basic auth if it had some."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    bare = urlunsplit(SplitResult(parts.scheme, _host_port(parts), parts.path, parts.query,
                                  parts.fragment))
    return bare, (unquote(parts.username or ""), unquote(parts.password or ""))


def redact_url(url: str | None) -> str | None:
    """The URL for display: password and query values replaced by ***, and a user name
    that stands alone (a token, see url_secrets) too."""
    if url is None:
        return None
    found = _parts_and_host(url)
    if found is None:
        return "<invalid URL>"
    parts, host = found
    if parts.username is not None:
        user = (parts.username + ":***" if parts.password is not None
                else "***" if parts.username else "")
        host = f"{user}@{host}"
    query = re.sub(r"=([^&]*)", "=***", parts.query)
    shown = urlunsplit(SplitResult(parts.scheme, host, parts.path, query, ""))
    try:  # a mangled URL could re-parse with part of its password as the host
        again = urlsplit(shown)
        if again.password not in (None, "***") or again.hostname != parts.hostname:
            return "<invalid URL>"
    except ValueError:
        return "<invalid URL>"
    return shown


def url_secrets(url: str | None) -> list[str]:
    """Every secret string a URL carries, longest first: the password (raw and decoded),
    the user info, query values (raw and decoded), and the Basic auth base64 of
    `user:password` and of the password alone. A user name beside a password is not a
    secret; a user name alone (a token) is."""
    if not url:
        return []
    secrets: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    user = unquote(parts.username or "")
    if parts.password:
        password = unquote(parts.password)
        secrets += [parts.password, password, unquote(parts.password, encoding="latin-1")]
        # A webapp error page may echo the Authorization header it was sent.
        secrets += _base64_spellings(f"{user}:{password}") + _base64_spellings(password)
    elif parts.username:
        secrets += [parts.username, user] + _base64_spellings(f"{user}:") \
            + _base64_spellings(user)
    for pair in parts.query.split("&"):
        if "=" in pair:
            value = pair.split("=", 1)[1]
            if value:
                secrets += [value, unquote(value), unquote_plus(value)]
    return sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)


def ping_secrets(url: str) -> list[str]:
    """What a heartbeat URL may hide, longest first: the webapp URL's kinds of secrets
    plus its path and each path segment (raw and decoded), where monitoring services put
    their token. A piece that is plain words (`ping`, `api/push`, a slug such as
    `smsgw-phone`: lower-case letters, maybe joined by - _ or /) is no token: hiding it would
    blank that word in every line of the event log."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return [url]
    found = set(url_secrets(url))
    for piece in [path.strip("/"), *path.split("/")]:
        found.update(s for s in (piece, unquote(piece))
                     if len(s) >= 3 and not _PLAIN_WORDS.fullmatch(s))
    return sorted(found, key=len, reverse=True)


_PLAIN_WORDS = re.compile(r"[a-z]+(?:[-_/][a-z]+)*")


def setting_secrets(name: str, value: Any) -> list[str]:
    """The secret strings the value of setting `name` holds (none unless its Spec is
    `secret`), longest first."""
    spec = SPECS.get(name)
    if spec is None or not spec.secret or not value or not isinstance(value, str):
        return []
    return url_secrets(value) if spec.is_url else ping_secrets(value)


def secrets_of(*sources: Settings | None) -> tuple[str, ...]:
    """Every secret the settings hold (the webapp URL's password, the heartbeat URL's
    token, ...), longest first: what `scrub_secrets` removes from a text bound for a log,
    the output or an error."""
    found: set[str] = set()
    for settings in sources:
        if settings is not None:
            for name in SPECS:
                found.update(setting_secrets(name, getattr(settings, name, None)))
    return tuple(sorted(found, key=len, reverse=True))


def redact_setting(name: str, value: Any) -> Any:
    """A setting's value for display: a secret one redacted (`redact_url` for the webapp
    URL, `redact_ping_url` for a token URL), any other as it is."""
    spec = SPECS.get(name)
    if spec is None or not spec.secret or not isinstance(value, str):
        return value
    return redact_url(value) if spec.is_url else redact_ping_url(value)


def _base64_spellings(text: str) -> list[str]:
    """base64 of `text` as latin-1 (what requests sends) and UTF-8, standard and URL-safe,
    with and without the padding."""
    out = []
    for encoding in ("latin-1", "utf-8"):
        try:
            raw = text.encode(encoding)
        except UnicodeEncodeError:
            continue
        for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            out += [encoded.decode("ascii"), encoded.decode("ascii").rstrip("=")]
    return out


def scrub(text: str, url: str | None) -> str:
    """Remove the URL's secrets from a text bound for a log, a status or an error.

    Each secret is found in every spelling a server or a library may give it, even mixed
    within one occurrence: raw, percent-encoded (any hex case, UTF-8 or latin-1, doubly
    encoded), '+' for a space, JSON and Python escapes (\\uXXXX, \\xXX, \\", \\\\, \\/),
    and HTML entities (named, decimal, hex, doubly escaped).
    """
    if not url or not text:
        return text
    return _scrub(text, _url_patterns(url))


def scrub_secrets(text: str, secrets: tuple[str, ...]) -> str:
    """Remove `secrets` (from `secrets_of`) from a text, in every spelling `scrub` knows."""
    if not secrets or not text:
        return text
    return _scrub(text, _patterns(secrets))


def _scrub(text: str, patterns: tuple[re.Pattern[str], ...]) -> str:
    spans: list[tuple[int, int]] = []
    for pattern in patterns:
        spans += [m.span() for m in pattern.finditer(text) if m.end() > m.start()]
    if not spans:
        return text
    spans.sort()
    out, pos = [], 0
    merged: list[list[int]] = []
    for start, end in spans:  # overlapping secrets are removed as one
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        out += [text[pos:start], "***"]
        pos = end
    out.append(text[pos:])
    return "".join(out)


@functools.lru_cache(maxsize=32)
def _url_patterns(url: str) -> tuple[re.Pattern[str], ...]:
    return _patterns(tuple(url_secrets(url)))


@functools.lru_cache(maxsize=32)
def _patterns(secrets: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(_secret_pattern(secret)) for secret in secrets)


def _secret_pattern(secret: str) -> str:
    """A regex matching `secret` in any mix of spellings, one character at a time.

    Within a run of backslashes, one escaping level holds for the whole run (each
    backslash is 1, 2, 4 or 8 of them, or spelled otherwise): were each one matched as
    1 to 9 backslashes, a long run of them in a text would take exponential time to refuse.
    """
    out = []
    other = _char_pattern("\\", raw=False)
    for run in re.findall(r"\\+|[^\\]", secret):
        if run[0] != "\\":
            out.append(_char_pattern(run))
            continue
        levels = [f"(?:{other}|\\\\{{{level}}}){{{len(run)}}}" for level in (8, 4, 2, 1)]
        out.append("(?:" + "|".join(levels) + ")")
    return "".join(out)


_AMP = "&(?:amp;){0,3}"  # an HTML entity, maybe escaped again
# Bounded repeats (no '+' or '*') keep the search linear in a long run of '\\', '%25' or
# '&amp;' from a hostile webapp; 8 backslashes cover three levels of JSON in JSON.
_BS = r"\\{1,8}"
_JSON_SHORT = {"\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}


@functools.lru_cache(maxsize=4096)
def _char_pattern(ch: str, raw: bool = True) -> str:
    """A regex matching one character in any of its spellings (but as itself or escaped
    with backslashes only if `raw`)."""
    code = ord(ch)
    alternatives = []
    if ch == " ":
        alternatives.append(r"\+")
    encodings = [ch.encode("utf-8", "surrogatepass")]
    if code < 0x100 and code >= 0x80:
        encodings.append(bytes([code]))
    for encoded in encodings:
        alternatives.append("(?i:" + "".join(f"%(?:25){{0,3}}{b:02x}" for b in encoded) + ")")
        alternatives.append("(?i:" + "".join(rf"{_BS}x{b:02x}" for b in encoded) + ")")
    alternatives.append(rf"(?i:{_BS}u\{{?0{{0,6}}{code:x}\}}?)")
    if code > 0xFFFF:
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        alternatives.append(rf"(?i:{_BS}u{high:04x}{_BS}u{low:04x})")
    if raw and not ch.isalnum() and code < 0x80:
        alternatives.append(_BS + re.escape(ch))
    if ch in _JSON_SHORT:
        alternatives.append(_BS + _JSON_SHORT[ch])
    alternatives.append(rf"{_AMP}#0{{0,8}}{code};?")
    alternatives.append(rf"(?i:{_AMP}#x0{{0,8}}{code:x};?)")
    alternatives += [_AMP + re.escape(name) for name in _html_names().get(ch, ())]
    if raw:  # last: a longer spelling ('&amp;' of '&') must win where both match
        alternatives.append(re.escape(ch))
    return "(?:" + "|".join(alternatives) + ")"


@functools.lru_cache(maxsize=1)
def _html_names() -> dict[str, list[str]]:
    """Character -> its HTML5 entity names ('auml;', 'auml', 'quot;', 'QUOT', ...)."""
    from html.entities import html5

    names: dict[str, list[str]] = {}
    for name, value in html5.items():
        if len(value) == 1:
            names.setdefault(value, []).append(name)
    for found in names.values():
        found.sort(key=len, reverse=True)  # 'amp;' before 'amp'
    return names


# reading the URL without argv ---------------------------------------------------------------
MAX_URL_FILE = 64 * 1024


def read_url_argument(value: str, stdin: TextIO, tty: bool,
                      prompt: Callable[[str], str], option: str = "--url",
                      what: str = "webapp URL") -> str:
    """The text of `--url VALUE` (or of `option`): VALUE itself, or for '-' one line read
    from standard input (on a terminal through `prompt`, which must hide the input). Not
    yet validated."""
    if value != "-":
        return value
    text = prompt(f"{what} (input hidden)") if tty else stdin.readline(MAX_URL_FILE)
    text = (text or "").strip()
    if not text:
        raise UserError(f"{option} - reads the {what} from standard input, and it gave none "
                        f"(e.g. printf '%s\\n' \"$URL\" | smsgw config {option} -)")
    return text


def read_url_file(path: str) -> str:
    """The first non-empty line of a private file (mode 0600), stripped. Not yet validated."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise UserError(f"cannot read the URL file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"cannot read the URL file {path}: it is a folder")
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode) and mode & 0o077:
            raise UserError(f"the URL file {path} can be read or changed by other users "
                            f"(mode {mode:04o}): run `chmod 600 {path}` first")
        os.set_blocking(fd, True)  # O_NONBLOCK was only so that opening a FIFO cannot hang
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_URL_FILE)
    except OSError as exc:
        raise UserError(f"cannot read the URL file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"the URL file {path} is not UTF-8 text") from None
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not line:
        raise UserError(f"the URL file {path} is empty: write the webapp URL on its first "
                        "line")
    return line


def parse_duration(text: str) -> int:
    """'90', '90s', '15m', '24h', '7d' -> seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text.lower())
    if not m:
        raise UserError(f"not a duration: {text!r} (use e.g. 90s, 15m, 24h, 7d)")
    value, unit = int(m.group(1)), m.group(2) or "s"
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def parse_when(text: str, now: datetime) -> datetime:
    """'now', or an ISO 8601 date or date and time ('2026-11-30T08:00'), as aware UTC.

    A time without a zone is the local time of this machine (on Termux: the phone's).
    """
    if text.strip().lower() == "now":
        return now
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"not a date and time: {text!r} (use e.g. 2026-11-30T08:00, "
                        "2026-11-30, or now)") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return when.astimezone(timezone.utc)


_SPAN = re.compile(r"(\d+)\s*(sec|min|s|m|h|d|w)")
_SPAN_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime, option: str) -> datetime:
    """A --since or --until value as aware UTC: `now`, a time back from now (`90s`, `30m`,
    `30min`, `2h`, `7d`, `2w`, `1h30m`; a bare number is seconds), or an ISO 8601 date or
    date and time in UTC, as every time smsgw shows (`2026-12-07`, `2026-12-07T09:00`;
    a zone given, `Z` or `+03:00`, is kept). The one rule of `smsgw messages` and `smsgw
    log`; what it cannot read is refused naming `option`."""
    from datetime import timedelta

    spec = text.strip().lower()
    if spec == "now":
        return now
    if spec.isdecimal():
        return now - timedelta(seconds=int(spec))
    if spec and _SPAN.search(spec) and not _SPAN.sub("", spec).strip():
        return now - timedelta(seconds=sum(int(n) * _SPAN_SECONDS[u]
                                           for n, u in _SPAN.findall(spec)))
    iso = text.strip()
    if iso[-1:] in ("Z", "z"):
        iso = iso[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        raise UserError(f"{option}: not a date and time, nor a time back from now: {text!r} "
                        "(use e.g. 2h, 30m, 1h30m, 7d, 2026-12-07 or 2026-12-07T09:00, "
                        "in UTC)") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


FOLDERS_FILE = ".smsgw-folders"  # in HOME: where the Termux scripts find smsgw's folders


def folders_file() -> Path:
    """The fixed file naming smsgw's folders for scripts run without the user's shell
    variables (a scheduled job, Termux:Tasker, Termux:Boot get HOME, not SMSGW_HOME)."""
    return Path(os.environ.get("HOME") or str(Path.home())) / FOLDERS_FILE


def _home() -> Path:
    return Path(os.environ.get("HOME") or str(Path.home()))


def _default_folders() -> Paths:
    """The folders the scripts use when folders_file() names none."""
    return Paths(config_dir=_home() / ".config" / APP_NAME,
                 data_dir=_home() / ".local" / "share" / APP_NAME)


def folders_text(paths: Paths) -> str | None:
    """What folders_file() holds for `paths`: the variables that give smsgw these folders
    (VAR=value lines, which the scripts export; absolute, as the scripts run from another
    folder), or None for the default folders."""
    paths = Paths(config_dir=paths.config_dir.absolute(), data_dir=paths.data_dir.absolute())
    if paths == _default_folders():
        return None
    if paths.config_dir == paths.data_dir:
        return f"SMSGW_HOME={paths.data_dir}\n"
    return f"XDG_DATA_HOME={paths.data_dir.parent}\nXDG_CONFIG_HOME={paths.config_dir.parent}\n"


def recorded_folders() -> Paths:
    """The folders the watchdog, boot and Tasker scripts use: those folders_file() names,
    read as the scripts read it, or the default ones."""
    try:
        lines = folders_file().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return _default_folders()
    named = dict(line.split("=", 1) for line in lines if "=" in line)
    if named.get("SMSGW_HOME"):
        root = Path(named["SMSGW_HOME"])
        return Paths(config_dir=root, data_dir=root)
    default = _default_folders()
    return Paths(
        config_dir=Path(named["XDG_CONFIG_HOME"]) / APP_NAME if named.get("XDG_CONFIG_HOME")
        else default.config_dir,
        data_dir=Path(named["XDG_DATA_HOME"]) / APP_NAME if named.get("XDG_DATA_HOME")
        else default.data_dir)


def record_folders(paths: Paths) -> str | None:
    """Make the watchdog, boot and Tasker scripts use `paths`: name them in folders_file()
    (or remove it for the default ones). Another gateway that file already names, one with
    its own config.json, keeps them: a trial elsewhere must not take the phone's watchdog
    away. Returns what to tell the user then."""
    followed = recorded_folders()
    mine = Paths(config_dir=paths.config_dir.absolute(), data_dir=paths.data_dir.absolute())
    file = folders_file()
    if followed != mine and file.exists() and followed.config_file.exists():
        return (f"the watchdog, boot and Tasker scripts follow the smsgw in {followed.data_dir}, "
                f"not this one ({mine.data_dir}); to make them follow this one, remove "
                f"{file} and run `smsgw config` here")
    text = folders_text(mine)
    with contextlib.suppress(OSError):  # best effort: `smsgw doctor` says when it is wrong
        if text is None:
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
        elif not file.exists() or file.read_text(encoding="utf-8") != text:
            atomic_write_text(file, text)
    return None
