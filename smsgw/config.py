"""Settings: what they are, where they live, validation, atomic 0600 saves, URL redaction."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import stat
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit, urlunsplit

from .errors import UserError

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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Build from a saved dict, ignoring unknown keys (a newer version may add some)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    """mkdir -p with mode 0700, and make an existing folder 0700 where that is allowed."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UserError(f"cannot create the folder {folder}: {exc.strerror}") from None
    if stat.S_IMODE(folder.stat().st_mode) != 0o700:
        try:
            os.chmod(folder, 0o700)
        except OSError as exc:  # e.g. a read-only mount: reading still works
            logger.warning("cannot make %s private: %s", folder, exc.strerror)


def atomic_write_text(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half."""
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
    """Read the config file (defaults when absent); SMSGW_URL overrides the URL."""
    env = dict(os.environ) if env is None else env
    settings = Settings()
    if paths.config_file.exists():
        try:
            data = json.loads(paths.config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot read the settings in {paths.config_file} ({exc.__class__.__name__}); "
                "fix or remove that file, then run `smsgw config --url ...` again"
            ) from None
        if not isinstance(data, dict):
            raise UserError(f"the settings in {paths.config_file} are not a JSON object")
        settings = Settings.from_dict(data)
    if env.get("SMSGW_URL"):
        settings.url = validate_url(env["SMSGW_URL"])
    return settings


def save_settings(paths: Paths, settings: Settings) -> None:
    """Save atomically, mode 0600 (the URL may hold a password)."""
    make_private_dir(paths.config_dir)
    atomic_write_text(paths.config_file, json.dumps(settings.to_dict(), indent=2) + "\n")


def validate_url(url: str) -> str:
    """Check a webapp URL: http(s), a host, and a password the protocol allows."""
    url = url.strip()
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UserError("the URL contains spaces or control characters; percent-encode them")
    _refuse_hidden_password(url)
    if _USER_CUT.match(url):
        raise UserError(
            "the user name of the URL must not contain '/', '?' or '#': they end the host "
            "name early, and the password would travel in the path"
        )
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        raise UserError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UserError("the URL must start with http:// or https://")
    if not parts.hostname:
        raise UserError("the URL has no host name")
    if not re.fullmatch(r"[\w.-]+|[0-9a-f:.]+", parts.hostname):
        raise UserError(f"not a valid host name: {parts.hostname!r}")
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
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    bare = urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return bare, (unquote(parts.username or ""), unquote(parts.password or ""))


def redact_url(url: str | None) -> str | None:
    """The URL for display: password and query values replaced by ***."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        if not parts.hostname:
            return "<invalid URL>"
        host = parts.hostname
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host += f":{parts.port}"
    except ValueError:
        return "<invalid URL>"
    if parts.username is not None:
        user = parts.username + (":***" if parts.password is not None else "")
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
    """Every secret string a URL carries (password and query values, raw and decoded)."""
    if not url:
        return []
    secrets: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    if parts.password:
        password = unquote(parts.password)
        secrets += [parts.password, password]
        # A webapp error page may echo the Authorization header it was sent.
        pair = f"{unquote(parts.username or '')}:{password}"
        with contextlib.suppress(UnicodeEncodeError):
            secrets.append(base64.b64encode(pair.encode("latin-1")).decode("ascii"))
    for pair in parts.query.split("&"):
        if "=" in pair:
            value = pair.split("=", 1)[1]
            if value:
                secrets += [value, unquote(value), unquote_plus(value)]
    return sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)


def scrub(text: str, url: str | None) -> str:
    """Remove the URL's secrets from a text bound for a log, a status or an error."""
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


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
