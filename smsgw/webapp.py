"""The client side of the medic-gateway protocol: handshake, exchange, and JSON -> Offered.

The only module of smsgw that imports requests. Everything that can go wrong on the wire
becomes a WebappError whose text is one readable line without the URL's secrets.
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import re
import socket
import ssl
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth
from urllib3.util.retry import Retry

from . import __version__
from .config import redact_url, scrub, split_credentials
from .errors import WebappError
from .models import Offered

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

NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,  # includes socket and ssl errors, and requests' missing CA bundle
    ValueError,  # includes UnicodeError and urllib3's LocationParseError
)


# --- parsing ---------------------------------------------------------------------------

def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error texts."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


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
        return None, f"{name} is {_json_type(value)}, not a string"
    return value, None


def _offered(index: int, item: Any) -> Offered | None:
    """One entry of `messages`, checked field by field; None when it is not an object.

    A bad field never drops the entry: it comes back with `problem` set, so that an entry
    with a usable id is reported FAILED with the reason, and the others go on.
    """
    if not isinstance(item, dict):
        logger.warning("skipped messages[%d] of the webapp's answer: %s, not an object",
                       index, _json_type(item))
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
        raise WebappError(f"the webapp's answer is {_json_type(data)}, not a JSON object")
    messages = data.get("messages")
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise WebappError(
            f'the webapp\'s answer has "messages" as {_json_type(messages)}, '
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


# --- the client ------------------------------------------------------------------------

@dataclass
class _Answer:
    status: int
    body: bytes


def _login_redirect(response: requests.Response) -> tuple[int, str] | None:
    """(status, where) when the webapp sent us to a login page, as cht-core does with a
    wrong password for a client that does not ask for JSON."""
    for hop in [*response.history, response]:
        location = hop.headers.get("Location") if 300 <= hop.status_code < 400 else None
        if location and "login" in urlsplit(location).path.lower():
            return hop.status_code, redact_url(urljoin(hop.url, location)) or "a login page"
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
    """Talks to one webapp URL: `handshake()` checks it, `exchange()` does one POST."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0, read_timeout: float = 30.0,
                 ca_bundle: str | None = None, compress_requests: bool = False,
                 max_body: int = MAX_BODY) -> None:
        self._raw_url = url
        self._bad_url: str | None = None  # why the URL is unusable; raised on first use
        credentials: tuple[str, str] | None = None
        self._prepared_url: str | None = None
        self._host, self._port = "?", 0
        try:
            self._url, credentials = split_credentials(url)
            parts = urlsplit(self._url)
            self._host = parts.hostname or "?"
            self._port = parts.port or (443 if parts.scheme == "https" else 80)
            self._prepared_url = requests.Request("GET", self._url).prepare().url
        except (requests.RequestException, ValueError) as exc:
            self._url = url
            self._bad_url = self.scrub(f"invalid webapp URL: {' '.join(str(exc).split())}")
        self._timeout = (connect_timeout, read_timeout)
        self._verify: bool | str = ca_bundle or True
        self._ca_bundle = ca_bundle
        self._compress = compress_requests
        self._max_body = max_body

        session = requests.Session()
        session.headers.clear()
        session.headers.update(HEADERS)
        session.headers["User-Agent"] = (
            f"smsgw/{__version__} {requests.utils.default_user_agent()}"
        )
        if credentials is not None:
            session.auth = HTTPBasicAuth(*credentials)
        session.max_redirects = MAX_REDIRECTS
        # Retry only what never reached the webapp; read=False re-raises read errors as
        # themselves, so a read timeout stays a ReadTimeout.
        retry = Retry(total=None, connect=CONNECT_RETRIES, read=False, redirect=0, status=0,
                      other=0, backoff_factor=0.25, raise_on_status=False,
                      respect_retry_after_header=False)
        adapter = HTTPAdapter(max_retries=retry)
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

    def exchange(self, messages: list[dict[str, Any]],
                 updates: list[dict[str, Any]]) -> list[Offered]:
        """POST incoming SMS and status updates; return the messages the webapp offers."""
        body = self._encode({"messages": messages, "updates": updates})
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
        """One request; any failure becomes a scrubbed WebappError without a chained cause."""
        if self._bad_url is not None:
            raise WebappError(self._bad_url)
        error: WebappError | None = None
        answer = _Answer(0, b"")
        try:
            response = self._session.request(
                method, self._url, data=data, headers=headers, timeout=self._timeout,
                verify=self._verify, stream=True, allow_redirects=True)
            with response:
                answer, error = self._read_answer(method, response)
        except NETWORK_ERRORS as exc:
            error = WebappError(self.scrub(self._describe(exc)))
        if error is not None:
            logger.debug("%s %s failed: %s", method, redact_url(self._raw_url), error)
            raise error from None
        return answer

    def _read_answer(self, method: str,
                     response: requests.Response) -> tuple[_Answer, WebappError | None]:
        status = response.status_code
        login = _login_redirect(response)
        if login is not None:
            return _Answer(status, b""), WebappError(self.scrub(
                f"the webapp redirected to a login page (HTTP {login[0]} to {login[1]}): "
                "check the user and password in the URL"), login[0])
        if response.request.method != method:
            first = response.history[0] if response.history else response
            where = redact_url(first.headers.get("Location", "")) or "another URL"
            return _Answer(status, b""), WebappError(self.scrub(
                f"the webapp redirected the {method} (HTTP {first.status_code} to {where}), "
                f"which turns it into a {response.request.method} without the data; "
                "configure the URL it redirects to"), first.status_code)
        if 200 <= status < 300:
            body = self._read_body(response, self._max_body, strict=True)
            if body is None:
                return _Answer(status, b""), WebappError(
                    f"refused an answer larger than {_human_size(self._max_body)} "
                    "from the webapp", status)
            return _Answer(status, body), None
        try:
            body = self._read_body(response, ERROR_BODY_LIMIT, strict=False) or b""
        except NETWORK_ERRORS:
            body = b""  # the status says enough
        content_type = response.headers.get("Content-Type", "")
        message = _error_message(body, content_type)
        detail = message or _snippet(body, content_type) or response.reason or ""
        text = f"webapp answered HTTP {status}" + (f": {detail}" if detail else "")
        if status < 400:
            location = response.headers.get("Location")
            text += (f" (redirect to {redact_url(location)} not followed)" if location
                     else " (not a status smsgw can use)")
        return _Answer(status, body), WebappError(
            self.scrub(text), status=status,
            message=self.scrub(message) if message is not None else None)

    @staticmethod
    def _read_body(response: requests.Response, limit: int, strict: bool) -> bytes | None:
        """Read at most `limit` decoded bytes; None if `strict` and there is more."""
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        declared = response.headers.get("Content-Length", "")
        if strict and encoding in ("", "identity") and declared.strip().isdigit() \
                and int(declared) > limit:
            return None
        buf = bytearray()
        for chunk in response.iter_content(CHUNK):
            buf += chunk
            if len(buf) > limit:
                if strict:
                    return None
                del buf[limit:]
                break
        return bytes(buf)

    def _describe(self, exc: BaseException) -> str:
        """A network failure in words (not yet scrubbed)."""
        chain = list(_causes(exc))
        host, where = self._host, f"{self._host}:{self._port}"

        def has(*types: type[BaseException]) -> bool:
            return any(isinstance(e, types) for e in chain)

        leaf = " ".join(str(_leaf(exc)).split())[:SNIPPET_LENGTH]
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
        if isinstance(exc, OSError) and "CA certificate bundle" in str(exc):
            return f"cannot use the CA bundle {self._ca_bundle}: {leaf}"
        return f"error talking to the webapp at {where}: {type(_leaf(exc)).__name__}: {leaf}"
