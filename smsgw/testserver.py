"""A reference webapp: the server side of the medic-gateway protocol, over real HTTP.

It behaves like cht-core's sms-gateway API: every POST answers
`{"messages": [{"id", "to", "content"}, ...]}` with each queued message that has not had a
status update yet (any status, UNSENT included, stops the offers, as cht-core's
"received-by-gateway"), after recording the request's `messages` and `updates`.
Incoming SMS are deduplicated by id in `received()`; every update and every POST body is
also kept in order (`updates()`, `snapshot()["raw"]`).

Checks, each answered with 4xx and `{"error": true, "message": "..."}` like a webapp would:
Basic auth when a username/password is set (401); with `strict_headers`, the five protocol
request headers compared literally (400; violations are recorded in any case); a body
that is not a UTF-8 JSON object whose `messages`/`updates` are lists of objects (400).
Gzip-encoded requests are decoded; with `gzip_responses` answers are gzipped when the
client's Accept-Encoding allows it. Things the protocol does not allow but a lenient
webapp would accept (an update with an unknown status, an SMS without `from`, ...) are
listed in `snapshot()["problems"]`.

Faults (`set_fault(kind, count=1, **params)`): each applies to the next `count` POSTs on
the endpoint, after the ones already set. A faulted POST is logged in the raw log with
its fault but NOT recorded (the webapp "failed"), except for "slow".

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
- ``huge``: 200 with a valid JSON body of `size` bytes (default 50 MiB), streamed with a
  Content-Length, never built in memory.
- ``gzip_bomb``: 200, Content-Encoding gzip (whatever the client accepts), about 1 MB
  that inflates to `size` bytes (default 1.1 GB) of valid JSON: `{"messages": []` then
  spaces. Built once per size and cached; about 0.3 s for the default.
- ``redirect_loop``: answers `status` (default 302) to REDIRECT_LOOP_PATH (query kept),
  which redirects to itself for every method, so a client that turns the POST into a GET
  still loops.

Control API, beside the endpoint, for a separate process driving a `smsgw testserver`:
`POST /api/queue` {to, content, id?} -> {id}; `GET /api/state` -> snapshot();
`POST /api/faults` {kind, count, ...params}; `DELETE /api/faults` clears them;
`POST /api/offer_again` {id}; `POST /api/reset`. It has no auth, so it answers only
clients on the loopback interface (403 otherwise), even when the server listens wider.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import gzip
import hmac
import json
import logging
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
from urllib.parse import quote

from .config import redact_url

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

FAULT_PARAMS: dict[str, frozenset[str]] = {
    "status": frozenset({"status", "body", "content_type", "headers"}),
    "html": frozenset({"body"}),
    "slow": frozenset({"seconds"}),
    "timeout": frozenset({"seconds"}),
    "reset": frozenset(),
    "malformed": frozenset({"body"}),
    "wrong_types": frozenset({"variant", "body"}),
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

_HTML_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n"
    "<body><h1>Please sign in</h1><form method=\"post\" action=\"/login\">"
    "<input name=\"user\"><input name=\"password\" type=\"password\"></form></body></html>\n"
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


class ReferenceWebapp:
    """The server side of the protocol, with state to inspect and faults to inject."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, username: str | None = None,
                 password: str | None = None, path: str = "/smsgateway/",
                 strict_headers: bool = True, gzip_responses: bool = False,
                 batch_limit: int | None = None, debug: bool = False) -> None:
        if not path.startswith("/"):
            path = "/" + path
        if path.startswith(("/api/", REDIRECT_LOOP_PATH)):
            raise ValueError(f"the endpoint path {path!r} collides with the control API")
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if batch_limit is not None and batch_limit < 1:
            raise ValueError("batch_limit must be at least 1")
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.path = path
        self.strict_headers = strict_headers
        self.gzip_responses = gzip_responses
        self.batch_limit = batch_limit
        self.debug = debug
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
        self._violations: list[dict[str, Any]] = []
        self._problems: list[str] = []
        self._counters = dict.fromkeys(
            ("posts", "gets", "errors", "header_violations", "auth_failures", "bad_requests",
             "faults_served", "duplicate_messages", "redirects", "control"), 0)

    def reset(self) -> None:
        """Forget everything: queue, records, counters and pending faults."""
        with self._lock:
            self._reset_state()
            self._faults.clear()

    def queue(self, to: str, content: str, id: str | None = None) -> str:
        """Queue a message to offer on every POST until a status for it arrives.

        Queuing a known id again replaces its text and offers it again.
        """
        msg_id = str(uuid.uuid4()) if id is None else id
        with self._lock:
            self._queued[msg_id] = {"id": msg_id, "to": to, "content": content}
            self._offers.setdefault(msg_id, 0)
            self._awaiting.add(msg_id)
        return msg_id

    def offer_again(self, id: str) -> None:
        """Offer a queued message again, although it has a status, until a new one arrives."""
        with self._lock:
            if id not in self._queued:
                raise KeyError(f"no queued message with id {id!r}")
            self._awaiting.add(id)

    def received(self) -> list[dict[str, Any]]:
        """Incoming SMS, the first copy per id, in arrival order."""
        with self._lock:
            return copy.deepcopy(self._received)

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

    def snapshot(self) -> dict[str, Any]:
        """All the state as a JSON-able dict (what `GET /api/state` answers)."""
        with self._lock:
            queued = [
                {**msg, "offered": self._offers.get(msg_id, 0),
                 "awaiting_status": msg_id in self._awaiting,
                 "statuses": list(self._statuses.get(msg_id, []))}
                for msg_id, msg in self._queued.items()
            ]
            return _jsonable({
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
        logger.debug("testserver listening on %s", self._bare_url())
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
        """The endpoint URL, with user:password@ when auth is set."""
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
        return self.base_url + self.path

    # request handling helpers (called from handler threads) --------------------------
    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def _next_fault(self) -> _Fault | None:
        with self._lock:
            if not self._faults:
                return None
            self._counters["faults_served"] += 1
            return self._faults.pop(0)

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
            offer = [self._queued[i] for i in self._queued if i in self._awaiting]
            if self.batch_limit is not None:
                offer = offer[: self.batch_limit]
            for msg in offer:
                self._offers[msg["id"]] += 1
            return copy.deepcopy(offer)

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
        if status not in STATUSES:
            self._problems.append(f"update for {msg_id!r}: unknown status {status!r}")
        elif status == "FAILED" and not update.get("reason"):
            self._problems.append(f"update for {msg_id!r}: FAILED without a reason")
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
            offer = [self._queued[i] for i in self._queued if i in self._awaiting]
        if self.batch_limit is not None:
            offer = offer[: self.batch_limit]
        return json.dumps({"messages": offer}).encode("utf-8")

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
        try:
            if path.rstrip("/") == self.app.path.rstrip("/"):
                self._endpoint = True
                if self.command == "GET":
                    self._handshake()
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
            entry["fault"] = fault.kind if fault else None
            entry["body"] = _best_effort_json(raw, self.headers.get("Content-Encoding"))
        if fault is not None and fault.kind != "slow":
            self._serve_fault(fault, entry)
            return
        if fault is not None and app._stopping.wait(float(fault.params.get("seconds", 2))):
            self.close_connection = True
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
            offer = app._exchange(body)
        except _HTTPProblem as problem:
            self._fail(entry, problem)
            return
        with app._lock:
            entry["status"] = 200
            entry["offered"] = [m["id"] for m in offer]
        self._send_json(200, {"messages": offer}, may_gzip=True)

    def _fail(self, entry: dict[str, Any], problem: _HTTPProblem) -> None:
        with self.app._lock:
            entry["status"] = problem.status
            entry["error"] = problem.message
            self.app._counters["bad_requests"] += 1
        self._send_json(problem.status, {"error": True, "message": problem.message})

    def _authorised(self) -> bool:
        if self.app._check_auth(self.headers.get("Authorization")):
            return True
        self.app._count("auth_failures")
        self._send_json(401, {"error": True, "message": "Unauthorized"},
                        headers={"WWW-Authenticate": 'Basic realm="smsgw testserver"'})
        return False

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


def serve(host: str = "127.0.0.1", port: int = 0, *, username: str | None = None,
          password: str | None = None, path: str = "/smsgateway/",
          strict_headers: bool = True, gzip_responses: bool = False,
          batch_limit: int | None = None, debug: bool = False,
          out: IO[str] | None = None, stop_event: threading.Event | None = None) -> None:
    """Serve the reference webapp until Ctrl-C (or `stop_event`), binding only to `host`.

    Prints the endpoint URL (first line, password hidden) and the control API once.
    """
    out = out or sys.stdout
    app = ReferenceWebapp(host, port, username=username, password=password, path=path,
                          strict_headers=strict_headers, gzip_responses=gzip_responses,
                          batch_limit=batch_limit, debug=debug)
    url = app.start()
    base = app.base_url
    lines = [
        f"Reference webapp listening on {redact_url(url)}",
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
