"""The client side of the medic-gateway protocol: handshake, exchange, and JSON -> Offered.

The only module of smsgw that imports requests. Everything that can go wrong on the wire
becomes a WebappError whose text is one readable line without the URL's secrets; anything
else (a bug of smsgw) propagates as itself. Each exchange has a total deadline, can be
aborted from another thread or a signal handler, and follows redirects only within the
webapp's own origin (or to hosts the user allowed), never from https to http.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import json
import logging
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth
from urllib3.util.retry import Retry

from . import __version__
from .config import ping_secrets, redact_url, scrub, scrub_secrets, split_credentials
from .errors import WebappError
from .models import Offered, json_type

logger = logging.getLogger(__name__)

MAX_BODY = 10 * 1024 * 1024
MAX_REDIRECTS = 5
CONNECT_RETRIES = 2
# Small reads keep memory bounded even with a urllib3 older than 2.6, whose decoder inflates
# a whole read at once (at most ~1000x for deflate).
CHUNK = 8192
ERROR_BODY_LIMIT = 64 * 1024  # enough of an error answer to find its message
SNIPPET_LENGTH = 200

HEADERS = {
    "Accept": "application/json",
    "Accept-Charset": "utf-8",
    "Accept-Encoding": "gzip",
    "Cache-Control": "no-cache",
    "Content-Type": "application/json",
}

_NOT_JSON = object()

# urllib3 1.26, still allowed by requests, has no NameResolutionError (only the gaierror)
_NameResolutionError = getattr(urllib3.exceptions, "NameResolutionError", socket.gaierror)

# What requests and urllib3 raise when the network, the webapp or the URL fails, by name:
# anything else is a bug of smsgw and must surface as itself. Requests are prepared outside
# the `try` that catches these, so the URL errors here come from the URL's host (urllib3's
# LocationValueError, requests' InvalidURL around it) and InvalidHeader from the webapp's
# answer (conflicting Content-Length values).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,  # includes SSLError, ProxyError, ConnectTimeout
    requests.exceptions.Timeout,  # ConnectTimeout, ReadTimeout
    requests.exceptions.TooManyRedirects,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
    # what iter_content / urllib3 can let through unwrapped
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.DecodeError,
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.LocationValueError,  # includes LocationParseError
)

# requests.adapters.HTTPAdapter.cert_verify raises a plain OSError with these words when
# the CA bundle file (--ca-bundle, or REQUESTS_CA_BUNDLE) does not exist.
_MISSING_CA_BUNDLE = "Could not find a suitable TLS CA certificate bundle"


def _is_missing_ca_bundle(exc: BaseException) -> bool:
    return type(exc) is OSError and str(exc).startswith(_MISSING_CA_BUNDLE)


REDIRECT_KEEPS_METHOD = (307, 308)


# --- parsing ---------------------------------------------------------------------------

def _load_json(body: bytes) -> Any:
    """json.loads that only ever raises WebappError."""
    try:
        # strict=False: a control character inside a string is content. The multiOTP PHP
        # class writes tabs raw into its answers, and refusing the answer would lose every
        # message in it (it marks them handed over as it answers).
        return json.loads(body, strict=False)
    except RecursionError:
        raise WebappError("the webapp's answer is not valid JSON: nested too deeply") from None
    except UnicodeError as exc:
        raise WebappError(
            f"the webapp's answer is not valid JSON: not UTF-8 text ({exc.reason})"
        ) from None
    except ValueError as exc:
        raise WebappError(f"the webapp's answer is not valid JSON: {exc}") from None


def _string_field(item: dict[str, Any], name: str, missing: str) -> tuple[str | None, str | None]:
    """A field that must be a string: (value, None), or (None, why it is unusable)."""
    value = item.get(name)
    if value is None:
        return None, missing
    if not isinstance(value, str):
        return None, f"{name} is {json_type(value)}, not a string"
    return value, None


def _offered(index: int, item: Any) -> Offered | None:
    """One entry of `messages`, checked field by field; None when it is not an object.

    A bad field never drops the entry: it comes back with `problem` set, so that an entry
    with a usable id is reported FAILED with the reason, and the others go on.
    """
    if not isinstance(item, dict):
        logger.warning("skipped messages[%d] of the webapp's answer: %s, not an object",
                       index, json_type(item))
        return None
    raw_id = item.get("id")
    msg_id, problem = _string_field(item, "id", "missing id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        msg_id = str(raw_id)  # reportable under its decimal spelling, but not sent
    to, to_problem = _string_field(item, "to", "missing recipient (to)")
    content, content_problem = _string_field(item, "content", "missing content")
    problem = problem or to_problem or content_problem
    if problem and msg_id is None:
        logger.warning("skipped messages[%d] of the webapp's answer: %s", index, problem)
    return Offered(id=msg_id or None, to=to, content=content, problem=problem)


def parse_response(body: bytes) -> list[Offered]:
    """The messages a 2xx answer offers; empty, `{}` and `"messages": null` offer none."""
    if not body.strip():
        return []
    data = _load_json(body)
    if not isinstance(data, dict):
        raise WebappError(f"the webapp's answer is {json_type(data)}, not a JSON object")
    messages = data.get("messages")
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise WebappError(
            f'the webapp\'s answer has "messages" as {json_type(messages)}, '
            "not an array or null"
        )
    return [o for o in (_offered(i, item) for i, item in enumerate(messages)) if o is not None]


def _snippet(body: bytes, content_type: str = "") -> str:
    """A short single line of a body for an error text; HTML is reduced to its text."""
    text = body[:ERROR_BODY_LIMIT].decode("utf-8", errors="replace")
    looks_html = "html" in content_type.lower() or text.lstrip()[:1] == "<"
    if looks_html:
        text = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", text)
        text = re.sub(r"(?s)<!--.*?-->", " ", text)
        text = re.sub(r"(?s)<[^>]*>", " ", text)
        text = html.unescape(text)
    text = " ".join(text.split())
    if len(text) > SNIPPET_LENGTH:
        text = text[:SNIPPET_LENGTH].rstrip() + "…"
    return text


def _error_message(body: bytes, content_type: str) -> str | None:
    """The webapp's own words in an error answer: `{"error": true, "message": "..."}`."""
    if "json" not in content_type.lower() and body.lstrip()[:1] != b"{":
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    for key in ("message", "error"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    return None


# --- secrets in urllib3's own log lines -----------------------------------------------

_clients: weakref.WeakSet[WebappClient] = weakref.WeakSet()
_clients_lock = threading.Lock()


class _ScrubUrllib3(logging.Filter):
    """Scrubs the secrets of every live client from urllib3's records (they hold the query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _clients_lock:
            clients = list(_clients)
        if not clients:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is the handler's problem, not ours
            return True
        for client in clients:
            text = client.scrub(text)
        record.msg, record.args = text, ()
        return True


_URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry",
                    "urllib3.response", "urllib3.poolmanager")
_urllib3_filter = _ScrubUrllib3()
for _name in _URLLIB3_LOGGERS:
    logging.getLogger(_name).addFilter(_urllib3_filter)


# --- deadline and abort: cutting the connection of an exchange in progress -------------

_DEADLINE = "deadline"
_STOPPED = "stopped"


class _Ended(Exception):
    """The exchange in progress passed its deadline or was aborted.

    Deliberately not an OSError nor a urllib3 error: urllib3 and requests let it through
    without retrying or wrapping it.
    """


class _Exchange:
    """One exchange in progress: when it must end, and the connections it uses.

    `end()` is called by the watchdog timer, by `abort()` from another thread, or from a
    signal handler in the exchanging thread itself, so it takes no lock: it sets `ended`
    and shuts the sockets down (a syscall), which makes a blocked recv or send return at
    once. The exchanging thread notices `ended` at its next step.
    """

    def __init__(self, seconds: float) -> None:
        self.ends_at = time.monotonic() + seconds
        self.ended: str | None = None
        self.connections: set[Any] = set()

    def remaining(self) -> float:
        return self.ends_at - time.monotonic()

    def over(self) -> bool:
        return self.ended is not None or self.remaining() <= 0

    def check(self) -> None:
        """Raise _Ended if the exchange must end now."""
        if self.ended is None and self.remaining() <= 0:
            self.end(_DEADLINE)
        if self.ended is not None:
            raise _Ended(self.ended)

    def use(self, connection: Any) -> None:
        # Added before checking `ended`: end() sets `ended` before it lists the
        # connections, so either it cuts this one or check() sees that it ended.
        self.connections.add(connection)
        self.check()

    def end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
        # list() of a set runs in C without switching threads or running signal handlers
        for connection in list(self.connections):
            _cut(connection)


def _cut(connection: Any) -> None:
    """Shut a connection's socket down without closing it (the reading thread owns it)."""
    for sock in (getattr(connection, "sock", None), getattr(connection, "_smsgw_sock", None)):
        for _ in range(3):  # urllib3's SSLTransport (TLS in a TLS proxy) wraps a socket
            if sock is None or isinstance(sock, socket.socket):
                break
            sock = getattr(sock, "socket", None)
        if isinstance(sock, socket.socket):
            # The plain socket's shutdown, not SSLSocket.shutdown, which would also drop the
            # TLS state another thread is using. OSError: already closed.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


_local = threading.local()  # .exchange: the exchange in progress in this thread


def _exchange_in_progress() -> _Exchange | None:
    return getattr(_local, "exchange", None)


class _Interruptible:
    """urllib3 connections that join the exchange in progress in their thread.

    requests is synchronous, so a connection is used in the thread that runs the exchange.
    The socket is remembered at connect time because http.client lets go of it
    (`sock = None`) when it hands a `Connection: close` answer over to the response.
    """

    sock: Any
    timeout: Any

    def connect(self) -> None:
        exchange = _exchange_in_progress()
        if exchange is not None:
            exchange.use(self)
            left = exchange.remaining()
            if isinstance(self.timeout, (int, float)) and left < self.timeout:
                self.timeout = max(left, 0.001)
        super().connect()  # type: ignore[misc]
        self._smsgw_sock = self.sock
        if exchange is not None:
            exchange.check()

    def request(self, *args: Any, **kwargs: Any) -> None:
        exchange = _exchange_in_progress()
        if exchange is not None:
            exchange.use(self)  # a kept-alive connection does not connect again
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Interruptible, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Interruptible, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS: dict[str, type[urllib3.HTTPConnectionPool]] = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(HTTPAdapter):
    """requests' adapter with pools of interruptible connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        # a SOCKS manager has pools of its own connection classes: leave it be
        if manager.pool_classes_by_scheme.get("http") is urllib3.HTTPConnectionPool:
            manager.pool_classes_by_scheme = _POOLS
        return manager


# --- redirects -------------------------------------------------------------------------

class _Origin(NamedTuple):
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, parts: SplitResult) -> _Origin:
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname or "", parts.port or default)

    def name(self) -> str:
        """host, or host:port when the port is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _allowed_hosts(entries: Iterable[str]) -> frozenset[tuple[str, int | None]]:
    """(host, port or None for any port) for each "host" or "host:port"; ValueError if bad."""
    if isinstance(entries, str):
        entries = [entries]
    allowed: set[tuple[str, int | None]] = set()
    for entry in entries:
        text = str(entry).strip()
        if text.count(":") > 1 and not text.startswith("["):
            text = f"[{text}]"  # a bare IPv6 address
        try:
            if not text or any(c in text for c in "/?#@ "):
                raise ValueError(entry)
            # normalised as requests normalises a URL's host (lower case, IDNA)
            parts = urlsplit(requests.Request("GET", f"http://{text}/").prepare().url)
            host, port = parts.hostname, parts.port
        except ValueError:
            host = None
        if not host:
            raise ValueError(f"not a host name or host:port to allow redirects to: {entry!r}")
        allowed.add((host, port))
    return frozenset(allowed)


def _redirect_target(response: requests.Response) -> str | None:
    """The absolute, requoted URL a redirect points to; None if it is not a usable URL."""
    location = response.headers.get("Location", "")
    # http.client decodes header bytes as latin-1; browsers read a Location as UTF-8
    with contextlib.suppress(UnicodeError):
        location = location.encode("latin-1").decode("utf-8")
    try:
        target = requests.Request("GET", urljoin(response.url, location.strip())).prepare().url
        urlsplit(target).port  # noqa: B018 - raises ValueError for a bad port
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema, ValueError):  # ValueError: urljoin, .port
        return None
    return target


class _Session(requests.Session):
    """A session that never follows a redirect: WebappClient._follow does, by its rules.

    Even with allow_redirects=False, Session.send prepares the next request of a redirect
    (for Response.next), reading the whole redirect body into memory on the way.
    """

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


# --- the client ------------------------------------------------------------------------

@dataclass
class _Answer:
    status: int
    body: bytes


def _login_redirect(response: requests.Response) -> tuple[int, str] | None:
    """(status, where) when the webapp sent us to a login page, as cht-core does with a
    wrong password for a client that does not ask for JSON."""
    for hop in [*response.history, response]:
        if 300 <= hop.status_code < 400 and hop.headers.get("Location"):
            target = _redirect_target(hop)
            if target is not None and "login" in urlsplit(target).path.lower():
                return hop.status_code, redact_url(target) or "a login page"
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (cause, context, urllib3 reason, args)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        reason = getattr(e, "reason", None)
        wrapped = [reason, e.__cause__, e.__context__, *e.args]
        todo += [w for w in wrapped if isinstance(w, BaseException)]


def _leaf(exc: BaseException) -> BaseException:
    """The innermost wrapped exception, whose words are usually the clearest."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = [getattr(exc, "reason", None), exc.__cause__, *exc.args]
        nxt = next((e for e in inner if isinstance(e, BaseException)), None)
        if nxt is None:
            break
        exc = nxt
    return exc


def _human_size(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} bytes"


class WebappClient:
    """Talks to one webapp URL: `handshake()` checks it, `exchange()` does one POST.

    `deadline` bounds a whole exchange (connecting, sending, redirects, reading the answer)
    on top of the per-read `read_timeout`; only a DNS lookup, which cannot be cut short,
    may overrun it. Redirects are followed to the webapp's own
    origin (scheme, host and port) and to the hosts in `allow_redirects_to` ("host" for any
    port, or "host:port"), which are trusted like the webapp: the batch and the credentials
    go there. A redirect from https to http is never followed.
    """

    def __init__(self, url: str, *, connect_timeout: float = 10.0, read_timeout: float = 30.0,
                 ca_bundle: str | None = None, compress_requests: bool = False,
                 max_body: int = MAX_BODY, deadline: float = 120.0,
                 allow_redirects_to: Iterable[str] = ()) -> None:
        if not deadline > 0:
            raise ValueError(f"deadline must be a positive number of seconds, not {deadline!r}")
        self._raw_url = url
        self._bad_url: str | None = None  # why the URL is unusable; raised on first use
        credentials: tuple[str, str] | None = None
        self._prepared_url: str | None = None
        self._host, self._port = "?", 0
        self._origin = _Origin("", "", 0)
        try:
            self._url, credentials = split_credentials(url)
            parts = urlsplit(self._url)
            self._host = parts.hostname or "?"
            self._port = parts.port or (443 if parts.scheme == "https" else 80)
            self._prepared_url = requests.Request("GET", self._url).prepare().url
            if parts.scheme.lower() not in ("http", "https"):
                raise ValueError(f"it must begin with http:// or https://, not {parts.scheme}:")
            self._origin = _Origin.of(urlsplit(self._prepared_url))
        except (requests.RequestException, ValueError) as exc:
            self._url = url
            self._bad_url = self.scrub(f"invalid webapp URL: {' '.join(str(exc).split())}")
        self._timeout = (connect_timeout, read_timeout)
        self._deadline = deadline
        self._allowed = _allowed_hosts(allow_redirects_to)
        self._verify: bool | str = ca_bundle or True
        self._ca_bundle = ca_bundle
        self._compress = compress_requests
        self._max_body = max_body
        self._exchange: _Exchange | None = None  # in progress, for abort()

        session = _Session()
        session.headers.clear()
        session.headers.update(HEADERS)
        session.headers["User-Agent"] = (
            f"smsgw/{__version__} {requests.utils.default_user_agent()}"
        )
        if credentials is not None:
            session.auth = HTTPBasicAuth(*credentials)
        session.max_redirects = MAX_REDIRECTS  # redirects are followed by _follow, not requests
        # Retry only what never reached the webapp; read=False re-raises read errors as
        # themselves, so a read timeout stays a ReadTimeout.
        retry = Retry(total=None, connect=CONNECT_RETRIES, read=False, redirect=0, status=0,
                      other=0, backoff_factor=0.25, raise_on_status=False,
                      respect_retry_after_header=False)
        adapter = _Adapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        with _clients_lock:
            _clients.add(self)

    # -- public --------------------------------------------------------------------------

    def handshake(self) -> None:
        """GET the URL and check that it answers `{"medic-gateway": true}`."""
        logger.debug("GET %s (handshake)", redact_url(self._raw_url))
        answer = self._call("GET", None, {})
        said = f"webapp answered HTTP {answer.status}"
        error: WebappError | None = None
        if not answer.body.strip():
            error = WebappError(
                f'{said} with an empty body, not {{"medic-gateway": true}}', answer.status)
        else:
            try:
                data = json.loads(answer.body)
            except (ValueError, RecursionError):
                data = _NOT_JSON
            snippet = self.scrub(_snippet(answer.body))
            if data is _NOT_JSON:
                error = WebappError(f"{said} with something that is not JSON: {snippet}",
                                    answer.status)
            elif not (isinstance(data, dict) and data.get("medic-gateway") is True):
                error = WebappError(
                    f'{said} with no "medic-gateway": true (got: {snippet})', answer.status)
        if error is not None:
            logger.debug("handshake failed: %s", error)
            raise error from None
        logger.debug("handshake ok: HTTP %d", answer.status)

    def exchange(self, messages: list[dict[str, Any]], updates: list[dict[str, Any]],
                 health: dict[str, Any] | None = None) -> list[Offered]:
        """POST incoming SMS and status updates; return the messages the webapp offers.

        `health`, when given, goes as one extra top-level field, "smsgw" (the protocol
        lets either side add fields); without it the body is exactly the protocol's.
        """
        payload: dict[str, Any] = {"messages": messages, "updates": updates}
        if health is not None:
            payload["smsgw"] = health
        body = self._encode(payload)
        headers: dict[str, str] = {}
        if self._compress:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        logger.debug("POST %s: %d messages, %d updates, %d bytes%s", redact_url(self._raw_url),
                     len(messages), len(updates), len(body), " gzipped" if self._compress else "")
        answer = self._call("POST", body, headers)
        error: WebappError | None = None
        try:
            offered = parse_response(answer.body)
        except WebappError as exc:
            begins = _snippet(answer.body[:1000])
            error = WebappError(self.scrub(f"{exc}; it begins: {begins}"), answer.status)
        if error is not None:
            logger.debug("unusable answer: %s", error)
            raise error from None
        logger.debug("webapp answered HTTP %d, %d bytes, %d messages offered", answer.status,
                     len(answer.body), len(offered))
        return offered

    def abort(self) -> None:
        """End the handshake or exchange in progress at once with WebappError("stopped").

        Safe from another thread and from a signal handler. A TCP connect in progress
        (and a DNS lookup) cannot be cut: the exchange then ends when the connect does, at
        most `connect_timeout` later. Does nothing when no exchange is in progress; the
        client stays usable for later exchanges.
        """
        exchange = self._exchange
        if exchange is not None:
            exchange.end(_STOPPED)

    def close(self) -> None:
        """Close the connections."""
        self._session.close()
        with _clients_lock:
            _clients.discard(self)

    def __enter__(self) -> WebappClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def scrub(self, text: str) -> str:
        """The text without this client's URL secrets, in any spelling requests uses."""
        text = scrub(text, self._raw_url)
        return scrub(text, self._prepared_url)

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _encode(payload: dict[str, Any]) -> bytes:
        try:
            return json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            # a lone surrogate (half an emoji) cannot be UTF-8; \u escapes can carry it
            return json.dumps(payload).encode("ascii")

    def _call(self, method: str, data: bytes | None, headers: dict[str, str]) -> _Answer:
        """One exchange; a failure of the webapp or the network becomes a scrubbed
        WebappError without a chained cause. Anything else propagates unchanged."""
        if self._bad_url is not None:
            raise WebappError(self._bad_url)
        exchange = _Exchange(self._deadline)
        outer = _exchange_in_progress()
        _local.exchange = self._exchange = exchange
        watchdog = threading.Timer(min(self._deadline, threading.TIMEOUT_MAX), exchange.end,
                                   args=(_DEADLINE,))
        watchdog.daemon = True
        watchdog.start()
        error: WebappError | None = None
        answer = _Answer(0, b"")
        try:
            try:
                answer, error = self._follow(exchange, method, data, headers)
            except _Ended:
                error = self._ended_error(exchange)
            except NETWORK_ERRORS as exc:
                # once the exchange is over, a broken connection is our own doing
                error = (self._ended_error(exchange) if exchange.over()
                         else WebappError(self.scrub(self._describe(exc))))
            except OSError as exc:
                if not _is_missing_ca_bundle(exc):
                    raise
                error = WebappError(self.scrub(self._describe(exc)))
        finally:
            watchdog.cancel()
            _local.exchange = outer
            self._exchange = None
            if exchange.ended is not None:
                self._session.close()  # never reuse a connection that was cut
        if error is not None:
            logger.debug("%s %s failed: %s", method, redact_url(self._raw_url), error)
            raise error from None
        return answer

    def _ended_error(self, exchange: _Exchange) -> WebappError:
        if exchange.ended == _STOPPED:
            return WebappError("stopped")
        return WebappError(f"the webapp at {self._host} did not finish answering "
                           f"within {self._deadline:g} s")

    def _send(self, exchange: _Exchange, method: str, url: str, data: bytes | None,
              headers: dict[str, str]) -> requests.Response:
        """One request of an exchange, redirects not followed; the answer is not read yet."""
        # Prepared outside the `try` of _call: an error here is a bug of ours (the URL was
        # checked when the client was made, redirect targets before they are followed).
        prepared = self._session.prepare_request(
            requests.Request(method, url, data=data, headers=headers))
        settings = self._session.merge_environment_settings(
            prepared.url, {}, True, self._verify, None)
        exchange.check()
        left = exchange.remaining()
        timeout = (min(self._timeout[0], left), min(self._timeout[1], left))
        return self._session.send(prepared, timeout=timeout, allow_redirects=False, **settings)

    def _follow(self, exchange: _Exchange, method: str, data: bytes | None,
                headers: dict[str, str]) -> tuple[_Answer, WebappError | None]:
        """Send the request and follow the redirects that are safe to follow.

        A 301, 302 or 303 turns a POST into a GET without the data, as every HTTP client
        does: the chain is still followed (it may loop, or end at a login page, which says
        more), but whatever it ends with is refused, since the data never arrived.
        """
        url, hop_method, hop_data, hop_headers = self._url, method, data, headers
        turned: WebappError | None = None  # why the answer is refused once a POST is a GET
        for followed in range(MAX_REDIRECTS + 1):
            response = self._send(exchange, hop_method, url, hop_data, hop_headers)
            with response:
                if not response.is_redirect:
                    if turned is not None and self._login_error(response) is None:
                        return _Answer(response.status_code, b""), turned
                    return self._read_answer(exchange, response)
                target, error = self._check_redirect(response, followed)
                if error is not None or target is None:
                    return _Answer(response.status_code, b""), error
                # Read a little, so that the connection can be used again; if that
                # fails, closing the response drops the connection and the redirect stands.
                with contextlib.suppress(*NETWORK_ERRORS):
                    self._read_body(exchange, response, ERROR_BODY_LIMIT, strict=False)
            logger.debug("%s redirected (HTTP %d) to %s", hop_method, response.status_code,
                         redact_url(target))
            status = response.status_code
            if status not in REDIRECT_KEEPS_METHOD:
                if hop_method != "GET" and turned is None:
                    turned = WebappError(self.scrub(
                        f"the webapp redirected the {hop_method} (HTTP {status} to "
                        f"{redact_url(target) or 'another URL'}), which turns it into a GET "
                        "without the data; configure the URL it redirects to"), status)
                hop_method, hop_data, hop_headers = "GET", None, {}
            url = target
        raise AssertionError("unreachable: _check_redirect stops after MAX_REDIRECTS")

    def _check_redirect(self, response: requests.Response,
                        followed: int) -> tuple[str | None, WebappError | None]:
        """(where to go, None), or (None, why the redirect is not followed)."""
        status = response.status_code
        login = self._login_error(response)
        if login is not None:
            return None, login
        target = _redirect_target(response)
        if target is None:
            return None, WebappError(
                f"the webapp redirected (HTTP {status}) to an invalid URL", status)
        where = redact_url(target) or "another URL"
        if followed >= MAX_REDIRECTS:
            return None, WebappError(
                f"too many redirects (more than {MAX_REDIRECTS}); the webapp URL loops")
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https"):
            return None, WebappError(self.scrub(
                f"refused the webapp's redirect (HTTP {status}) to {where}: "
                "not an http or https URL"), status)
        if urlsplit(response.url).scheme == "https" and parts.scheme == "http":
            return None, WebappError(self.scrub(
                f"refused the webapp's redirect (HTTP {status}) from https to {where}: "
                "it would carry the data unencrypted; configure the URL it should use"),
                status)
        origin = _Origin.of(parts)
        if origin != self._origin and not ({(origin.host, None), (origin.host, origin.port)}
                                           & self._allowed):
            what = ("host" if origin.host != self._origin.host
                    else "scheme" if origin.scheme != self._origin.scheme else "port")
            return None, WebappError(self.scrub(
                f"refused the webapp's redirect (HTTP {status}) to {where}: another {what} "
                "than the webapp URL's; if it is right, configure that URL, "
                f"or allow redirects to {origin.name()}"), status)
        return target, None

    def _login_error(self, response: requests.Response) -> WebappError | None:
        login = _login_redirect(response)
        if login is None:
            return None
        return WebappError(self.scrub(
            f"the webapp redirected to a login page (HTTP {login[0]} to {login[1]}): "
            "check the user and password in the URL"), login[0])

    def _read_answer(self, exchange: _Exchange,
                     response: requests.Response) -> tuple[_Answer, WebappError | None]:
        status = response.status_code
        login = self._login_error(response)
        if login is not None:
            return _Answer(status, b""), login
        if 200 <= status < 300:
            body = self._read_body(exchange, response, self._max_body, strict=True)
            if body is None:
                return _Answer(status, b""), WebappError(
                    f"refused an answer larger than {_human_size(self._max_body)} "
                    "from the webapp", status)
            return _Answer(status, body), None
        try:
            body = self._read_body(exchange, response, ERROR_BODY_LIMIT, strict=False) or b""
        except (*NETWORK_ERRORS, _Ended):
            body = b""  # the status says enough
        content_type = response.headers.get("Content-Type", "")
        message = _error_message(body, content_type)
        detail = message or _snippet(body, content_type) or response.reason or ""
        text = f"webapp answered HTTP {status}" + (f": {detail}" if detail else "")
        if status < 400:
            location = response.headers.get("Location")
            if location:
                shown = redact_url(_redirect_target(response)) or "another URL"
                text += f" (redirect to {shown} not followed)"
            else:
                text += " (not a status smsgw can use)"
        return _Answer(status, body), WebappError(
            self.scrub(text), status=status,
            message=self.scrub(message) if message is not None else None)

    @staticmethod
    def _read_body(exchange: _Exchange, response: requests.Response, limit: int,
                   strict: bool) -> bytes | None:
        """Read at most `limit` decoded bytes; None if `strict` and there is more.

        Raises _Ended when the exchange ends before the body does, also when the end shows
        as a clean end of file (a body delimited by closing the connection was cut short).
        """
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        declared = response.headers.get("Content-Length", "")
        if strict and encoding in ("", "identity") and re.fullmatch(r"[0-9]+", declared.strip()) \
                and int(declared) > limit:
            return None
        buf = bytearray()
        exchange.check()
        for chunk in response.iter_content(CHUNK):
            exchange.check()
            buf += chunk
            if len(buf) > limit:
                if strict:
                    return None
                del buf[limit:]
                break
        exchange.check()
        return bytes(buf)

    def _describe(self, exc: BaseException) -> str:
        """A network failure in words (not yet scrubbed)."""
        chain = list(_causes(exc))
        host, where = self._host, f"{self._host}:{self._port}"

        def has(*types: type[BaseException]) -> bool:
            return any(isinstance(e, types) for e in chain)

        leaf = " ".join(str(_leaf(exc)).split())[:SNIPPET_LENGTH]
        if _is_missing_ca_bundle(exc):
            bundle = f" {self._ca_bundle}" if self._ca_bundle else ""
            return f"cannot use the CA bundle{bundle}: {leaf}"
        if has(requests.TooManyRedirects):
            return f"too many redirects (more than {MAX_REDIRECTS}); the webapp URL loops"
        if has(requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
               requests.exceptions.InvalidSchema, urllib3.exceptions.LocationValueError):
            return f"invalid webapp URL: {leaf}"
        if has(ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            why = next((e.verify_message for e in chain
                        if isinstance(e, ssl.SSLCertVerificationError) and e.verify_message),
                       "certificate verify failed")
            hint = ("check that it is the webapp's CA" if self._ca_bundle
                    else "if the webapp uses a private or self-signed certificate, "
                         "give its CA certificate with --ca-bundle")
            return f"TLS certificate verification failed for {host}: {why}; {hint}"
        if has(requests.exceptions.SSLError, ssl.SSLError):
            return f"TLS connection to {where} failed: {leaf}"
        if has(_NameResolutionError, socket.gaierror):
            return f"cannot resolve host {host}"
        if has(ConnectionRefusedError):
            return f"connection refused by {where} (is the webapp running, is the URL right?)"
        if has(requests.ConnectTimeout):
            return f"timed out connecting to {where} after {self._timeout[0]:g} s"
        if has(requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError):
            return f"the webapp at {host} did not answer within {self._timeout[1]:g} s"
        if has(requests.exceptions.ContentDecodingError, urllib3.exceptions.DecodeError):
            return f"cannot decompress the webapp's answer: {leaf}"
        if has(requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError,
               ConnectionResetError, BrokenPipeError):
            return f"the connection to {where} broke: {leaf}"
        if has(requests.ConnectionError, urllib3.exceptions.NewConnectionError):
            return f"cannot connect to {where}: {leaf}"
        if has(requests.exceptions.InvalidHeader):
            return f"the webapp at {where} answered with an invalid header: {leaf}"
        return f"error talking to the webapp at {where}: {type(_leaf(exc)).__name__}: {leaf}"


# --- heartbeat pings -------------------------------------------------------------------

class Pinger:
    """GETs heartbeat URLs (a monitoring service's), one at a time, each cut at `timeout`.

    Made for a background thread: `get` blocks up to `timeout` seconds in all (connect,
    headers, a little of the body), never follows redirects and never raises for what
    the network or the service does; its texts hold no secret of the URL.
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self._url = url
        self._secrets = tuple(ping_secrets(url))
        self._timeout = timeout
        session = requests.Session()
        session.headers["User-Agent"] = (
            f"smsgw/{__version__} {requests.utils.default_user_agent()}")
        adapter = _Adapter(max_retries=Retry(total=0, connect=0, read=False, redirect=0,
                                             status=0, other=0, raise_on_status=False))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        with _clients_lock:
            _clients.add(self)  # type: ignore[arg-type]  # urllib3's lines are scrubbed too

    def scrub(self, text: str) -> str:
        """The text without the URL's secrets (token in the path, password, query)."""
        return scrub_secrets(text, self._secrets)

    def get(self, url: str) -> tuple[bool, str]:
        """GET `url` (the ping URL or a variant of it): (True, "HTTP 200") for a 2xx,
        else (False, what happened in words, without secrets)."""
        exchange = _Exchange(self._timeout)
        outer = _exchange_in_progress()
        _local.exchange = exchange
        watchdog = threading.Timer(self._timeout, exchange.end, args=(_DEADLINE,))
        watchdog.daemon = True
        watchdog.start()
        try:
            try:
                response = self._session.get(
                    url, timeout=(self._timeout, self._timeout), allow_redirects=False,
                    stream=True)
                with response:
                    with contextlib.suppress(*NETWORK_ERRORS, _Ended):
                        for _ in response.iter_content(1024):  # let the service finish
                            exchange.check()
                            break
                    status = response.status_code
            except _Ended:
                return False, f"no answer within {self._timeout:g} s"
            except (*NETWORK_ERRORS, OSError) as exc:
                if exchange.over():
                    return False, f"no answer within {self._timeout:g} s"
                leaf = _leaf(exc)
                if any(isinstance(e, ConnectionRefusedError) for e in _causes(exc)):
                    return False, "connection refused"
                if any(isinstance(e, (_NameResolutionError, socket.gaierror))
                       for e in _causes(exc)):
                    return False, "cannot resolve the host"
                words = " ".join(str(leaf).split())[:SNIPPET_LENGTH]
                return False, self.scrub(f"{type(leaf).__name__}: {words}")
        finally:
            watchdog.cancel()
            _local.exchange = outer
            if exchange.ended is not None:
                self._session.close()
        if 200 <= status < 300:
            return True, f"HTTP {status}"
        return False, f"answered HTTP {status}"

    def close(self) -> None:
        """Close the connections."""
        self._session.close()
        with _clients_lock:
            _clients.discard(self)  # type: ignore[arg-type]
