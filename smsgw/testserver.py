"""A reference webapp: the server side of the medic-gateway protocol, over real HTTP.

It comes in three flavours (`flavour=`, `smsgw testserver --flavour`): "reference", a
well-behaved webapp that checks what clients send, and two that reproduce real servers
read from their code, unkind parts included.

"reference" (the default). Every POST answers `{"messages": [{"id", "to", "content"}, ...]}`
with each queued message that has not had a status update yet (any status, UNSENT
included, stops the offers, as cht-core's "received-by-gateway"), after recording the
request's `messages` and `updates`. Incoming SMS are deduplicated by id in `received()`;
every update and every POST body is also kept in order (`updates()`, `snapshot()["raw"]`).
Checks, each answered with 4xx and `{"error": true, "message": "..."}` like a webapp would:
Basic auth when a username/password is set (401); with `strict_headers`, the five protocol
request headers compared literally (400; violations are recorded in any case); a body
that is not a UTF-8 JSON object whose `messages`/`updates` are lists of objects (400).
Gzip-encoded requests are decoded; with `gzip_responses` answers are gzipped when the
client's Accept-Encoding allows it. Things the protocol does not allow but a lenient
webapp would accept (an update with an unknown status, an SMS without `from`, ...) are
listed in `snapshot()["problems"]`.

"cht" (cht-core api/src/controllers/sms-gateway.js and services/messaging.js; the real
endpoint is /api/sms, the default path of this flavour). In this order: after 10 answers
401/429 within 10 s to the client's address (or username), a request with Basic
credentials gets 429 until that window ends, right password or not; a body that is not
JSON (or is gzip-corrupt, or a JSON scalar, or of a non-UTF charset) is 500
`{"code":500,"error":"Server error"}`, before any authentication; a Content-Type other than
exactly `application/json` is 400 "Content-Type must be application/json" (JSON
`{"code":400,"error":...}` when the Accept header prefers JSON to text, else text/plain);
then a missing or wrong password (or query, see below): with an Accept preferring JSON,
401 `{"code":401,"error":"unauthorized"}` and no WWW-Authenticate; else, for a client
with a User-Agent (other than the Android gateway's "Dalvik/... medic.gateway"), a 302 to
`/medic/login?redirect=<the request URL, percent-encoded>` (that page answers 200 HTML);
else 401 text/plain with `WWW-Authenticate: Basic realm="Medic Web Services"`. Then, in
order: incoming SMS (an entry with a falsy `id`, `content` or `from` is dropped silently; an
id seen in an earlier request is ignored, a repeated id within one request is saved
twice; `messages` that is not a list, even null, or a null entry is a 500 that loses the
whole request); status updates, applied in the order received with UNSENT ->
received-by-gateway, PENDING -> forwarded-by-gateway, SENT -> sent, DELIVERED -> delivered,
FAILED -> failed, anything else -> unrecognised, so a state can go backwards (`updates`
that is truthy and not a list, or a null entry, is a 500 after the incoming SMS were saved;
an entry without an id or for an unknown message is skipped); then the answer: the first
25 (or `batch_limit`) messages in state pending or forwarded-to-gateway, in queue order,
which become forwarded-to-gateway. Any status stops the offers (every state it maps to
is neither of those two), so a message is offered on every POST until one arrives, and
the 26th waits until statuses arrive for earlier ones. `cht_state_of(id)`,
`cht_history(id)`. Answers are compact JSON with an ETag, gzipped (chunked) from 1 KiB
when the client accepts gzip. GET answers `{"medic-gateway":true}`.

"php" (multiOTP SMSGateway class, src/SMSGateway.php, apiServer()). It authenticates only
with the query string `?id=DEVICE&h=HASH`, HASH = the first 6 hex digits of
md5(secret + "#salt@" + DEVICE), secret "secret" by default (`php_auth_hash()`); the
default `query` is `{"id": "demo"}` and `h` is filled in. A missing id is 404, a wrong
hash 401, both with an empty body. Every answer is `Content-Type: text/html;
charset=UTF-8`, and past that check 200: a request with an empty body (any method, GET
included) gets `{"medic-gateway": true}`; otherwise the body (never gunzipped: a gzip body is lost)
is json_decode()d, and an undecodable body loses its messages and updates silently. Each
`messages`/`updates` entry that is an object with a non-null `id` (and `status`) is used,
others are skipped; no other check. An incoming SMS is written to the file ID.UNREAD: a
re-sent id overwrites it (the last copy wins). An update renames the one file matching
the glob `ID.*` to `ID.STATUS`, whatever STATUS is (a word other than the spec's is kept
as is; "NEW" makes it offered again). The answer pastes the stored JSON text of every
message file ID.NEW (oldest second first, then by name; no limit) into
`{"messages": [...]}`, or is `{}`, and renames them ID.PUSHED at once: each message is
offered once, and again only if no status came `php_device_timeout` seconds (default 300)
after that. The stored text escapes only backslash, double quote and newline in
`content` (`id` and `to` not at all), so a tab or another control character goes out raw
inside a JSON string. `php_file_of(id)`, `php_history(id)`.

Only the reference flavour refuses requests for `strict_headers` (the others record the
violations) and only it and php follow `gzip_responses` (cht compresses as said above).
With a username/password, the php flavour also asks for Basic auth first, as a web server
in front of it would (401 with WWW-Authenticate). `php_device_timeout=0` never offers a
handed-over message again. The hash check is PHP's loose `!=`: for a device whose hash is
all digits, "000123" and "123.0" are the same hash. A device id other than the configured
one with its own valid hash is let in, to an empty device.

`query` (any flavour): query parameters every endpoint request must carry with these
values; they are part of `url`. A request without them is refused as the flavour refuses
bad credentials (reference: 401 JSON without WWW-Authenticate; cht: as above; php: 404 for
`id`, else 401). The testserver's faults and control API work with every flavour.

Faults (`set_fault(kind, count=1, **params)`): each applies to the next `count` POSTs on
the endpoint, after the ones already set. A faulted POST is logged in the raw log with
its fault but NOT recorded (the webapp "failed"), except for "slow" and "bad_entry".

- ``status``: answer `status` (default 500) with `body` (default a JSON error) of
  `content_type` (default: JSON for dicts/lists, text/html for text starting with "<",
  else text/plain) and extra `headers`; use it for 401/404/502, HTML error pages, ...
- ``html``: 200 with a text/html login page (or `body`), as a captive portal answers.
- ``slow``: waits `seconds` (default 2), then handles the POST normally and records it.
- ``timeout``: reads the request, waits `seconds` (default 60, longer than any client
  timeout) and closes the connection without an answer; `stop()` cuts the wait short.
- ``reset``: sends the headers and half of the normal answer's body, then aborts the TCP
  connection (RST).
- ``malformed``: 200, application/json, a truncated JSON text (or `body`).
- ``wrong_types``: 200 with valid JSON of the wrong shape: `variant` is one of
  WRONG_TYPE_VARIANTS (default "messages_string": `{"messages": "x"}`), or give `body`.
- ``bad_entry``: the POST is handled and recorded as usual, and the normal answer gets
  one malformed entry among the good messages (which are offered and counted as usual):
  `variant` one of BAD_ENTRY_VARIANTS, "id_number", "id_object", "to_list" (default),
  "no_content", "not_object" (the entry is a string).
- ``huge``: 200 with a valid JSON body of `size` bytes (default 50 MiB), streamed with a
  Content-Length, never built in memory.
- ``gzip_bomb``: 200, Content-Encoding gzip (whatever the client accepts), about 1 MB
  that inflates to `size` bytes (default 1.1 GB) of valid JSON: `{"messages": []` then
  spaces. Built once per size and cached; about 0.3 s for the default.
- ``redirect_loop``: answers `status` (default 302) to REDIRECT_LOOP_PATH (query kept),
  which redirects to itself for every method, so a client that turns the POST into a GET
  still loops.

Control API, beside the endpoint, for a separate process driving a `smsgw testserver`:
`POST /api/queue` {to, content, id?} -> {id}; `GET /api/state` -> snapshot() (with the
flavour, and per queued message its cht state or php file); `POST /api/faults`
{kind, count, ...params}; `DELETE /api/faults` clears them; `POST /api/offer_again` {id};
`POST /api/reset`. It has no auth, so it answers only clients on the loopback interface
(403 otherwise), even when the server listens wider. Bodies are JSON objects, whatever the
Content-Type. E.g. queue a message, then read what the gateway posted (`received`, `updates`,
each queued message's `statuses`):

    curl -s -X POST http://127.0.0.1:8585/api/queue \\
         -d '{"to": "+15550002222", "content": "hello from the webapp"}'
    curl -s http://127.0.0.1:8585/api/state
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import errno
import fnmatch
import gzip
import hashlib
import hmac
import json
import logging
import math
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qsl, quote, urlencode

from .config import redact_url
from .errors import UserError

logger = logging.getLogger(__name__)

PROTOCOL_HEADERS = {
    "Accept": "application/json",
    "Accept-Charset": "utf-8",
    "Accept-Encoding": "gzip",
    "Cache-Control": "no-cache",
    "Content-Type": "application/json",
}
STATUSES = ("UNSENT", "PENDING", "SENT", "DELIVERED", "FAILED")
REDIRECT_LOOP_PATH = "/_redirect_loop"
MAX_REQUEST_BODY = 32 * 1024 * 1024
CONTROL_PATHS = ("/api/queue", "/api/state", "/api/faults", "/api/offer_again", "/api/reset")

FLAVOURS = ("reference", "cht", "php")
DEFAULT_PATHS = {"reference": "/smsgateway/", "cht": "/api/sms", "php": "/smsgateway/"}

# cht-core: api/src/controllers/sms-gateway.js, services/messaging.js, server-utils.js
CHT_STATUS_MAP = {
    "UNSENT": "received-by-gateway",
    "PENDING": "forwarded-by-gateway",
    "SENT": "sent",
    "DELIVERED": "delivered",
    "FAILED": "failed",
}
CHT_OFFERED_STATES = ("pending", "forwarded-to-gateway")
CHT_BATCH = 25  # messaging.getOutgoingMessages: view query limit
CHT_LOGIN_PATH = "/medic/login"
CHT_RATE_POINTS, CHT_RATE_SECONDS = 10, 10.0  # services/rate-limit.js: failed logins
CHT_COMPRESS_THRESHOLD = 1024  # the compression middleware's default
_CHT_BASIC_REALM = 'Basic realm="Medic Web Services"'
# names an object literal inherits in JavaScript: STATUS_MAP[name] is not undefined
_JS_PROTOTYPE_NAMES = frozenset({
    "constructor", "__proto__", "toString", "toLocaleString", "valueOf", "hasOwnProperty",
    "isPrototypeOf", "propertyIsEnumerable", "__defineGetter__", "__defineSetter__",
    "__lookupGetter__", "__lookupSetter__"})

# multiOTP SMSGateway: src/SMSGateway.php
PHP_DEVICE_TIMEOUT = 300  # setDeviceTimeout() default: PUSHED files become NEW again
PHP_DEFAULT_DEVICE = "demo"
PHP_DEFAULT_SECRET = "secret"
PHP_CONTENT_TYPE = "text/html; charset=UTF-8"  # PHP's default_mimetype and default_charset

FAULT_PARAMS: dict[str, frozenset[str]] = {
    "status": frozenset({"status", "body", "content_type", "headers"}),
    "html": frozenset({"body"}),
    "slow": frozenset({"seconds"}),
    "timeout": frozenset({"seconds"}),
    "reset": frozenset(),
    "malformed": frozenset({"body"}),
    "wrong_types": frozenset({"variant", "body"}),
    "bad_entry": frozenset({"variant"}),
    "huge": frozenset({"size"}),
    "gzip_bomb": frozenset({"size"}),
    "redirect_loop": frozenset({"status"}),
}
FAULT_KINDS = tuple(FAULT_PARAMS)

WRONG_TYPE_VARIANTS: dict[str, Any] = {
    "messages_string": {"messages": "x"},
    "messages_object": {"messages": {"id": "w1", "to": "+15550100", "content": "hi"}},
    "messages_number": {"messages": 42},
    "top_level_list": [{"id": "w1", "to": "+15550100", "content": "hi"}],
    "items_not_objects": {"messages": [1, "two", None, ["w1", "+15550100", "hi"]]},
    "to_number": {"messages": [{"id": "w-to", "to": 123, "content": "hi"}]},
    "id_null": {"messages": [{"id": None, "to": "+15550100", "content": "hi"}]},
    "id_number": {"messages": [{"id": 7, "to": "+15550100", "content": "hi"}]},
    "content_null": {"messages": [{"id": "w-content", "to": "+15550100", "content": None}]},
    "nested": {"messages": [{"id": {"a": [1, {"b": None}]}, "to": ["+15550100"],
                             "content": {"text": ["hi"]}}]},
}

BAD_ENTRY_VARIANTS: dict[str, Any] = {
    "id_number": {"id": 4711, "to": "+15550100", "content": "bad entry: id is a number"},
    "id_object": {"id": {"uuid": "bad-id-object"}, "to": "+15550100",
                  "content": "bad entry: id is an object"},
    "to_list": {"id": "bad-to-list", "to": ["+15550100", "+15550101"],
                "content": "bad entry: to is a list"},
    "no_content": {"id": "bad-no-content", "to": "+15550100"},
    "not_object": "bad entry: not an object",
}
DEFAULT_BAD_ENTRY = "to_list"

_HTML_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n"
    "<body><h1>Please sign in</h1><form method=\"post\" action=\"/login\">"
    "<input name=\"user\"><input name=\"password\" type=\"password\"></form></body></html>\n"
)
_CHT_LOGIN_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Login</title></head>\n"
    "<body><form id=\"form\" action=\"/medic/login\" method=\"POST\">"
    "<input name=\"user\"><input name=\"password\" type=\"password\">"
    "<button id=\"login\">Login</button></form></body></html>\n"
)
_MALFORMED = '{"messages": [{"id": "m1", "to": "+15550100", "content": "trunc'

_CHUNK = 1024 * 1024
_GZIP_BOMB_PREFIX = b'{"messages": []'
_GZIP_BOMB_SUFFIX = b"}"
_bomb_lock = threading.Lock()
_bomb_cache: dict[int, tuple[bytes, bytes, int, bytes]] = {}


def _gzip_bomb_parts(size: int) -> tuple[bytes, bytes, int, bytes]:
    """A gzip member inflating to `size` bytes of JSON, as (head, piece, repeat, tail).

    The stream is head + piece * repeat + tail. A full flush resets the compressor, so one
    compressed megabyte of spaces can be repeated without compressing it again.
    """
    with _bomb_lock:
        if size in _bomb_cache:
            return _bomb_cache[size]
        spaces = size - len(_GZIP_BOMB_PREFIX) - len(_GZIP_BOMB_SUFFIX)
        if spaces < 0:
            raise ValueError(f"gzip_bomb size must be at least {size - spaces}")
        repeat, rest = divmod(spaces, _CHUNK)
        chunk = b" " * _CHUNK
        comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        head = comp.compress(_GZIP_BOMB_PREFIX) + comp.flush(zlib.Z_FULL_FLUSH)
        piece = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
        if repeat:
            repeat -= 1  # the piece above already holds one chunk of the stream
            head += piece
        else:
            piece = b""
        tail_data = b" " * rest + _GZIP_BOMB_SUFFIX
        tail = comp.compress(tail_data) + comp.flush()
        crc = zlib.crc32(_GZIP_BOMB_PREFIX)
        for _ in range(repeat + (1 if piece else 0)):
            crc = zlib.crc32(chunk, crc)
        crc = zlib.crc32(tail_data, crc)
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, mtime 0
        tail += struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)
        parts = (header + head, piece, repeat, tail)
        _bomb_cache[size] = parts
        return parts


def _jsonable(value: Any) -> Any:
    """A deep copy that json.dumps accepts."""
    return json.loads(json.dumps(value, default=str))


def _accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding value allows gzip (q=0 refuses it)."""
    for item in (header or "").split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "localhost") or (
        address.startswith("::ffff:127.")
    )


def php_auth_hash(device_id: str, secret: str = PHP_DEFAULT_SECRET) -> str:
    """The `h` query value the multiOTP SMSGateway class expects for a device id."""
    digest = hashlib.md5((secret + "#salt@" + device_id).encode("utf-8"))  # noqa: S324
    return digest.hexdigest()[:6]


def _php_str(value: Any) -> str:
    """What PHP's string interpolation makes of a json_decode()d value."""
    if isinstance(value, bool):
        return "1" if value else ""
    if value is None:
        return ""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value).replace("e+", "E+").replace("e-", "E-")
    if isinstance(value, (list, dict)):
        return "Array"
    return str(value)


def _php_escape(content: str) -> str:
    """addcslashes($content, "\\\"\n"): backslash, double quote and newline, nothing else."""
    return content.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _php_uniqid() -> str:
    """An id as SMSGateway::sendMessage makes it: uniqid("", true) with "." -> "-"."""
    now = time.time()
    return f"{int(now):08x}{int(now % 1 * 1_000_000):05x}{random.random() * 10:.8f}".replace(
        ".", "-")


_PHP_NUMERIC = re.compile(r"[ \t\n\r\v\f]*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?[ \t\n\r\v\f]*")


def _php_loose_equal(a: str, b: str) -> bool:
    """PHP 8's `==` between strings: numerically when both are numeric ("0e1" == "00")."""
    if _PHP_NUMERIC.fullmatch(a) and _PHP_NUMERIC.fullmatch(b):
        with contextlib.suppress(ValueError, OverflowError):
            return float(a) == float(b)
    return a == b


def _php_loosely_null(value: Any) -> bool:
    """`null == $value` in PHP, for json_decode() results."""
    return value is None or value is False or value == 0 or value in ("", [], {})


def _has_lone_surrogate(value: Any) -> bool:
    """PHP's json_decode() refuses an escaped unpaired UTF-16 surrogate; Python keeps it."""
    if isinstance(value, str):
        return any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    return False


def _js_truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON.parse()d value ([] and {} are truthy)."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, str):
        return value != ""
    return True


def _js_key(value: Any) -> str:
    """The property name JavaScript makes of a value used as an object key."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join("" if v is None else _js_key(v) for v in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _cht_prefers_json(accept: str | None) -> bool:
    """server-utils wantsJSON: req.accepts(['text', 'json']) === 'json' (negotiator rules)."""
    if accept is None:
        return False  # no Accept header: the first offer, text
    ranges = []
    for order, item in enumerate(accept.split(",")):
        media, *params = item.strip().split(";")
        kind, _, sub = media.strip().lower().partition("/")
        if not kind:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append((kind, sub or "*", q, order))

    def best(kind: str, sub: str) -> tuple[float, int, int] | None:
        found = None
        for r_kind, r_sub, q, order in ranges:
            if r_kind not in ("*", kind) or r_sub not in ("*", sub):
                continue
            spec = (r_kind == kind) * 4 + (r_sub == sub) * 2
            if found is None or spec > found[1]:
                found = (q, spec, order)
        return found

    offers = []
    for index, (kind, sub) in enumerate((("text", "plain"), ("application", "json"))):
        match = best(kind, sub)
        if match is not None and match[0] > 0:
            offers.append((-match[0], -match[1], match[2], index))
    return bool(offers) and min(offers)[3] == 1


def _cht_is_human(user_agent: str | None) -> bool:
    """is-client-human.js: no User-Agent is an app; an Android app only if it says so."""
    if not user_agent:
        return False
    if user_agent.startswith("Dalvik/"):
        return not ("medic.gateway" in user_agent or ".collect.android" in user_agent)
    return True


def _cht_etag(body: bytes) -> str:
    """Express's weak ETag: W/"<length in hex>-<27 characters of base64 sha1>"."""
    digest = base64.b64encode(hashlib.sha1(body).digest()).decode()[:27]  # noqa: S324
    return f'W/"{len(body):x}-{digest}"'


def _node_escape(text: str) -> str:
    """Node's querystring.escape, as url.format() uses it for a query value."""
    return quote(text, safe="-_.!~*'()")


def _insert_bad_entry(items: list[Any], bad: Any) -> list[Any]:
    """The list with `bad` put among the good entries (in the middle, after the first)."""
    at = (len(items) + 1) // 2
    return [*items[:at], bad, *items[at:]]


class _Fault:
    def __init__(self, kind: str, params: dict[str, Any]) -> None:
        self.kind = kind
        self.params = params

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **_jsonable(self.params)}


class _HTTPProblem(Exception):
    """A request the endpoint refuses: answered with `status` and an error JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # stop() must not wait for handlers stuck in a slow client or a fault
    block_on_close = False
    app: ReferenceWebapp

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("testserver: error while handling a request", exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _ChtCrash(Exception):
    """What makes cht-core's handler throw: answered 500 "Server error"."""


class _PhpFatal(Exception):
    """An uncaught PHP error (a null byte in a file name): 500 with an empty body."""


_MISSING: Any = object()  # a JSON field that is absent (JavaScript's undefined)
_UNDECODABLE: Any = object()  # what json_decode() gives null for
_CHT_RANK = {"received-by-gateway": 1, "forwarded-by-gateway": 2, "sent": 3, "delivered": 4}


def _kind(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


class ReferenceWebapp:
    """The server side of the protocol, with state to inspect and faults to inject."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, username: str | None = None,
                 password: str | None = None, path: str | None = None,
                 strict_headers: bool = True, gzip_responses: bool = False,
                 batch_limit: int | None = None, debug: bool = False,
                 flavour: str = "reference", query: dict[str, str] | None = None,
                 php_device_timeout: float = PHP_DEVICE_TIMEOUT) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {flavour!r}; known: {', '.join(FLAVOURS)}")
        if path is None:
            path = DEFAULT_PATHS[flavour]
        if not path.startswith("/"):
            path = "/" + path
        bare = path.rstrip("/")
        if bare in (*CONTROL_PATHS, "/api", CHT_LOGIN_PATH) or path.startswith(
                REDIRECT_LOOP_PATH):
            raise ValueError(f"the endpoint path {path!r} collides with the control API")
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if batch_limit is not None and batch_limit < 1:
            raise ValueError("batch_limit must be at least 1")
        required = dict(query or {})
        if flavour == "php":
            required.setdefault("id", PHP_DEFAULT_DEVICE)
            required.setdefault("h", php_auth_hash(required["id"]))
            if not required["id"]:
                raise ValueError("the php flavour needs a device id in the query")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in required.items()):
            raise ValueError("query names and values must be strings")
        if php_device_timeout < 0:
            raise ValueError("php_device_timeout must not be negative")
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.path = path
        self.strict_headers = strict_headers
        self.gzip_responses = gzip_responses
        self.batch_limit = batch_limit
        self.debug = debug
        self.flavour = flavour
        self.query = required
        self.php_device_timeout = php_device_timeout
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._faults: list[_Fault] = []
        self._reset_state()

    # state -------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._queued: dict[str, dict[str, Any]] = {}
        self._awaiting: set[str] = set()
        self._offers: dict[str, int] = {}
        self._received: list[dict[str, Any]] = []
        self._received_ids: set[str] = set()
        self._updates: list[dict[str, Any]] = []
        self._statuses: dict[str, list[str]] = {}
        self._raw: list[dict[str, Any]] = []
        self._raw_bodies: list[bytes] = []  # every POST body as its bytes arrived
        self._violations: list[dict[str, Any]] = []
        self._problems: list[str] = []
        self._counters = dict.fromkeys(
            ("posts", "gets", "errors", "header_violations", "auth_failures", "bad_requests",
             "faults_served", "duplicate_messages", "redirects", "control", "rate_limited",
             "server_errors"), 0)
        # cht: message id -> {"state", "details", "history"}; incoming ids seen (as JSON)
        self._cht: dict[str, dict[str, Any]] = {}
        self._cht_seen: set[str] = set()
        self._cht_failures: dict[str, list[float]] = {}  # rate limiter: key -> [start, points]
        # php: message id -> its file in send/: {"stem", "ext", "mtime", "text", "history"}
        self._php: dict[str, dict[str, Any]] = {}
        self._php_received: dict[str, int] = {}  # receive/ file stem -> index in _received

    def reset(self) -> None:
        """Forget everything: queue, records, counters and pending faults."""
        with self._lock:
            self._reset_state()
            self._faults.clear()

    def queue(self, to: str, content: str, id: str | None = None) -> str:
        """Queue a message to offer on every POST until a status for it arrives.

        Queuing a known id again replaces its text and offers it again (cht: state
        pending; php: a new file ID.NEW). Without an id, one is made as the flavour's server
        makes it (php: uniqid; else a UUID).
        """
        if id is None:
            msg_id = _php_uniqid() if self.flavour == "php" else str(uuid.uuid4())
        else:
            msg_id = id
        with self._lock:
            self._queued[msg_id] = {"id": msg_id, "to": to, "content": content}
            self._offers.setdefault(msg_id, 0)
            self._awaiting.add(msg_id)
            if self.flavour == "cht":
                self._cht_set_state(msg_id, "pending", None, None)
            elif self.flavour == "php":
                # SMSGateway::sendMessage: pasted, only content escaped (and only \ " \n)
                text = (f'{{"id": "{msg_id}", "to": "{to}", '
                        f'"content": "{_php_escape(content)}"}}')
                old = self._php.pop(msg_id, None)
                self._php_drop_file(f"{msg_id}.NEW")
                self._php[msg_id] = {"msg_id": msg_id, "stem": msg_id, "ext": "NEW",
                                     "mtime": time.time(), "text": text,
                                     "history": [*(old["history"] if old else []),
                                                 f"{msg_id}.NEW"]}
        return msg_id

    def offer_again(self, id: str) -> None:
        """Offer a queued message again, although it has a status, until a new one arrives.

        cht: its state becomes pending again; php: its file becomes ID.NEW again.
        """
        with self._lock:
            if id not in self._queued:
                raise KeyError(f"no queued message with id {id!r}")
            self._awaiting.add(id)
            if self.flavour == "cht":
                self._cht_set_state(id, "pending", None, None)
            elif self.flavour == "php" and id in self._php:
                self._php_rename(self._php[id], self._php[id]["stem"], "NEW", time.time())

    def received(self) -> list[dict[str, Any]]:
        """Incoming SMS as the webapp kept them, in arrival order.

        reference: the first copy per id; cht: ids seen in an earlier request are ignored,
        a repeated id within one request is kept twice; php: one per file, the last copy.
        """
        with self._lock:
            return copy.deepcopy(self._received)

    def raw_bodies(self) -> list[bytes]:
        """Every POST body on the endpoint exactly as it arrived (still gzipped if it
        was), in order; faulted POSTs included."""
        with self._lock:
            return list(self._raw_bodies)

    def updates(self) -> list[dict[str, Any]]:
        """Every status update received, duplicates included, in order."""
        with self._lock:
            return copy.deepcopy(self._updates)

    def status_of(self, id: str) -> str | None:
        """The last status seen for a message id, or None."""
        with self._lock:
            seen = self._statuses.get(id)
            return seen[-1] if seen else None

    def statuses(self) -> dict[str, list[str]]:
        """Message id -> every status seen for it, in order."""
        with self._lock:
            return {k: list(v) for k, v in self._statuses.items()}

    def cht_state_of(self, id: str) -> str | None:
        """cht: the message's task state now ("pending", "forwarded-to-gateway", "sent"...)."""
        with self._lock:
            rec = self._cht.get(id)
            return rec["state"] if rec else None

    def cht_history(self, id: str) -> list[dict[str, Any]]:
        """cht: the task's state_history: {"state", "details"?, "post"} (post: POST number)."""
        with self._lock:
            rec = self._cht.get(id)
            return copy.deepcopy(rec["history"]) if rec else []

    def php_file_of(self, id: str) -> str | None:
        """php: the name of the message's file in send/ now ("ID.NEW", "ID.PUSHED", ...)."""
        with self._lock:
            rec = self._php.get(id)
            return f"{rec['stem']}.{rec['ext']}" if rec else None

    def php_history(self, id: str) -> list[str]:
        """php: every name the message's file has had, in order."""
        with self._lock:
            rec = self._php.get(id)
            return list(rec["history"]) if rec else []

    def snapshot(self) -> dict[str, Any]:
        """All the state as a JSON-able dict (what `GET /api/state` answers)."""
        with self._lock:
            queued = []
            for msg_id, msg in self._queued.items():
                item = {**msg, "offered": self._offers.get(msg_id, 0),
                        "awaiting_status": self._awaits(msg_id),
                        "statuses": list(self._statuses.get(msg_id, []))}
                if self.flavour == "cht":
                    item["cht_state"] = self.cht_state_of(msg_id)
                    item["cht_history"] = self.cht_history(msg_id)
                elif self.flavour == "php":
                    item["php_file"] = self.php_file_of(msg_id)
                    item["php_history"] = self.php_history(msg_id)
                queued.append(item)
            return _jsonable({
                "flavour": self.flavour,
                "url": self._bare_url() if self._server else None,
                "queued": queued,
                "received": self._received,
                "updates": self._updates,
                "statuses": self._statuses,
                "raw": self._raw,
                "header_violations": self._violations,
                "problems": self._problems,
                "faults": [f.describe() for f in self._faults],
                "counters": self._counters,
            })

    def set_fault(self, kind: str, count: int = 1, **params: Any) -> None:
        """Make the next `count` POSTs (after faults already set) misbehave as `kind`."""
        if kind not in FAULT_PARAMS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        unknown = set(params) - FAULT_PARAMS[kind]
        if unknown:
            raise ValueError(f"fault {kind!r} takes no parameter {', '.join(sorted(unknown))}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be a positive integer")
        if kind == "wrong_types" and "body" not in params:
            variant = params.get("variant", "messages_string")
            if variant not in WRONG_TYPE_VARIANTS:
                raise ValueError(f"unknown wrong_types variant {variant!r}; known: "
                                 f"{', '.join(WRONG_TYPE_VARIANTS)}")
        if kind == "bad_entry":
            variant = params.get("variant", DEFAULT_BAD_ENTRY)
            if variant not in BAD_ENTRY_VARIANTS:
                raise ValueError(f"unknown bad_entry variant {variant!r}; known: "
                                 f"{', '.join(BAD_ENTRY_VARIANTS)}")
        if kind in ("status", "redirect_loop") and "status" in params:
            status = params["status"]
            if isinstance(status, bool) or not isinstance(status, int) or not (
                100 <= status <= 599
            ):
                raise ValueError("status must be an HTTP status code")
        with self._lock:
            self._faults.extend(_Fault(kind, dict(params)) for _ in range(count))

    def clear_faults(self) -> None:
        """Drop the faults not served yet."""
        with self._lock:
            self._faults.clear()

    # life cycle --------------------------------------------------------------------
    def start(self) -> str:
        """Serve in a daemon thread; return the endpoint URL. After stop(), reuses the port."""
        if self._server is not None:
            return self.url
        self._stopping.clear()
        server_class = _Server6 if ":" in self.host else _Server
        server = server_class((self.host, self.port), _Handler)
        server.app = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"testserver:{self.port}", daemon=True)
        self._thread.start()
        logger.debug("testserver (%s) listening on %s", self.flavour, self.base_url + self.path)
        return self.url

    def stop(self) -> None:
        """Stop serving and cut every open connection, also one held by a fault."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> ReferenceWebapp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint URL, with user:password@ when auth is set, and the required query."""
        if self.username is None:
            return self._bare_url()
        creds = f"{quote(self.username, safe='')}:{quote(self.password or '', safe='')}@"
        return self._bare_url().replace("://", "://" + creds, 1)

    @property
    def base_url(self) -> str:
        """http://host:port without a path, for the control API."""
        if self.port == 0:
            raise RuntimeError("the server is not started")
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def _bare_url(self) -> str:
        query = f"?{urlencode(self.query)}" if self.query else ""
        return self.base_url + self.path + query

    # request handling helpers (called from handler threads) --------------------------
    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def _note(self, problem: str) -> None:
        with self._lock:
            self._problems.append(problem)

    def _next_fault(self) -> _Fault | None:
        with self._lock:
            if not self._faults:
                return None
            self._counters["faults_served"] += 1
            return self._faults.pop(0)

    def _awaits(self, msg_id: str) -> bool:
        """Whether the next answer would offer the message (limits aside)."""
        if self.flavour == "cht":
            return self.cht_state_of(msg_id) in CHT_OFFERED_STATES
        if self.flavour == "php":
            rec = self._php.get(msg_id)
            return rec is not None and rec["ext"] == "NEW"
        return msg_id in self._awaiting

    def _check_auth(self, header: str | None) -> bool:
        if self.username is None:
            return True
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode(
                "latin-1").partition(":")
        except (binascii.Error, ValueError):
            return False
        ok_user = hmac.compare_digest(user.encode("utf-8"), self.username.encode("utf-8"))
        ok_pass = hmac.compare_digest(password.encode("utf-8"),
                                      (self.password or "").encode("utf-8"))
        return bool(sep) and ok_user and ok_pass

    def _query_mismatch(self, query: str) -> str | None:
        """The first required query parameter missing or wrong in `query`, or None."""
        given = dict(parse_qsl(query, keep_blank_values=True))  # the last one wins, as in PHP
        for name, value in self.query.items():
            got = given.get(name)
            if got is None or not hmac.compare_digest(got.encode(), value.encode()):
                return name
        return None

    def _header_violations(self, method: str, headers: Any) -> list[dict[str, Any]]:
        found = []
        for name, expected in PROTOCOL_HEADERS.items():
            if name == "Content-Type" and method != "POST":
                continue
            values = headers.get_all(name) or []
            got = values[0].strip() if len(values) == 1 else values or None
            if got != expected:
                found.append({"method": method, "header": name, "expected": expected,
                              "got": got})
        if found:
            with self._lock:
                self._counters["header_violations"] += 1
                self._violations.extend(found)
        return found

    def _protocol_update_problems(self, update: Any) -> None:
        if not isinstance(update, dict):
            return
        msg_id, status = update.get("id"), update.get("status")
        if status not in STATUSES:
            self._problems.append(f"update for {msg_id!r}: unknown status {status!r}")
        elif status == "FAILED" and not update.get("reason"):
            self._problems.append(f"update for {msg_id!r}: FAILED without a reason")

    # reference flavour ---------------------------------------------------------------
    def _exchange(self, body: Any) -> list[dict[str, Any]]:
        """Record one POST body's messages and updates; return the messages to offer."""
        if not isinstance(body, dict):
            raise _HTTPProblem(400, "the request body must be a JSON object")
        lists = {}
        for field in ("messages", "updates"):
            value = body.get(field)
            if value is None:
                value = []
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise _HTTPProblem(400, f"{field} must be a list of objects")
            lists[field] = value
        with self._lock:
            for msg in lists["messages"]:
                self._record_incoming(msg)
            for update in lists["updates"]:
                self._record_update(update)
            offer = self._reference_offer()
            for msg in offer:
                self._offers[msg["id"]] += 1
            return copy.deepcopy(offer)

    def _reference_offer(self) -> list[dict[str, Any]]:
        offer = [self._queued[i] for i in self._queued if i in self._awaiting]
        if self.batch_limit is not None:
            offer = offer[: self.batch_limit]
        return offer

    def _record_incoming(self, msg: dict[str, Any]) -> None:
        msg_id = msg.get("id")
        problems = []
        if not isinstance(msg_id, str) or not msg_id:
            problems.append("no id")
        for field in ("from", "content"):
            if not isinstance(msg.get(field), str):
                problems.append(f"{field} is not a string")
        for field in ("sms_sent", "sms_received"):
            value = msg.get(field)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{field} is not an integer")
        if problems:
            self._problems.append(f"incoming message {msg_id!r}: {', '.join(problems)}")
        if "from" not in msg or "content" not in msg:
            return  # cht-core ignores these
        if isinstance(msg_id, str) and msg_id:
            if msg_id in self._received_ids:
                self._counters["duplicate_messages"] += 1
                return
            self._received_ids.add(msg_id)
        self._received.append(copy.deepcopy(msg))

    def _record_update(self, update: dict[str, Any]) -> None:
        self._updates.append(copy.deepcopy(update))
        msg_id, status = update.get("id"), update.get("status")
        self._protocol_update_problems(update)
        if not isinstance(msg_id, str) or not msg_id:
            self._problems.append(f"update without an id: {update!r}")
            return
        if msg_id not in self._queued:
            self._problems.append(f"update for {msg_id!r}: never queued here")
        self._statuses.setdefault(msg_id, []).append(str(status))
        self._awaiting.discard(msg_id)

    def _pending_answer(self) -> bytes:
        """The body a normal POST would get now, without counting it as an offer."""
        with self._lock:
            if self.flavour == "cht":
                return _compact({"messages": self._cht_offer()})
            if self.flavour == "php":
                return self._php_answer([rec["text"] for rec in self._php_new()])
            return json.dumps({"messages": self._reference_offer()}).encode("utf-8")

    # cht flavour: api/src/controllers/sms-gateway.js, services/messaging.js ------------
    def _cht_set_state(self, msg_id: str, state: str | None, details: Any,
                       post: int | None) -> bool:
        """task-utils setTaskState: no change only for the same state and no details."""
        rec = self._cht.setdefault(msg_id, {"state": None, "details": None, "history": []})
        last = rec["history"][-1]["state"] if rec["history"] else None
        if rec["state"] == state and last == state and not details:
            return False
        before = rec["state"]
        rec["state"], rec["details"] = state, details
        rec["history"].append({"state": state, **({"details": details} if details else {}),
                               "post": post})
        if _CHT_RANK.get(before, 0) > _CHT_RANK.get(state or "", 9):
            self._problems.append(f"cht: message {msg_id!r} went back from {before!r} to "
                                  f"{state!r} (statuses are applied in the order received)")
        return True

    def _cht_offer(self) -> list[dict[str, Any]]:
        limit = self.batch_limit or CHT_BATCH
        offer = [{"content": msg["content"], "to": msg["to"], "id": msg_id}
                 for msg_id, msg in self._queued.items()
                 if self._cht[msg_id]["state"] in CHT_OFFERED_STATES]
        return offer[:limit]

    def _cht_exchange(self, body: Any, post: int) -> list[dict[str, Any]]:
        """One POST as cht-core handles it: incoming, then updates, then the outgoing."""
        is_object = isinstance(body, dict)
        messages = body.get("messages", _MISSING) if is_object else _MISSING
        updates = body.get("updates", _MISSING) if is_object else _MISSING
        with self._lock:
            self._cht_incoming(messages)
            self._cht_updates(updates, post)
            offer = self._cht_offer()
            for msg in offer:  # markMessagesForwarded
                self._offers[msg["id"]] += 1
                self._cht_set_state(msg["id"], "forwarded-to-gateway", None, post)
            return copy.deepcopy(offer)

    def _cht_incoming(self, messages: Any) -> None:
        if messages is _MISSING:
            return  # processIncomingMessages(messages=[]): the default only for undefined
        if not isinstance(messages, list):
            raise _ChtCrash(f"messages is {_kind(messages)}: TypeError (messages.filter is not "
                            "a function); nothing of the request is used")
        kept = []
        for i, msg in enumerate(messages):
            if msg is None:
                raise _ChtCrash(f"messages[{i}] is null: TypeError (reading 'id' of null); "
                                "nothing of the request is used")
            for field in ("id", "content", "from"):  # validateRequiredFields
                value = msg.get(field, _MISSING) if isinstance(msg, dict) else _MISSING
                if value is _MISSING or not _js_truthy(value):
                    self._problems.append(
                        f"cht: incoming messages[{i}] ({_kind(msg)}) dropped silently: "
                        f"required field {field!r} is {_kind(value)} or empty")
                    break
            else:
                kept.append(msg)
        batch: list[str] = []
        for msg in kept:  # removeDuplicateMessages: against the database only
            key = json.dumps(msg["id"], sort_keys=True)
            if key in self._cht_seen:
                self._counters["duplicate_messages"] += 1
                continue
            if key in batch:
                self._problems.append(f"cht: incoming id {msg['id']!r} twice in one request: "
                                      "saved twice (only earlier requests are checked)")
            for field in ("id", "from", "content"):
                if not isinstance(msg[field], str):
                    self._problems.append(f"cht: incoming {msg['id']!r} kept although "
                                          f"{field} is {_kind(msg[field])}")
            batch.append(key)
            self._received.append(copy.deepcopy(msg))
        self._cht_seen.update(batch)

    def _cht_updates(self, updates: Any, post: int) -> None:
        if updates is _MISSING or not _js_truthy(updates):
            return  # `if (!req.body.updates)`
        if not isinstance(updates, list):
            raise _ChtCrash(f"updates is {_kind(updates)}: TypeError (updates.map is not a "
                            "function); the request's incoming SMS were saved, its updates "
                            "are lost")
        for i, update in enumerate(updates):
            if update is None:
                raise _ChtCrash(f"updates[{i}] is null: TypeError (reading 'id' of null); "
                                "no update of the request is applied, its incoming SMS "
                                "were saved")
        for i, update in enumerate(updates):  # mapStateFields, then in order
            self._updates.append(copy.deepcopy(update))
            self._protocol_update_problems(update)
            fields = update if isinstance(update, dict) else {}
            msg_id = fields.get("id", _MISSING)
            status = fields.get("status", _MISSING)
            name = "undefined" if status is _MISSING else _js_key(status)
            details: Any = None
            if name in CHT_STATUS_MAP:
                state: str | None = CHT_STATUS_MAP[name]
                if _js_truthy(fields.get("reason")):
                    details = {"reason": fields["reason"]}
                if not isinstance(status, str):
                    self._problems.append(f"cht: status {status!r} read as {name!r}")
            elif name in _JS_PROTOTYPE_NAMES:
                state = None
                self._problems.append(f"cht: status {name!r} maps to Object.prototype.{name}: "
                                      "the state becomes empty and the message is never "
                                      "offered again")
            else:
                state = "unrecognised"
                details = {"gateway_status": None if status is _MISSING else status}
            if isinstance(msg_id, str) and msg_id:
                self._statuses.setdefault(msg_id, []).append(str(status))
            if msg_id is _MISSING or not _js_truthy(msg_id):
                self._problems.append(f"cht: updates[{i}] skipped: Message id required")
                continue
            if not isinstance(msg_id, str) or msg_id not in self._cht:
                self._problems.append(f"cht: updates[{i}] skipped: Message not found: "
                                      f"{msg_id!r}")
                continue
            self._cht_set_state(msg_id, state, details, post)

    def _cht_client_keys(self, address: str, authorization: str | None) -> tuple[list[str], bool]:
        """The rate limiter's keys (ip, username, password) and whether it is a login."""
        keys = [address]
        user = ""
        if authorization and authorization.startswith("Basic "):
            token = (authorization.split(" ") + [""])[1]
            with contextlib.suppress(binascii.Error, ValueError):
                decoded = base64.b64decode(token + "=" * (-len(token) % 4)).decode(
                    "utf-8", "replace")
                user, _, rest = decoded.partition(":")
                password = rest.split(":")[0]
                keys += [k for k in (user, password) if k]
        return keys, bool(user)

    def _cht_limited(self, keys: list[str]) -> bool:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                rec = self._cht_failures.get(key)
                if rec and now < rec[0] + CHT_RATE_SECONDS and rec[1] >= CHT_RATE_POINTS:
                    return True
        return False

    def _cht_consume(self, keys: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                rec = self._cht_failures.get(key)
                if rec is None or now >= rec[0] + CHT_RATE_SECONDS:
                    rec = self._cht_failures[key] = [now, 0]
                rec[1] += 1

    def _cht_parse(self, headers: Any, raw: bytes) -> Any:
        """body-parser.json as cht-core configures it; failures become a 500."""
        media, _, params = (headers.get("Content-Type") or "").partition(";")
        if media.strip().lower() != "application/json":
            return {}  # not parsed at all: req.body is {}
        charset = "utf-8"
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "charset":
                charset = value.strip().strip('"').lower()
        encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
        data = raw
        if encoding in ("gzip", "deflate"):
            try:
                data = zlib.decompressobj(
                    16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
                ).decompress(raw, MAX_REQUEST_BODY + 1)
            except zlib.error as exc:
                raise _ChtCrash(f"the {encoding} body is corrupt ({exc})") from None
        elif encoding != "identity":
            raise _ChtCrash(f'unsupported content encoding "{encoding}"')
        if not charset.startswith("utf-"):
            raise _ChtCrash(f'unsupported charset "{charset.upper()}"')
        try:
            text = data.decode(charset, "replace")  # iconv-lite: bad bytes become U+FFFD
        except LookupError:
            raise _ChtCrash(f'unsupported charset "{charset.upper()}"') from None
        text = text.removeprefix("\ufeff")
        if not text:
            return {}
        first = text.lstrip(" \t\n\r")[:1]
        if first not in ("{", "["):
            raise _ChtCrash(f"the body does not start with {{ or [ (strict JSON): {first!r}")
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            raise _ChtCrash(f"the body is not JSON: {exc}") from None

    # php flavour: multiOTP SMSGateway, src/SMSGateway.php --------------------------------
    def _php_drop_file(self, name: str) -> None:
        """A rename onto an existing file replaces it: that message's file is gone."""
        for msg_id, rec in list(self._php.items()):
            if f"{rec['stem']}.{rec['ext']}" == name:
                del self._php[msg_id]
                self._problems.append(f"php: the file of message {msg_id!r} was replaced by "
                                      f"another one named {name}")

    def _php_rename(self, rec: dict[str, Any], stem: str, ext: str, now: float) -> None:
        name = f"{stem}.{ext}"
        if name != f"{rec['stem']}.{rec['ext']}":
            for msg_id, other in list(self._php.items()):
                if other is not rec and f"{other['stem']}.{other['ext']}" == name:
                    del self._php[msg_id]
                    self._problems.append(f"php: renaming onto {name} replaced the file of "
                                          f"message {msg_id!r}")
        rec["stem"], rec["ext"], rec["mtime"] = stem, ext, now
        rec["history"].append(name)

    def _php_new(self) -> list[dict[str, Any]]:
        """glob("*.NEW") sorted by filemtime (whole seconds), glob's name order for ties."""
        files = [rec for rec in self._php.values() if rec["ext"] == "NEW"]
        files.sort(key=lambda r: (math.floor(r["mtime"]), f"{r['stem']}.{r['ext']}"))
        return files[: self.batch_limit] if self.batch_limit else files

    @staticmethod
    def _php_answer(texts: list[str]) -> bytes:
        """getMessagesToSend: "{", the stored texts pasted into "messages", "}"."""
        inner = f'"messages": [{",".join(texts)}]' if texts else ""
        return ("{" + inner + "}").encode("utf-8")

    def _php_decode(self, raw: bytes, encoding: str | None) -> Any:
        """json_decode(str_replace("\\r", "", $post_data), true), or _UNDECODABLE."""
        gzipped = (encoding or "").strip().lower() in ("gzip", "x-gzip", "deflate")
        try:
            data = json.loads(raw.replace(b"\r", b"").decode("utf-8"),
                              parse_constant=_reject_constant)
            if _has_lone_surrogate(data):
                raise ValueError("an unpaired UTF-16 surrogate")
        except ValueError as exc:
            why = ("it is compressed (Content-Encoding " + (encoding or "").strip() +
                   ") and PHP reads the raw body") if gzipped else str(exc)
            self._problems.append(f"php: json_decode() gives null ({why}): the request's "
                                  "messages and updates are lost, and the answer is 200")
            return _UNDECODABLE
        return data

    def _php_entries(self, data: Any, field: str) -> list[Any]:
        """What `foreach ($extract_data[field] as ...)` iterates over."""
        if _php_loosely_null(data) or not isinstance(data, dict):
            return []
        value = data.get(field)
        if value is None:
            return []  # isset() is false
        if isinstance(value, dict):
            self._problems.append(f"php: {field} is an object: PHP iterates over its values")
            return list(value.values())
        if not isinstance(value, list):
            self._problems.append(f"php: {field} is {_kind(value)}: foreach() warns and "
                                  "nothing is used")
            return []
        return value

    def _php_exchange(self, raw: bytes, encoding: str | None) -> tuple[list[str], list[str]]:
        """apiServer() with a body: handleMessages, handleUpdates, reactivate, answer."""
        with self._lock:
            data = self._php_decode(raw, encoding)
            now = time.time()
            if data is not _UNDECODABLE:
                self._php_messages(data)
                self._php_updates(data, now)
            if self.php_device_timeout > 0:  # reactivatePushedMessages
                for rec in list(self._php.values()):
                    if rec["ext"] == "PUSHED" and now > rec["mtime"] + self.php_device_timeout:
                        self._php_rename(rec, rec["stem"], "NEW", now)
            files = self._php_new()
            texts = [rec["text"] for rec in files]
            ids = [rec["msg_id"] for rec in files]
            for rec in files:  # marked handed over at once
                self._offers[rec["msg_id"]] = self._offers.get(rec["msg_id"], 0) + 1
                self._php_rename(rec, rec["stem"], "PUSHED", now)
            return texts, ids

    def _php_messages(self, data: Any) -> None:
        for i, msg in enumerate(self._php_entries(data, "messages")):
            if not isinstance(msg, dict) or msg.get("id") is None:
                self._problems.append(f"php: messages[{i}] ({_kind(msg)}) skipped: no id")
                continue
            stem = _php_str(msg["id"])
            if "\0" in stem:
                raise _PhpFatal(f"messages[{i}]: the id has a null byte: file_put_contents() "
                                "throws; the whole request fails")
            for field in ("id", "from", "content"):
                value = msg.get(field, _MISSING)
                if not isinstance(value, str):
                    stored = _php_str(None if value is _MISSING else value)
                    self._problems.append(f"php: incoming {stem!r}: {field} is {_kind(value)}, "
                                          f"stored as {stored!r}")
            if "/" in stem:
                self._problems.append(f"php: incoming {stem!r}: the id is a path: the file is "
                                      "written elsewhere or not at all (lost)")
                continue
            if stem in self._php_received:  # receive/ID.UNREAD is overwritten
                self._counters["duplicate_messages"] += 1
                self._received[self._php_received[stem]] = copy.deepcopy(msg)
            else:
                self._php_received[stem] = len(self._received)
                self._received.append(copy.deepcopy(msg))

    def _php_updates(self, data: Any, now: float) -> None:
        for i, update in enumerate(self._php_entries(data, "updates")):
            if not isinstance(update, dict) or update.get("id") is None or update.get(
                    "status") is None:
                self._problems.append(f"php: updates[{i}] ({_kind(update)}) skipped: no id "
                                      "or no status")
                continue
            self._updates.append(copy.deepcopy(update))
            self._protocol_update_problems(update)
            stem, status = _php_str(update["id"]), _php_str(update["status"])
            if "\0" in stem or "\0" in status:
                raise _PhpFatal(f"updates[{i}]: a null byte in a file name: glob() or rename() "
                                "throws; the whole request fails")
            if isinstance(update["id"], str):
                self._statuses.setdefault(update["id"], []).append(status)
            pattern = f"{stem}.*"
            matches = [] if "/" in stem else [
                rec for rec in self._php.values()
                if fnmatch.fnmatchcase(f"{rec['stem']}.{rec['ext']}", pattern)]
            if len(matches) != 1:
                self._problems.append(f"php: update {stem!r} ignored: {len(matches)} files match "
                                      f"the glob {pattern}")
                continue
            rec = matches[0]
            if "/" in status:
                self._problems.append(f"php: update {stem!r}: rename() to {stem}.{status} "
                                      "fails (another folder): unchanged")
                continue
            if stem != rec["stem"]:
                self._problems.append(f"php: update {stem!r} renamed file {rec['stem']}."
                                      f"{rec['ext']} to {stem}.{status}")
            self._php_rename(rec, stem, status, now)
            if status not in STATUSES:
                effect = {"NEW": "it is offered again on the next POST",
                          "PUSHED": "it is offered again after the device timeout"}.get(
                    status, "it is never offered again (only ID.NEW files are)")
                self._problems.append(f"php: status {status!r} is not a spec word: the file "
                                      f"is renamed {stem}.{status}; {effect}")

    def _log_raw(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._raw.append(entry)
        return entry

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


def _compact(obj: Any) -> bytes:
    """JSON.stringify: no spaces, non-ASCII as is, an unpaired surrogate escaped."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms stall
    server_version = "smsgw-testserver"
    sys_version = ""
    timeout = 30  # idle keep-alive connections and stalled readers give up
    server: _Server

    @property
    def app(self) -> ReferenceWebapp:
        return self.server.app

    def setup(self) -> None:
        super().setup()
        self.app._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.app._track(self.connection, False)

    # quiet unless debug; the query may carry a secret, so it is never logged
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.app.debug:
            logger.info("testserver: %s %s -> %s", self.command, self.path.partition("?")[0],
                        code)

    def log_message(self, format: str, *args: Any) -> None:
        if self.app.debug:
            logger.info("testserver: %s", "request could not be parsed")

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def do_DELETE(self) -> None:
        self._route()

    def do_PATCH(self) -> None:
        self._route()

    def _route(self) -> None:
        path, _, self._query = self.path.partition("?")
        self._endpoint = False
        flavour = self.app.flavour
        try:
            if path.rstrip("/") == self.app.path.rstrip("/"):
                self._endpoint = True
                if flavour == "php":
                    # apiServer() ignores the method: a request with a body is an exchange
                    if self.command == "GET" and not self._has_body():
                        self._handshake_php()
                    else:
                        self._post()
                elif self.command == "GET":
                    self._handshake_cht() if flavour == "cht" else self._handshake()
                elif self.command == "POST":
                    self._post()
                else:
                    self._discard_body()
                    self._send_json(405, {"error": True, "message": "use GET or POST"},
                                    headers={"Allow": "GET, POST"})
            elif path == REDIRECT_LOOP_PATH:
                self._discard_body()
                self.app._count("redirects")
                self._redirect(302)
            elif flavour == "cht" and path == CHT_LOGIN_PATH and self.command == "GET":
                self._send_bytes(200, _CHT_LOGIN_PAGE.encode(), "text/html; charset=UTF-8")
            elif path.startswith("/api/"):
                self._control(path)
            else:
                self._discard_body()
                self._send_json(404, {"error": True, "message": "not found"})
        except (TimeoutError, ConnectionError):
            self.close_connection = True
        except Exception:
            logger.exception("testserver: bug while handling %s %s", self.command,
                             self.path.partition("?")[0])
            self.close_connection = True

    def _has_body(self) -> bool:
        length = self.headers.get("Content-Length", "0").strip()
        return "Transfer-Encoding" in self.headers or (length.isdigit() and int(length) > 0)

    # endpoint ----------------------------------------------------------------------
    def _handshake(self) -> None:
        self.app._count("gets")
        if not self._authorised():
            return
        problems = self.app._header_violations("GET", self.headers)
        if problems and self.app.strict_headers:
            self._send_json(400, {"error": True, "message": _violation_text(problems)})
            return
        self._send_json(200, {"medic-gateway": True}, may_gzip=True)

    def _post(self) -> None:
        app = self.app
        with app._lock:
            app._counters["posts"] += 1
            number = app._counters["posts"]
        entry = app._log_raw({
            "n": number,
            "time": time.time(),
            "headers": {k: v for k, v in self.headers.items()
                        if k.lower() not in ("authorization", "cookie")},
            "fault": None, "body": None, "status": None,
        })
        try:
            raw = self._read_body()
        except _HTTPProblem as problem:
            self._fail(entry, problem)
            return
        fault = app._next_fault()
        with app._lock:
            app._raw_bodies.append(raw)
            entry["fault"] = fault.kind if fault else None
            entry["body"] = _best_effort_json(raw, self.headers.get("Content-Encoding"))
        if fault is not None and fault.kind not in ("slow", "bad_entry"):
            self._serve_fault(fault, entry)
            return
        bad = _MISSING
        if fault is not None and fault.kind == "slow" and app._stopping.wait(
                float(fault.params.get("seconds", 2))):
            self.close_connection = True
            return
        if fault is not None and fault.kind == "bad_entry":
            variant = fault.params.get("variant", DEFAULT_BAD_ENTRY)
            bad = copy.deepcopy(BAD_ENTRY_VARIANTS[variant])
            with app._lock:
                entry["bad_entry"] = variant
        if app.flavour == "cht":
            self._post_cht(entry, raw, bad)
            return
        if app.flavour == "php":
            self._post_php(entry, raw, bad)
            return
        try:
            if not self._authorised():
                with app._lock:
                    entry["status"] = 401
                return
            problems = app._header_violations("POST", self.headers)
            if problems and app.strict_headers:
                raise _HTTPProblem(400, _violation_text(problems))
            body = self._decode(raw)
            offer: list[Any] = app._exchange(body)
        except _HTTPProblem as problem:
            self._fail(entry, problem)
            return
        with app._lock:
            entry["status"] = 200
            entry["offered"] = [m["id"] for m in offer]
        if bad is not _MISSING:
            offer = _insert_bad_entry(offer, bad)
        self._send_json(200, {"messages": offer}, may_gzip=True)

    def _fail(self, entry: dict[str, Any], problem: _HTTPProblem) -> None:
        with self.app._lock:
            entry["status"] = problem.status
            entry["error"] = problem.message
            self.app._counters["bad_requests"] += 1
        if self.app.flavour == "cht":
            if problem.status == 413:
                self._cht_respond(413, "Payload Too Large")
            else:  # Node's HTTP parser: a bare 400 and the connection closed
                self.close_connection = True
                self._send_bytes(problem.status, b"", "text/plain")
        elif self.app.flavour == "php":
            self._send_bytes(problem.status, b"", PHP_CONTENT_TYPE)
        else:
            self._send_json(problem.status, {"error": True, "message": problem.message})

    def _authorised(self) -> bool:
        if not self.app._check_auth(self.headers.get("Authorization")):
            self.app._count("auth_failures")
            self._send_json(401, {"error": True, "message": "Unauthorized"},
                            headers={"WWW-Authenticate": 'Basic realm="smsgw testserver"'})
            return False
        if self.app.flavour == "php":
            return True  # the query is the PHP class's business
        wrong = self.app._query_mismatch(self._query)
        if wrong is None:
            return True
        self.app._count("auth_failures")
        self._send_json(401, {"error": True,
                              "message": f"missing or wrong query parameter {wrong!r}"})
        return False

    # cht flavour ---------------------------------------------------------------------
    def _cht_keys(self) -> tuple[list[str], bool]:
        return self.app._cht_client_keys(self.client_address[0],
                                         self.headers.get("Authorization"))

    def _cht_rate_limited(self, entry: dict[str, Any] | None) -> bool:
        """rate-limiter.js: a login (Basic username) from a limited key gets 429."""
        keys, logging_in = self._cht_keys()
        if not logging_in or not self.app._cht_limited(keys):
            return False
        self.app._count("rate_limited")
        if entry is not None:
            with self.app._lock:
                entry["status"] = 429
        self._cht_respond(429, "Too Many Requests")
        return True

    def _cht_authorised(self, entry: dict[str, Any] | None) -> bool:
        """auth.check(req, 'can_access_gateway_api') and serverUtils.notLoggedIn."""
        app = self.app
        if app._check_auth(self.headers.get("Authorization")) and (
                app._query_mismatch(self._query) is None):
            return True
        app._count("auth_failures")
        headers = {"logout-authorization": "CHT-Core API"}
        if _cht_prefers_json(self.headers.get("Accept")):
            status = 401
            self._cht_send(401, _compact({"code": 401, "error": "unauthorized"}),
                           "application/json; charset=utf-8", headers)
        elif _cht_is_human(self.headers.get("User-Agent")):
            status = 302
            app._count("redirects")
            location = f"{CHT_LOGIN_PATH}?redirect={_node_escape(re.sub('/+', '/', self.path))}"
            headers.update({"Location": location,
                            "Set-Cookie": "login=force; Path=/; SameSite=Lax"})
            self._cht_send(302, f"Found. Redirecting to {location}".encode(),
                           "text/plain; charset=utf-8", headers)
        else:
            status = 401
            headers["WWW-Authenticate"] = _CHT_BASIC_REALM
            self._cht_send(401, b"not logged in", "text/plain", headers)
        if entry is not None:
            with app._lock:
                entry["status"] = status
        return False

    def _handshake_cht(self) -> None:
        self.app._count("gets")
        self.app._header_violations("GET", self.headers)  # recorded, never refused
        if self._cht_rate_limited(None) or not self._cht_authorised(None):
            return
        self._cht_send(200, _compact({"medic-gateway": True}), "application/json; charset=utf-8",
                       etag=True)

    def _post_cht(self, entry: dict[str, Any], raw: bytes, bad: Any) -> None:
        app = self.app
        app._header_violations("POST", self.headers)  # recorded; only Content-Type matters
        if self._cht_rate_limited(entry):
            return
        try:
            body = app._cht_parse(self.headers, raw)
        except _ChtCrash as crash:
            self._cht_crash(entry, f"cht: POST {entry['n']}: body-parser: {crash}")
            return
        content_type = self.headers.get("Content-Type")
        if content_type is None or content_type.strip() != "application/json":
            with app._lock:
                entry["status"] = 400
                entry["error"] = "Content-Type must be application/json"
                app._counters["bad_requests"] += 1
            self._cht_respond(400, "Content-Type must be application/json")
            return
        if not self._cht_authorised(entry):
            return
        try:
            offer: list[Any] = app._cht_exchange(body, entry["n"])
        except _ChtCrash as crash:
            self._cht_crash(entry, f"cht: POST {entry['n']}: {crash}")
            return
        with app._lock:
            entry["status"] = 200
            entry["offered"] = [m["id"] for m in offer]
        if bad is not _MISSING:
            offer = _insert_bad_entry(offer, bad)
        self._cht_send(200, _compact({"messages": offer}), "application/json; charset=utf-8",
                       etag=True)

    def _cht_crash(self, entry: dict[str, Any], problem: str) -> None:
        app = self.app
        with app._lock:
            app._problems.append(problem)
            app._counters["server_errors"] += 1
            entry["status"] = 500
            entry["error"] = problem
        self._cht_respond(500, "Server error")

    def _cht_respond(self, status: int, message: str) -> None:
        """server-utils respond(): JSON {code, error} if the client prefers it, else text."""
        if _cht_prefers_json(self.headers.get("Accept")):
            self._cht_send(status, _compact({"code": status, "error": message}),
                           "application/json; charset=utf-8")
        else:
            self._cht_send(status, message.encode(), "text/plain")

    def _cht_send(self, status: int, body: bytes, content_type: str,
                  headers: dict[str, str] | None = None, *, etag: bool = False) -> None:
        """Express and its compression middleware: gzip (chunked) from 1 KiB."""
        extra = dict(headers or {})
        if etag:
            extra["ETag"] = _cht_etag(body)
        if status in (401, 429):  # the rate limiter counts failed logins as they finish
            self.app._cht_consume(self._cht_keys()[0])
        extra["Vary"] = "Accept-Encoding"
        if len(body) < CHT_COMPRESS_THRESHOLD or not _accepts_gzip(
                self.headers.get("Accept-Encoding")):
            self._send_bytes(status, body, content_type, headers=extra)
            return
        data = gzip.compress(body, mtime=0)
        if self._endpoint and status >= 400:
            self.app._count("errors")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")

    # php flavour ---------------------------------------------------------------------
    def _php_refused(self, entry: dict[str, Any] | None) -> bool:
        """Basic auth if set (the web server's), then apiServer()'s ?id=&h= check."""
        app = self.app
        if not self._authorised():
            if entry is not None:
                with app._lock:
                    entry["status"] = 401
            return True
        given = dict(parse_qsl(self._query, keep_blank_values=True))
        device = given.get("id", "")
        status = 0
        if device == "":
            status = 404
        elif not _php_loose_equal(given.get("h", ""), php_auth_hash(device)) or (
                any(given.get(k) != v for k, v in app.query.items() if k not in ("id", "h"))):
            status = 401
        elif device != app.query["id"]:
            app._note(f"php: device {device!r} has a valid hash but is not the one this "
                      f"testserver serves ({app.query['id']!r}): answered as an empty device")
            status = -1
        if status > 0:
            app._count("auth_failures")
            if entry is not None:
                with app._lock:
                    entry["status"] = status
            self._send_bytes(status, b"", PHP_CONTENT_TYPE)
            return True
        if status < 0:
            body = b"{}" if entry is not None else b'{"medic-gateway": true}'
            self._send_bytes(200, body, PHP_CONTENT_TYPE)
            return True
        return False

    def _handshake_php(self) -> None:
        self.app._count("gets")
        self.app._header_violations("GET", self.headers)
        if not self._php_refused(None):
            self._send_bytes(200, b'{"medic-gateway": true}', PHP_CONTENT_TYPE, may_gzip=True)

    def _post_php(self, entry: dict[str, Any], raw: bytes, bad: Any) -> None:
        app = self.app
        app._header_violations("POST", self.headers)  # recorded, never refused
        if self._php_refused(entry):
            return
        if raw in (b"", b"0"):  # empty($post_data): the handshake answer
            with app._lock:
                entry["status"] = 200
            self._send_bytes(200, b'{"medic-gateway": true}', PHP_CONTENT_TYPE, may_gzip=True)
            return
        try:
            texts, ids = app._php_exchange(raw, self.headers.get("Content-Encoding"))
        except _PhpFatal as fatal:
            with app._lock:
                app._problems.append(f"php: POST {entry['n']}: {fatal}")
                app._counters["server_errors"] += 1
                entry["status"] = 500
            self._send_bytes(500, b"", PHP_CONTENT_TYPE)
            return
        with app._lock:
            entry["status"] = 200
            entry["offered"] = ids
        if bad is not _MISSING:
            texts = _insert_bad_entry(texts, json.dumps(bad))
        self._send_bytes(200, app._php_answer(texts), PHP_CONTENT_TYPE, may_gzip=True)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            raise _HTTPProblem(400, "bad Content-Length") from None
        if size < 0 or size > MAX_REQUEST_BODY:
            self.close_connection = True
            raise _HTTPProblem(413, "request body too large")
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise _HTTPProblem(400, "bad chunked encoding") from None
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass  # trailers
                return bytes(data)
            if len(data) + size > MAX_REQUEST_BODY:
                self.close_connection = True
                raise _HTTPProblem(413, "request body too large")
            data += self.rfile.read(size)
            self.rfile.readline(1024)

    def _discard_body(self) -> None:
        with contextlib.suppress(_HTTPProblem):
            self._read_body()

    def _decode(self, raw: bytes) -> Any:
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            raw = _gunzip(raw)
        elif encoding not in ("", "identity"):
            raise _HTTPProblem(415, f"unsupported Content-Encoding {encoding!r}")
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise _HTTPProblem(400, "the request body is not UTF-8") from None
        except ValueError as exc:
            raise _HTTPProblem(400, f"the request body is not valid JSON: {exc}") from None

    # responses ---------------------------------------------------------------------
    def _send_json(self, status: int, obj: Any, *, may_gzip: bool = False,
                   headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(obj).encode("utf-8"),
                         "application/json; charset=utf-8", may_gzip=may_gzip, headers=headers)

    def _send_bytes(self, status: int, body: bytes, content_type: str, *,
                    may_gzip: bool = False, headers: dict[str, str] | None = None) -> None:
        extra = dict(headers or {})
        if may_gzip and self.app.gzip_responses:
            extra["Vary"] = "Accept-Encoding"
            if _accepts_gzip(self.headers.get("Accept-Encoding")):
                body = gzip.compress(body, mtime=0)
                extra["Content-Encoding"] = "gzip"
        if self._endpoint and status >= 400:
            self.app._count("errors")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, status: int) -> None:
        location = REDIRECT_LOOP_PATH + (f"?{self._query}" if self._query else "")
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _abort(self) -> None:
        """Close the connection with a TCP reset."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        for stream in (self.wfile, self.rfile):
            with contextlib.suppress(OSError):
                stream.close()
        with contextlib.suppress(OSError):
            self.connection.close()

    def _serve_fault(self, fault: _Fault, entry: dict[str, Any]) -> None:
        kind, params = fault.kind, fault.params
        status = 200
        if kind == "status":
            status = int(params.get("status", 500))
            body = params.get("body")
            if body is None:
                body = {"error": True, "message": f"injected fault: HTTP {status}"}
            data, ctype = _body_bytes(body, params.get("content_type"))
            headers = {str(k): str(v) for k, v in (params.get("headers") or {}).items()}
            self._send_bytes(status, data, ctype, headers=headers)
        elif kind in ("html", "malformed", "wrong_types"):
            default: Any = {"html": _HTML_PAGE, "malformed": _MALFORMED}.get(kind)
            if kind == "wrong_types":
                default = WRONG_TYPE_VARIANTS[params.get("variant", "messages_string")]
            content_type = "text/html; charset=utf-8" if kind == "html" else (
                "application/json; charset=utf-8")
            data, ctype = _body_bytes(params.get("body", default), content_type)
            self._send_bytes(200, data, ctype)
        elif kind == "timeout":
            status = 0
            self.app._stopping.wait(float(params.get("seconds", 60)))
            self._abort()
        elif kind == "reset":
            body = self.app._pending_answer()
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self._abort()
        elif kind == "huge":
            self._stream_huge(int(params.get("size", 50 * 1024 * 1024)))
        elif kind == "gzip_bomb":
            self._stream_gzip_bomb(int(params.get("size", 1_100_000_000)))
        elif kind == "redirect_loop":
            status = int(params.get("status", 302))
            self.app._count("redirects")
            self._redirect(status)
        with self.app._lock:
            entry["status"] = status or None

    def _stream_huge(self, size: int) -> None:
        head, tail = b'{"messages": [], "padding": "', b'"}'
        filler = max(size - len(head) - len(tail), 0)
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(head) + filler + len(tail)))
        self.end_headers()
        self.wfile.write(head)
        block = b"x" * min(_CHUNK, max(filler, 1))
        left = filler
        while left > 0 and not self.app._stopping.is_set():
            n = min(left, len(block))
            self.wfile.write(block[:n] if n < len(block) else block)
            left -= n
        if left:
            self._abort()
            return
        self.wfile.write(tail)

    def _stream_gzip_bomb(self, size: int) -> None:
        head, piece, repeat, tail = _gzip_bomb_parts(size)
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(head) + len(piece) * repeat + len(tail)))
        self.end_headers()
        for part in _bomb_stream(head, piece, repeat, tail):
            if self.app._stopping.is_set():
                self._abort()
                return
            self.wfile.write(part)

    # control API -------------------------------------------------------------------
    def _control(self, path: str) -> None:
        app = self.app
        app._count("control")
        try:
            raw = self._read_body()
        except _HTTPProblem as problem:
            self._send_json(problem.status, {"error": True, "message": problem.message})
            return
        if not _is_loopback(self.client_address[0]):
            self._send_json(403, {"error": True, "message": "the control API answers only "
                                  "clients on 127.0.0.1"})
            return
        route = (self.command, path.rstrip("/"))
        try:
            args = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("the body must be a JSON object")
            if route == ("GET", "/api/state"):
                self._send_json(200, app.snapshot())
            elif route == ("POST", "/api/queue"):
                msg_id = app.queue(args["to"], args["content"], id=args.get("id"))
                self._send_json(200, {"id": msg_id})
            elif route == ("POST", "/api/faults"):
                params = {k: v for k, v in args.items() if k not in ("kind", "count")}
                app.set_fault(args["kind"], args.get("count", 1), **params)
                self._send_json(200, {"faults": app.snapshot()["faults"]})
            elif route == ("DELETE", "/api/faults"):
                app.clear_faults()
                self._send_json(200, {"faults": []})
            elif route == ("POST", "/api/offer_again"):
                app.offer_again(args["id"])
                self._send_json(200, {"id": args["id"]})
            elif route == ("POST", "/api/reset"):
                app.reset()
                self._send_json(200, {"reset": True})
            else:
                self._send_json(404, {"error": True, "message": f"no {route[0]} {route[1]}"})
        except KeyError as exc:
            self._send_json(400, {"error": True, "message": f"missing or unknown: {exc}"})
        except (ValueError, TypeError) as exc:
            self._send_json(400, {"error": True, "message": str(exc)})


def _bomb_stream(head: bytes, piece: bytes, repeat: int, tail: bytes) -> Iterator[bytes]:
    yield head
    batch = max(1, 64 * 1024 // max(len(piece), 1))  # write ~64 KiB at a time
    whole, rest = divmod(repeat, batch)
    block = piece * batch
    for _ in range(whole):
        yield block
    if rest:
        yield piece * rest
    yield tail


def _gunzip(raw: bytes) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(raw, MAX_REQUEST_BODY)
    except zlib.error as exc:
        raise _HTTPProblem(400, f"the gzip request body is corrupt: {exc}") from None
    if inflater.unconsumed_tail:
        raise _HTTPProblem(413, "the gzip request body inflates too much")
    return data


def _best_effort_json(raw: bytes, encoding: str | None) -> Any:
    """The body for the raw log: parsed JSON if possible, else the start of its text."""
    try:
        if (encoding or "").strip().lower() in ("gzip", "x-gzip"):
            raw = _gunzip(raw)
        return json.loads(raw.decode("utf-8"))
    except (_HTTPProblem, ValueError):
        return {"unparsed": raw[:2000].decode("utf-8", "replace")}


def _body_bytes(body: Any, content_type: str | None) -> tuple[bytes, str]:
    if isinstance(body, bytes):
        return body, content_type or "application/octet-stream"
    if isinstance(body, str):
        guess = "text/html; charset=utf-8" if body.lstrip().startswith("<") else (
            "text/plain; charset=utf-8")
        return body.encode("utf-8"), content_type or guess
    return json.dumps(body).encode("utf-8"), content_type or "application/json; charset=utf-8"


def _violation_text(problems: list[dict[str, Any]]) -> str:
    return "; ".join(f"header {p['header']}: expected {p['expected']!r}, got {p['got']!r}"
                     for p in problems)


def _listen_error(host: str, port: int, exc: OSError) -> str:
    """Why the test webapp cannot listen on host:port, and what to do."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use: pick another port with --port"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied: pick a port above 1023 with --port"
    if exc.errno in (errno.EADDRNOTAVAIL, socket.EAI_NONAME) or isinstance(exc, socket.gaierror):
        return (f"cannot listen on {where}: {exc.strerror or exc}: give an address of this "
                "machine with --host (e.g. 127.0.0.1)")
    return f"cannot listen on {where}: {exc.strerror or exc}"


def serve(host: str = "127.0.0.1", port: int = 0, *, username: str | None = None,
          password: str | None = None, path: str | None = None,
          strict_headers: bool = True, gzip_responses: bool = False,
          batch_limit: int | None = None, debug: bool = False, flavour: str = "reference",
          query: dict[str, str] | None = None,
          php_device_timeout: float = PHP_DEVICE_TIMEOUT,
          out: IO[str] | None = None, stop_event: threading.Event | None = None) -> None:
    """Serve the reference webapp until Ctrl-C (or `stop_event`), binding only to `host`.

    `flavour` is "reference", "cht" or "php" (see the module's documentation); `path`
    defaults to the flavour's (/api/sms for cht, else /smsgateway/). Prints the endpoint URL
    (first line, password and query values hidden) and the control API once; for php also
    the query to configure, whose hash is no secret (the class's default secret).
    """
    out = out or sys.stdout
    app = ReferenceWebapp(host, port, username=username, password=password, path=path,
                          strict_headers=strict_headers, gzip_responses=gzip_responses,
                          batch_limit=batch_limit, debug=debug, flavour=flavour, query=query,
                          php_device_timeout=php_device_timeout)
    try:
        url = app.start()
    except OSError as exc:
        raise UserError(_listen_error(host, port, exc)) from None
    base = app.base_url
    title = "Reference webapp" if flavour == "reference" else f"Reference webapp ({flavour})"
    lines = [f"{title} listening on {redact_url(url)}"]
    if flavour == "php":
        lines.append(f"  query for the device: ?{urlencode(app.query)} (hash of the PHP class's "
                     f"default secret {PHP_DEFAULT_SECRET!r})")
    lines += [
        "Control API (no auth; answers clients on 127.0.0.1 only):",
        f"  POST   {base}/api/queue        {{\"to\": \"+15550100\", \"content\": \"hi\", "
        "\"id\": \"optional\"}",
        f"  GET    {base}/api/state",
        f"  POST   {base}/api/faults       {{\"kind\": \"status\", \"count\": 1, "
        "\"status\": 500}",
        f"  DELETE {base}/api/faults",
        f"  POST   {base}/api/offer_again  {{\"id\": \"...\"}}",
        f"  POST   {base}/api/reset",
        f"Fault kinds: {', '.join(FAULT_KINDS)}. Ctrl-C stops.",
    ]
    print("\n".join(lines), file=out, flush=True)
    try:
        (stop_event or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
    finally:
        app.stop()
