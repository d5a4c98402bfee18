"""The webapp client against a real HTTP(S) server on 127.0.0.1 that replies as told."""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import json
import logging
import signal
import socket
import ssl
import struct
import threading
import time
import traceback
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsgw.errors import WebappError
from smsgw.models import Offered
from smsgw.webapp import MAX_BODY, WebappClient, parse_response

PASSWORD = "hunter2pass"
QUERY_SECRET = "topsecretkey"
PATH = f"/smsgateway/?key={QUERY_SECRET}&x=1"
EXPECTED_HEADERS = {
    "Accept": "application/json",
    "Accept-Charset": "utf-8",
    "Accept-Encoding": "gzip",
    "Cache-Control": "no-cache",
    "Content-Type": "application/json",
}
ALLOWED_EXTRA = {"user-agent", "host", "content-length", "authorization", "connection"}
JSON = [("Content-Type", "application/json")]


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Talk to 127.0.0.1 directly whatever the environment says."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")


# --- the fake webapp ----------------------------------------------------------------------

@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    requestline: str
    headers: list[tuple[str, str]]
    raw: bytes
    body: bytes  # gunzipped when the request said Content-Encoding: gzip

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Reply:
    """What the server answers: status, headers and raw bytes, plus misbehaviours."""

    status: int = 200
    body: bytes = b'{"messages": []}'
    headers: list[tuple[str, str]] = field(default_factory=lambda: list(JSON))
    gzip: bool = False  # gzip the body and say so
    length: int | None = None  # Content-Length to declare instead of the real one
    delay: float = 0.0  # seconds before the status line
    stall_after: int | None = None  # send this many body bytes, then hang
    reset_after: int | None = None  # send this many body bytes, then reset the connection
    stream: Callable[[], Iterator[bytes]] | None = None  # close-delimited body, chunk by chunk
    write: Callable[[Handler], None] | None = None  # writes the whole raw answer itself


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeWebapp

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.serve()

    do_POST = do_GET
    do_PUT = do_GET

    def serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
        seen = Seen(self.command, self.path, self.requestline, list(self.headers.items()),
                    raw, body)
        self.server.seen.append(seen)
        reply = self.server.responder(seen)
        if reply.delay and self.server.stop.wait(reply.delay):
            return
        if reply.write is not None:
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client hung up
                reply.write(self)
            return
        payload = gzip.compress(reply.body) if reply.gzip else reply.body
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.gzip:
            self.send_header("Content-Encoding", "gzip")
        if reply.stream is not None:
            if reply.length is not None:
                self.send_header("Content-Length", str(reply.length))
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            try:
                for chunk in reply.stream():
                    self.wfile.write(chunk)
            except OSError:
                pass  # the client hung up, as it should
            return
        declared = len(payload) if reply.length is None else reply.length
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        if reply.stall_after is not None:
            self.wfile.write(payload[:reply.stall_after])
            self.wfile.flush()
            self.server.stop.wait(30)
            self.close_connection = True
            return
        if reply.reset_after is not None:
            self.wfile.write(payload[:reply.reset_after])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        self.wfile.write(payload)


class FakeWebapp(ThreadingHTTPServer):
    """A webapp in a thread; `responder(seen) -> Reply` decides each answer."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        self.responder: Callable[[Seen], Reply] = lambda seen: Reply()
        self.scheme = "http"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # resets and refused TLS handshakes are the point of some tests

    def reply(self, reply: Reply) -> None:
        self.responder = lambda seen: reply

    def url(self, path: str = PATH, user: str | None = "gw", password: str | None = PASSWORD,
            ) -> str:
        auth = "" if user is None else user + ("" if password is None else f":{password}") + "@"
        return f"{self.scheme}://{auth}127.0.0.1:{self.server_address[1]}{path}"


def start(srv: FakeWebapp) -> Iterator[FakeWebapp]:
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def server() -> Iterator[FakeWebapp]:
    yield from start(FakeWebapp())


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[FakeWebapp]:
    srv = FakeWebapp()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.scheme = "https"
    yield from start(srv)


@pytest.fixture
def make_client() -> Iterator[Callable[..., WebappClient]]:
    clients: list[WebappClient] = []

    def make(url: str, **kwargs: object) -> WebappClient:
        client = WebappClient(url, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raised(fn: Callable[[], object]) -> WebappError:
    with pytest.raises(WebappError) as info:
        fn()
    return info.value


def zeros(total: int, chunk: int = 64 * 1024) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            yield b" " * chunk
            sent += chunk
    return gen


@functools.lru_cache(maxsize=1)
def gzip_bomb(size: int = 256 * 1024 * 1024) -> bytes:
    """About 250 KB that inflate to `size` bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    return b"".join([comp.compress(block) for _ in range(size // len(block))] + [comp.flush()])


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by Python while fn runs (both threads: the server is lean)."""
    tracemalloc.start()
    try:
        fn()
    except WebappError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


MSGS = [{"id": "a1b2", "from": "+254700000001", "content": "Habari, ndugu 🌍",
         "sms_sent": 1700000000000, "sms_received": 1700000001000}]
UPDATES = [{"id": "w-1", "status": "SENT", "reason": None}]


# --- the request --------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "POST"])
def test_request_headers_are_exactly_the_protocol_ones(server, make_client, method):
    server.reply(Reply(body=b'{"medic-gateway": true}'))
    client = make_client(server.url())
    client.handshake() if method == "GET" else client.exchange(MSGS, UPDATES)
    seen = server.seen[-1]
    assert seen.method == method
    for name, value in EXPECTED_HEADERS.items():
        assert seen.header(name) == [value], name
    names = {k.lower() for k, _ in seen.headers}
    assert names <= {n.lower() for n in EXPECTED_HEADERS} | ALLOWED_EXTRA
    assert seen.header("User-Agent")[0].startswith("smsgw/")


def test_query_string_kept_and_credentials_not_in_request_line(server, make_client):
    path = "/sms/gw/?key=topsecretkey&x=1&y=%2F&empty="
    make_client(server.url(path)).exchange([], [])
    seen = server.seen[-1]
    assert seen.path == path
    assert seen.requestline == f"POST {path} HTTP/1.1"
    assert PASSWORD not in seen.requestline and "gw:" not in seen.requestline
    assert "@" not in seen.requestline
    assert seen.header("Host") == [f"127.0.0.1:{server.server_address[1]}"]


@pytest.mark.parametrize("password", ["pé", "p%C3%A9", "pass%20word é!"])
def test_basic_auth_latin1_password(server, make_client, password):
    make_client(server.url(password=password)).exchange([], [])
    (auth,) = server.seen[-1].header("Authorization")
    scheme, token = auth.split(" ")
    assert scheme == "Basic"
    expected = password.replace("%C3%A9", "é").replace("%20", " ")
    assert base64.b64decode(token) == b"gw:" + expected.encode("latin-1")


def test_no_authorization_without_user_info(server, make_client):
    make_client(server.url(user=None)).exchange([], [])
    assert server.seen[-1].header("Authorization") == []


def test_body_is_plain_utf8_json_by_default(server, make_client):
    make_client(server.url()).exchange(MSGS, UPDATES)
    seen = server.seen[-1]
    assert seen.header("Content-Encoding") == []
    assert seen.raw == seen.body
    assert json.loads(seen.raw.decode("utf-8")) == {"messages": MSGS, "updates": UPDATES}


def test_empty_exchange_still_sends_both_lists(server, make_client):
    make_client(server.url()).exchange([], [])
    assert server.seen[-1].json() == {"messages": [], "updates": []}


def test_gzip_request_only_when_configured(server, make_client):
    make_client(server.url(), compress_requests=True).exchange(MSGS, UPDATES)
    seen = server.seen[-1]
    assert seen.header("Content-Encoding") == ["gzip"]
    assert seen.raw[:2] == b"\x1f\x8b"
    assert seen.json() == {"messages": MSGS, "updates": UPDATES}


def test_lone_surrogate_still_makes_valid_json(server, make_client):
    msgs = [dict(MSGS[0], content="half an emoji \ud83d")]
    make_client(server.url()).exchange(msgs, [])
    assert server.seen[-1].json() == {"messages": msgs, "updates": []}


# --- successful answers -------------------------------------------------------------------

OFFER = {"messages": [{"id": "m1", "to": "+254700000002", "content": "hi"}]}


@pytest.mark.parametrize("status", [200, 201, 202])
def test_any_2xx_with_messages_is_success(server, make_client, status):
    server.reply(Reply(status, json.dumps(OFFER).encode()))
    assert make_client(server.url()).exchange([], []) == [Offered("m1", "+254700000002", "hi")]


def test_204_without_body_is_success(server, make_client):
    server.reply(Reply(204, b"", headers=[]))
    assert make_client(server.url()).exchange([], []) == []


def test_gzip_answer_is_decoded(server, make_client):
    server.reply(Reply(body=json.dumps(OFFER).encode(), gzip=True))
    assert make_client(server.url()).exchange([], []) == [Offered("m1", "+254700000002", "hi")]


@pytest.mark.parametrize("content_type", ["text/html", "text/plain; charset=utf-8", None])
def test_json_with_another_content_type_is_parsed(server, make_client, content_type):
    headers = [] if content_type is None else [("Content-Type", content_type)]
    server.reply(Reply(body=json.dumps(OFFER).encode(), headers=headers))
    assert make_client(server.url()).exchange([], []) == [Offered("m1", "+254700000002", "hi")]


@pytest.mark.parametrize("body", [b"", b"  \r\n", b"{}", b'{"messages": null}',
                                  b'{"messages": []}', b'{"other": [1, 2]}'])
def test_nothing_to_send(server, make_client, body):
    server.reply(Reply(body=body))
    assert make_client(server.url()).exchange(MSGS, []) == []


def test_keep_alive_connection_reused_across_exchanges(server, make_client):
    client = make_client(server.url())
    for _ in range(3):
        client.exchange([], [])
    assert len(server.seen) == 3


# --- parse_response (pure) ----------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    (b"", []),
    (b" \n\t", []),
    (b"{}", []),
    (b'{"messages": null}', []),
    (b'{"messages": []}', []),
    (b'{"error": false, "extra": {"deep": [1]}}', []),
    (b'{"messages": [{"id": "a", "to": "+1", "content": "x", "extra": [1, {}]}], "more": 1}',
     [Offered("a", "+1", "x")]),
    (b'{"messages": [{"id": 42, "to": 254700000002, "content": "x"}]}',
     [Offered("42", None, "x", "id is a number, not a string")]),
    (b'{"messages": [{"id": "a", "to": 254700000002, "content": "x"}]}',
     [Offered("a", None, "x", "to is a number, not a string")]),
    (b'{"messages": [{"id": null, "to": null, "content": null}]}',
     [Offered(None, None, None, "missing id")]),
    (b'{"messages": [{}]}', [Offered(None, None, None, "missing id")]),
    (b'{"messages": [{"id": "", "to": "", "content": ""}]}', [Offered(None, "", "")]),
    (b'{"messages": [{"id": true, "to": false, "content": 5}]}',
     [Offered(None, None, None, "id is a boolean, not a string")]),
    (b'{"messages": [{"id": 1.5, "to": 1.0, "content": ["x"]}]}',
     [Offered(None, None, None, "id is a number, not a string")]),
    (b'{"messages": [{"id": {"a": 1}, "to": ["+1"], "content": {"t": "x"}}]}',
     [Offered(None, None, None, "id is an object, not a string")]),
    (b'{"messages": [{"id": "a", "to": ["+1"], "content": "x"}]}',
     [Offered("a", None, "x", "to is an array, not a string")]),
    (b'{"messages": [{"id": "a", "to": "+1"}]}', [Offered("a", "+1", None, "missing content")]),
    # The multiOTP PHP class writes control characters raw inside JSON strings.
    (b'{"messages": [{"id": "t", "to": "+1", "content": "a\tb\x01c"}]}',
     [Offered("t", "+1", "a\tb\x01c")]),
    (b'\xef\xbb\xbf{"messages": [{"id": "b", "to": "+1", "content": "\\u00e9"}]}',
     [Offered("b", "+1", "é")]),
])
def test_parse_response(body, expected):
    assert parse_response(body) == expected


def test_parse_response_skips_non_objects_with_a_warning(caplog):
    body = b'{"messages": ["junk", 3, null, [1], {"id": "a", "to": "+1", "content": "x"}]}'
    with caplog.at_level(logging.WARNING, logger="smsgw.webapp"):
        assert parse_response(body) == [Offered("a", "+1", "x")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert "messages[0]" in warnings[0].getMessage()


@pytest.mark.parametrize("body, words", [
    (b"{", "not valid JSON"),
    (b"<html><body>Login</body></html>", "not valid JSON"),
    (b'{"messages": [}', "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b"1" * 10_000, "not valid JSON"),
    (b"[]", "an array, not a JSON object"),
    (b'"messages"', "a string, not a JSON object"),
    (b"null", "null, not a JSON object"),
    (b'{"messages": "x"}', '"messages" as a string, not an array or null'),
    (b'{"messages": {"id": "a"}}', '"messages" as an object, not an array or null'),
    (b'{"messages": 0}', '"messages" as a number'),
])
def test_parse_response_errors(body, words):
    err = raised(lambda: parse_response(body))
    assert words in str(err)
    assert "\n" not in str(err)


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6,
)
message_like = st.dictionaries(st.sampled_from(["id", "to", "content", "x"]),
                               scalars | st.lists(scalars, max_size=2), max_size=4) | scalars
answer_like = st.dictionaries(st.sampled_from(["messages", "error"]),
                              st.none() | st.lists(message_like, max_size=4) | scalars,
                              max_size=2)


def _found_in(value: str, original: object) -> bool:
    return original == value or (
        isinstance(original, int) and not isinstance(original, bool) and str(original) == value)


@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, answer_like))
def test_parse_response_never_crashes_nor_invents(value):
    try:
        result = parse_response(json.dumps(value).encode())
    except WebappError as exc:
        assert str(exc)
        return
    assert isinstance(result, list)
    items = value.get("messages") if isinstance(value, dict) else None
    objects = [m for m in items if isinstance(m, dict)] if isinstance(items, list) else []
    assert len(result) == len(objects)
    for offered, original in zip(result, objects, strict=True):
        assert isinstance(offered, Offered)
        for name in ("id", "to", "content"):
            got = getattr(offered, name)
            assert got is None or isinstance(got, str)
            if got is not None:
                assert _found_in(got, original.get(name))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_parse_response_arbitrary_bytes(body):
    try:
        result = parse_response(body)
    except WebappError:
        return
    assert all(isinstance(o, Offered) for o in result)


# --- error answers ------------------------------------------------------------------------

@pytest.mark.parametrize("status", [400, 401, 404, 500, 502])
def test_error_status_with_json_message(server, make_client, status):
    body = json.dumps({"error": True, "message": "Gateway user not allowed"}).encode()
    server.reply(Reply(status, body))
    err = raised(lambda: make_client(server.url()).exchange(MSGS, UPDATES))
    assert len(server.seen) == 1  # no status retries
    assert err.status == status
    assert err.message == "Gateway user not allowed"
    assert str(err) == f"webapp answered HTTP {status}: Gateway user not allowed"


@pytest.mark.parametrize("status", [400, 401, 404, 500, 502])
def test_error_status_with_html_body(server, make_client, status):
    page = (b"<html><head><title>Oops</title><style>p {color: red}</style></head>\n"
            b"<body><h1>Bad   things</h1>\n<p>nginx &amp; friends</p></body></html>")
    server.reply(Reply(status, page, headers=[("Content-Type", "text/html")]))
    err = raised(lambda: make_client(server.url()).exchange([], []))
    assert err.status == status and err.message is None
    assert str(err) == f"webapp answered HTTP {status}: Oops Bad things nginx & friends"


def test_error_message_found_liberally(server, make_client):
    """JSON served as text/plain, gzipped, without "error": true."""
    server.reply(Reply(500, b'{"message": "db down"}', headers=[("Content-Type", "text/plain")],
                       gzip=True))
    err = raised(lambda: make_client(server.url()).exchange([], []))
    assert err.message == "db down"
    assert str(err) == "webapp answered HTTP 500: db down"


def test_error_without_body_says_the_reason(server, make_client):
    server.reply(Reply(503, b"", headers=[]))
    err = raised(lambda: make_client(server.url()).exchange([], []))
    assert str(err) == "webapp answered HTTP 503: Service Unavailable"
    assert err.status == 503 and err.message is None


def test_long_error_body_is_cut_to_one_short_line(server, make_client):
    server.reply(Reply(500, b"Traceback:\n" + b"x" * 5000 + b"\nmore", headers=[]))
    err = raised(lambda: make_client(server.url()).exchange([], []))
    assert "\n" not in str(err)
    assert len(str(err)) < 300


def test_huge_error_body_is_not_read_whole(server, make_client):
    server.reply(Reply(500, headers=[("Content-Type", "text/plain")], stream=zeros(50 << 20)))
    err = raised(lambda: make_client(server.url()).exchange([], []))
    assert err.status == 500


@pytest.mark.parametrize("reply", [
    Reply(304, b"", headers=[]),
    Reply(302, b"moved", headers=[]),  # no Location: nothing to follow
    Reply(103, b"", headers=[("Connection", "close")]),
])
def test_other_statuses_are_errors(server, make_client, reply):
    server.reply(reply)
    err = raised(lambda: make_client(server.url()).exchange([], []))
    assert err.status == reply.status
    assert f"HTTP {reply.status}" in str(err)


def test_unparseable_2xx_answer_is_an_error(server, make_client):
    server.reply(Reply(200, b"<html>captive portal</html>",
                       headers=[("Content-Type", "text/html")]))
    err = raised(lambda: make_client(server.url()).exchange(MSGS, []))
    assert str(err).startswith("the webapp's answer is not valid JSON")
    assert str(err).endswith("; it begins: captive portal")
    assert err.status == 200


def test_wrong_types_in_answer(server, make_client):
    server.reply(Reply(body=b'{"messages": "x"}'))
    err = raised(lambda: make_client(server.url()).exchange([], []))
    assert '"messages" as a string' in str(err)
    server.reply(Reply(body=b'{"messages": [{"id": null, "to": 123, "content": 5}, [], "s"]}'))
    assert make_client(server.url()).exchange([], []) == [
        Offered(None, None, None, "missing id")]


# --- redirects ----------------------------------------------------------------------------

def test_redirect_is_followed_keeping_post_and_query(server, make_client):
    def respond(seen: Seen) -> Reply:
        if seen.path.startswith("/old"):
            return Reply(307, b"", headers=[("Location", "/new/?key=topsecretkey")])
        return Reply(body=json.dumps(OFFER).encode())

    server.responder = respond
    offered = make_client(server.url("/old/?key=topsecretkey")).exchange(MSGS, [])
    assert offered == [Offered("m1", "+254700000002", "hi")]
    assert [s.path for s in server.seen] == ["/old/?key=topsecretkey", "/new/?key=topsecretkey"]
    assert server.seen[1].method == "POST"
    assert server.seen[1].json() == {"messages": MSGS, "updates": []}


def test_redirect_that_drops_the_post_body_is_an_error(server, make_client):
    """requests turns a POST into a GET on 302; success there would lose the SMS."""
    def respond(seen: Seen) -> Reply:
        if seen.method == "POST":
            return Reply(302, b"", headers=[("Location", "/elsewhere/")])
        return Reply(body=b'{"medic-gateway": true}')

    server.responder = respond
    err = raised(lambda: make_client(server.url()).exchange(MSGS, []))
    assert "redirected the POST" in str(err)
    assert err.status == 302


@pytest.mark.parametrize("status", [302, 307])
def test_redirect_loop_is_refused(server, make_client, status):
    server.reply(Reply(status, b"", headers=[("Location", PATH)]))
    client = make_client(server.url())
    err = raised(client.handshake)
    assert "too many redirects" in str(err)
    assert len(server.seen) == 6  # the request and 5 redirects
    err = raised(lambda: client.exchange(MSGS, []))
    assert "too many redirects" in str(err)


# --- size cap -----------------------------------------------------------------------------

def test_body_up_to_the_cap_is_accepted(server, make_client):
    body = json.dumps(OFFER).encode()
    server.reply(Reply(body=body.ljust(4096)))
    assert make_client(server.url(), max_body=4096).exchange([], []) != []
    server.reply(Reply(body=body.ljust(4097)))
    err = raised(lambda: make_client(server.url(), max_body=4096).exchange([], []))
    assert str(err) == "refused an answer larger than 4 KB from the webapp"


def test_fifty_megabytes_refused_with_bounded_memory(server, make_client):
    server.reply(Reply(stream=zeros(50 << 20)))
    client = make_client(server.url())
    peak = peak_memory(lambda: client.exchange([], []))
    err = raised(lambda: client.exchange([], []))
    assert str(err) == "refused an answer larger than 10 MB from the webapp"
    assert peak < 3 * MAX_BODY


def test_declared_length_over_the_cap_refused_before_reading(server, make_client):
    """The server sends 10 bytes of a declared 50 MB and hangs: reading would time out."""
    server.reply(Reply(body=b" " * 10, length=50 << 20, stall_after=10))
    err = raised(lambda: make_client(server.url(), read_timeout=20).exchange([], []))
    assert "larger than 10 MB" in str(err)


def test_gzip_bomb_refused_with_bounded_memory(server, make_client):
    bomb = gzip_bomb()
    server.reply(Reply(body=bomb, headers=JSON + [("Content-Encoding", "gzip")]))
    client = make_client(server.url(), max_body=1 << 20)
    peak = peak_memory(lambda: client.exchange([], []))
    err = raised(lambda: client.exchange([], []))
    assert str(err) == "refused an answer larger than 1 MB from the webapp"
    # The bomb inflates to 256 MB; one 8 KB read inflated whole would already be ~8 MB
    # (urllib3 < 2.6), so this checks that urllib3 bounds the output of every read.
    assert peak < 4 << 20, peak


def test_gzip_bomb_refused_at_default_cap(server, make_client):
    server.reply(Reply(body=gzip_bomb(), headers=JSON + [("Content-Encoding", "gzip")]))
    err = raised(lambda: make_client(server.url()).exchange([], []))
    assert "larger than 10 MB" in str(err)


def test_broken_gzip_is_an_error(server, make_client):
    server.reply(Reply(body=b"\x1f\x8b\x08\x00not really gzip",
                       headers=JSON + [("Content-Encoding", "gzip")]))
    err = raised(lambda: make_client(server.url()).exchange([], []))
    assert "cannot decompress" in str(err)


# --- network failures ---------------------------------------------------------------------

def test_read_timeout_before_headers(server, make_client):
    server.reply(Reply(delay=10))
    start_time = time.monotonic()
    err = raised(lambda: make_client(server.url(), read_timeout=0.3).exchange(MSGS, []))
    assert time.monotonic() - start_time < 8  # did not wait for the server
    assert str(err) == "the webapp at 127.0.0.1 did not answer within 0.3 s"
    assert len(server.seen) == 1  # a read timeout is not retried: the POST may have landed


def test_read_timeout_mid_body(server, make_client):
    server.reply(Reply(body=json.dumps(OFFER).encode(), stall_after=10))
    err = raised(lambda: make_client(server.url(), read_timeout=0.3).exchange([], []))
    assert "did not answer within 0.3 s" in str(err)


def test_connection_reset_mid_body(server, make_client):
    server.reply(Reply(body=json.dumps(OFFER).encode() + b" " * 5000, reset_after=20))
    err = raised(lambda: make_client(server.url()).exchange([], []))
    assert "connection to 127.0.0.1" in str(err) and "broke" in str(err)
    assert err.status is None


def test_connection_refused_after_a_couple_of_connect_retries(make_client, caplog):
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="urllib3"):
        err = raised(lambda: make_client(f"http://127.0.0.1:{port}/x").handshake())
    assert str(err).startswith(f"connection refused by 127.0.0.1:{port}")
    retries = [r for r in caplog.records if r.getMessage().startswith("Retrying")]
    assert len(retries) == 2


def test_dns_failure(make_client):
    err = raised(lambda: make_client("http://smsgw-test.invalid/gw").handshake())
    assert str(err) == "cannot resolve host smsgw-test.invalid"


@pytest.mark.parametrize("url", ["http://", "http://[::1/x", "ftp://example.org/x", "nothing"])
def test_invalid_url_is_a_webapp_error(make_client, url):
    err = raised(lambda: make_client(url).handshake())
    assert str(err).startswith("invalid webapp URL: ")


def test_http_to_https_port_is_an_error(tls_server, make_client):
    url = tls_server.url().replace("https://", "http://")
    tls_server.reply(Reply())
    err = raised(lambda: make_client(url, read_timeout=2).exchange([], []))
    assert str(err)


# --- TLS ----------------------------------------------------------------------------------

def test_tls_self_signed_refused_by_default(tls_server, make_client):
    err = raised(lambda: make_client(tls_server.url()).handshake())
    assert str(err).startswith("TLS certificate verification failed for 127.0.0.1")
    assert "--ca-bundle" in str(err)
    assert tls_server.seen == []


def test_tls_accepted_with_ca_bundle(tls_server, make_client, ca, tmp_path: Path):
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    tls_server.reply(Reply(body=b'{"medic-gateway": true, "version": 4}'))
    client = make_client(tls_server.url(), ca_bundle=str(bundle))
    client.handshake()
    tls_server.reply(Reply(body=json.dumps(OFFER).encode(), gzip=True))
    assert client.exchange(MSGS, []) == [Offered("m1", "+254700000002", "hi")]


def test_tls_wrong_ca_bundle_refused(tls_server, make_client, tmp_path: Path):
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    err = raised(lambda: make_client(tls_server.url(), ca_bundle=str(other)).handshake())
    assert str(err).startswith("TLS certificate verification failed")


def test_missing_ca_bundle_file(tls_server, make_client, tmp_path: Path):
    missing = str(tmp_path / "nope.pem")
    err = raised(lambda: make_client(tls_server.url(), ca_bundle=missing).handshake())
    assert missing in str(err)


# --- handshake ----------------------------------------------------------------------------

def test_handshake_ok_with_extra_fields(server, make_client):
    server.reply(Reply(body=b'{"medic-gateway": true, "name": "cht"}'))
    make_client(server.url()).handshake()
    assert server.seen[-1].method == "GET"
    assert server.seen[-1].raw == b""


@pytest.mark.parametrize("reply, words", [
    (Reply(body=b'{"medic-gateway": false}'), 'no "medic-gateway": true (got: {"medic-gateway"'),
    (Reply(body=b'{"medic-gateway": "true"}'), 'no "medic-gateway": true'),
    (Reply(body=b"{}"), 'webapp answered HTTP 200 with no "medic-gateway": true (got: {})'),
    (Reply(body=b"[true]"), 'no "medic-gateway": true'),
    (Reply(body=b""), "webapp answered HTTP 200 with an empty body"),
    (Reply(body=b"<html><h1>Welcome to nginx!</h1></html>", headers=[]),
     "webapp answered HTTP 200 with something that is not JSON: Welcome to nginx!"),
    (Reply(404, b"<h1>Not Found</h1>", headers=[("Content-Type", "text/html")]),
     "webapp answered HTTP 404: Not Found"),
    (Reply(401, b'{"error": true, "message": "Not logged in"}'),
     "webapp answered HTTP 401: Not logged in"),
])
def test_handshake_failures_say_what_came_back(server, make_client, reply, words):
    server.reply(reply)
    err = raised(make_client(server.url()).handshake)
    assert words in str(err)
    assert err.status == reply.status


# --- secrets ------------------------------------------------------------------------------

def echo(seen: Seen) -> bytes:
    """An answer that repeats the request line and the password, as careless servers do."""
    (auth,) = seen.header("Authorization")
    password = base64.b64decode(auth.split()[1]).decode("latin-1").split(":", 1)[1]
    return f"{seen.requestline} with password {password}".encode()


SCENARIOS: dict[str, Callable[[Seen], Reply]] = {
    "html 500": lambda s: Reply(500, b"<p>" + echo(s) + b"</p>", headers=[]),
    "json 404": lambda s: Reply(404, json.dumps({"error": True,
                                                 "message": echo(s).decode()}).encode()),
    "not json": lambda s: Reply(200, echo(s), headers=[]),
    "redirect loop": lambda s: Reply(302, b"", headers=[("Location", PATH)]),
    "post to get": lambda s: Reply(301, b"", headers=[("Location", PATH + "&moved=1")])
    if s.method == "POST" else Reply(body=echo(s)),
    "too large": lambda s: Reply(stream=zeros(12 << 20)),
    "reset": lambda s: Reply(body=b" " * 1000, reset_after=10),
    "timeout": lambda s: Reply(delay=5),
    "odd status": lambda s: Reply(302, echo(s), headers=[]),
}


def assert_no_secret(err: WebappError) -> None:
    texts = [str(err), repr(err), str(err.message), repr(err.args),
             "".join(traceback.format_exception(type(err), err, err.__traceback__))]
    for text in texts:
        assert PASSWORD not in text
        assert QUERY_SECRET not in text
    assert err.__cause__ is None and err.__context__ is None


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_secrets_never_in_errors_or_logs(server, make_client, caplog, scenario):
    server.responder = SCENARIOS[scenario]
    client = make_client(server.url(), read_timeout=0.5)
    with caplog.at_level(logging.DEBUG):
        for call in (client.handshake, lambda: client.exchange(MSGS, UPDATES)):
            assert_no_secret(raised(call))
    assert server.seen, "the scenario never reached the server"
    assert PASSWORD not in caplog.text and QUERY_SECRET not in caplog.text
    assert "key=***" in caplog.text  # urllib3's own lines were scrubbed, not silenced


def test_secrets_never_in_network_errors(make_client, caplog, tls_server):
    bad = [f"http://gw:{PASSWORD}@127.0.0.1:{free_port()}{PATH}",
           f"http://gw:{PASSWORD}@smsgw-test.invalid{PATH}",
           tls_server.url(),
           f"http://gw:{PASSWORD}@[::1{PATH}"]
    with caplog.at_level(logging.DEBUG):
        for url in bad:
            assert_no_secret(raised(make_client(url).handshake))
            assert_no_secret(raised(lambda u=url: make_client(u).exchange(MSGS, [])))
    assert PASSWORD not in caplog.text and QUERY_SECRET not in caplog.text


def test_secret_spelled_differently_by_requests_is_scrubbed(make_client):
    """requests re-quotes the URL; the error must not show the re-quoted secret either."""
    url = f"http://127.0.0.1:{free_port()}/gw?key=top secret key"
    client = make_client(url)
    text = client.scrub("GET /gw?key=top%20secret%20key failed")
    assert "secret" not in text


# --- cht-core's answers to a wrong password -------------------------------------------------

def test_redirect_to_a_login_page_says_to_check_the_password(server, make_client):
    """cht-core sends a client that does not ask for JSON to /medic/login with a 302."""
    def respond(seen: Seen) -> Reply:
        if seen.path.startswith("/medic/login"):
            return Reply(200, b"<html><form>login</form></html>",
                         headers=[("Content-Type", "text/html")])
        return Reply(302, b"", headers=[("Location", "/medic/login?redirect=%2Fapi")])

    server.responder = respond
    for call in (lambda c: c.exchange(MSGS, []), lambda c: c.handshake()):
        err = raised(lambda call=call: call(make_client(server.url())))
        # query values hidden
        where = f"http://127.0.0.1:{server.server_address[1]}/medic/login?redirect=***"
        assert str(err) == (f"the webapp redirected to a login page (HTTP 302 to {where}): "
                            "check the user and password in the URL")
        assert err.status == 302
        assert PASSWORD not in str(err)


# --- errors by name: a bug of smsgw is not a webapp failure --------------------------------

ERROR_JSON = Reply(500, b'{"error": true, "message": "db down"}')
NOT_FOUND_HTML = Reply(404, b"<h1>Not Found</h1>", headers=[("Content-Type", "text/html")])


@pytest.mark.parametrize("helper, exc, reply, call", [
    ("parse_response", TypeError, Reply(), "exchange"),
    ("_error_message", TypeError, ERROR_JSON, "exchange"),
    ("_error_message", ValueError, ERROR_JSON, "exchange"),
    ("_snippet", ValueError, NOT_FOUND_HTML, "handshake"),
    ("_login_redirect", KeyError, Reply(), "handshake"),
    ("_human_size", ValueError, Reply(body=b" " * 5000), "exchange"),
    ("_redirect_target", TypeError, Reply(307, b"", headers=[("Location", "/new/")]),
     "exchange"),
])
def test_a_bug_in_answer_handling_propagates_as_itself(server, make_client, monkeypatch,
                                                       helper, exc, reply, call):
    import smsgw.webapp

    def broken(*args: object, **kwargs: object) -> None:
        raise exc("a bug in smsgw")

    monkeypatch.setattr(smsgw.webapp, helper, broken)
    server.reply(reply)
    client = make_client(server.url(), max_body=4096)
    with pytest.raises(exc) as info:
        client.handshake() if call == "handshake" else client.exchange(MSGS, [])
    assert not isinstance(info.value, WebappError)
    assert str(info.value) in ("a bug in smsgw", "'a bug in smsgw'")


def test_only_the_missing_ca_bundle_oserror_is_a_webapp_error(tls_server, make_client,
                                                                monkeypatch, tmp_path):
    """requests raises a plain OSError for a missing CA bundle; any other OSError is a bug."""
    import requests.adapters

    missing = str(tmp_path / "nope.pem")
    err = raised(lambda: make_client(tls_server.url(), ca_bundle=missing).handshake())
    assert str(err).startswith(f"cannot use the CA bundle {missing}: Could not find a "
                               "suitable TLS CA certificate bundle")

    def cert_verify(*args: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "cert_verify", cert_verify)
    with pytest.raises(PermissionError):
        make_client(tls_server.url()).handshake()


def test_bad_host_label_is_an_invalid_url(make_client):
    """urllib3 raises its LocationParseError itself, unwrapped by requests."""
    err = raised(lambda: make_client("http://gw:pw@a..b/x").exchange([], []))
    assert str(err).startswith("invalid webapp URL: ") and "label" in str(err)


# --- deadline of a whole exchange ------------------------------------------------------------

HEAD_200 = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\nConnection: close\r\n\r\n")
HEAD_200_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"


def trickle(at_once: bytes, slowly: bytes, every: float = 1.0) -> Callable[[Handler], None]:
    """A raw answer: `at_once` in one go, then `slowly` one byte each `every` seconds."""
    def write(handler: Handler) -> None:
        handler.wfile.write(at_once)
        handler.wfile.flush()
        for i in range(len(slowly)):
            if handler.server.stop.wait(every):
                return
            handler.wfile.write(slowly[i:i + 1])
            handler.wfile.flush()
    return write


DEADLINE_TEXT = "the webapp at 127.0.0.1 did not finish answering within 2 s"

TRICKLES = {
    "body with a length": trickle(HEAD_200, b" " * 100),
    # cut short, this body would read as a clean (empty) answer: it must not count as one
    "body until close": trickle(HEAD_200_CLOSE, b" " * 100 + b"{}"),
    "status line and headers": trickle(b"", HEAD_200 + b" " * 100),
    "chunked body": trickle(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                            b"1\r\n \r\n" * 50),
}


@pytest.mark.parametrize("call", ["exchange", "handshake"])
@pytest.mark.parametrize("how", sorted(TRICKLES))
def test_deadline_ends_a_trickling_answer(server, make_client, how, call):
    server.reply(Reply(write=TRICKLES[how]))
    client = make_client(server.url(), read_timeout=30, deadline=2)
    began = time.monotonic()
    err = raised(client.handshake if call == "handshake" else lambda: client.exchange(MSGS, []))
    assert time.monotonic() - began < 20
    assert str(err) == DEADLINE_TEXT
    assert err.status is None
    assert_no_secret(err)
    # the client is still usable
    server.reply(Reply(body=json.dumps(OFFER).encode()))
    assert client.exchange([], []) == [Offered("m1", "+254700000002", "hi")]


def test_deadline_shortens_the_read_timeout(server, make_client):
    """A webapp that answers nothing for longer than the time left ends at the deadline."""
    server.reply(Reply(delay=30))
    began = time.monotonic()
    err = raised(lambda: make_client(server.url(), read_timeout=30, deadline=2)
                 .exchange(MSGS, []))
    assert time.monotonic() - began < 20
    assert str(err) == DEADLINE_TEXT
    assert len(server.seen) == 1


def test_deadline_over_tls(tls_server, make_client, ca, tmp_path: Path):
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    tls_server.reply(Reply(write=trickle(HEAD_200, b" " * 100)))
    client = make_client(tls_server.url(), ca_bundle=str(bundle), deadline=2)
    began = time.monotonic()
    err = raised(lambda: client.exchange(MSGS, []))
    assert time.monotonic() - began < 20
    assert str(err) == DEADLINE_TEXT


def test_deadline_covers_the_redirects(server, make_client):
    server.reply(Reply(307, b"", headers=[("Location", PATH)], delay=0.8))
    err = raised(lambda: make_client(server.url(), deadline=2).exchange(MSGS, []))
    assert str(err) == DEADLINE_TEXT
    assert len(server.seen) < 6  # it did not get as far as "too many redirects"


def test_deadline_must_be_positive():
    with pytest.raises(ValueError):
        WebappClient("http://127.0.0.1/x", deadline=0)


def test_quick_exchanges_are_untouched_by_the_deadline(server, make_client):
    server.reply(Reply(body=json.dumps(OFFER).encode()))
    client = make_client(server.url(), deadline=0.5)
    for _ in range(3):
        assert client.exchange([], []) == [Offered("m1", "+254700000002", "hi")]
        time.sleep(0.3)  # a watchdog left over from an earlier exchange would cut this one
    assert len(server.seen) == 3


# --- abort -------------------------------------------------------------------------------

def abort_soon(client: WebappClient, after: float = 0.5) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(after), client.abort()), daemon=True)
    thread.start()
    return thread


STUCK = {
    "before the answer": Reply(delay=30),
    "mid body": Reply(body=json.dumps(OFFER).encode(), stall_after=10),
    "trickling": Reply(write=trickle(HEAD_200, b" " * 100)),
}


@pytest.mark.parametrize("how", sorted(STUCK))
def test_abort_from_a_thread_ends_a_stuck_exchange(server, make_client, how):
    server.reply(STUCK[how])
    client = make_client(server.url(), read_timeout=30)
    began = time.monotonic()
    thread = abort_soon(client)
    err = raised(lambda: client.exchange(MSGS, []))
    thread.join()
    assert time.monotonic() - began < 20
    assert str(err) == "stopped"
    assert err.status is None and err.__cause__ is None and err.__context__ is None
    server.reply(Reply(body=json.dumps(OFFER).encode()))  # stopped, not broken
    assert client.exchange([], []) == [Offered("m1", "+254700000002", "hi")]


def test_abort_over_tls(tls_server, make_client, ca, tmp_path: Path):
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    tls_server.reply(Reply(body=json.dumps(OFFER).encode(), stall_after=10))
    client = make_client(tls_server.url(), ca_bundle=str(bundle), read_timeout=30)
    thread = abort_soon(client)
    err = raised(client.handshake)
    thread.join()
    assert str(err) == "stopped"


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")
def test_abort_from_a_signal_handler(server, make_client):
    server.reply(Reply(delay=30))
    client = make_client(server.url(), read_timeout=30)
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: client.abort())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        began = time.monotonic()
        err = raised(lambda: client.exchange(MSGS, []))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - began < 20
    assert str(err) == "stopped"


def test_abort_when_idle_changes_nothing(server, make_client):
    client = make_client(server.url())
    client.abort()
    assert client.exchange([], []) == []
    client.abort()
    client.exchange([], [])
    assert len(server.seen) == 2


# --- redirects off the webapp's origin -------------------------------------------------------

@pytest.fixture
def other_server() -> Iterator[FakeWebapp]:
    """A second webapp on another port: where a redirect should not take the batch."""
    yield from start(FakeWebapp())


def redirect_to(url: str, status: int = 307) -> Reply:
    return Reply(status, b"", headers=[("Location", url)])


def other_url(srv: FakeWebapp, host: str = "127.0.0.1", scheme: str = "http") -> str:
    return f"{scheme}://{host}:{srv.server_address[1]}/elsewhere/?key={QUERY_SECRET}"


@pytest.mark.parametrize("status", [302, 303, 307, 308])
@pytest.mark.parametrize("host, what", [("127.0.0.1", "port"), ("localhost", "host")])
def test_redirect_to_another_origin_is_refused(server, other_server, make_client, status,
                                               host, what):
    server.reply(redirect_to(other_url(other_server, host), status))
    err = raised(lambda: make_client(server.url()).exchange(MSGS, UPDATES))
    port = other_server.server_address[1]
    where = f"http://{host}:{port}/elsewhere/?key=***"
    assert str(err) == (
        f"refused the webapp's redirect (HTTP {status}) to {where}: another {what} than the "
        f"webapp URL's; if it is right, configure that URL, or allow redirects to {host}:{port}")
    assert err.status == status
    assert other_server.seen == []
    assert_no_secret(err)


@pytest.mark.parametrize("allow", ["localhost", "LOCALHOST", "localhost:{port}"])
def test_redirect_to_an_allowed_host_is_followed(server, other_server, make_client, allow):
    server.reply(redirect_to(other_url(other_server, "localhost")))
    other_server.reply(Reply(body=json.dumps(OFFER).encode()))
    port = other_server.server_address[1]
    client = make_client(server.url(), allow_redirects_to=[allow.format(port=port)])
    assert client.exchange(MSGS, UPDATES) == [Offered("m1", "+254700000002", "hi")]
    (seen,) = other_server.seen
    assert seen.method == "POST"
    assert seen.path == f"/elsewhere/?key={QUERY_SECRET}"
    assert seen.json() == {"messages": MSGS, "updates": UPDATES}
    assert seen.header("Authorization")  # an allowed host is trusted like the webapp


def test_allowed_host_on_another_port_is_still_refused(server, other_server, make_client):
    server.reply(redirect_to(other_url(other_server, "localhost")))
    client = make_client(server.url(), allow_redirects_to=["localhost:1", "example.org"])
    err = raised(lambda: client.exchange(MSGS, []))
    assert "another host" in str(err)
    assert other_server.seen == []


def test_https_to_http_is_never_followed(tls_server, server, make_client, ca, tmp_path):
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    target = f"http://127.0.0.1:{server.server_address[1]}/plain/?key={QUERY_SECRET}"
    tls_server.reply(redirect_to(target, 301))
    allow = ["127.0.0.1", f"127.0.0.1:{server.server_address[1]}"]
    client = make_client(tls_server.url(), ca_bundle=str(bundle), allow_redirects_to=allow)
    for call in (client.handshake, lambda: client.exchange(MSGS, [])):
        tls_server.reply(redirect_to(target, 301 if call is client.handshake else 308))
        err = raised(call)
        assert "from https to http://127.0.0.1:" in str(err)
        assert "unencrypted" in str(err)
        assert_no_secret(err)
    assert server.seen == []


def test_http_to_https_only_when_allowed(server, tls_server, make_client, ca, tmp_path):
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    server.reply(redirect_to(other_url(tls_server, scheme="https")))
    tls_server.reply(Reply(body=json.dumps(OFFER).encode()))
    err = raised(lambda: make_client(server.url(), ca_bundle=str(bundle)).exchange(MSGS, []))
    assert "another scheme than the webapp URL's" in str(err)
    assert tls_server.seen == []
    client = make_client(server.url(), ca_bundle=str(bundle), allow_redirects_to=["127.0.0.1"])
    assert client.exchange(MSGS, []) == [Offered("m1", "+254700000002", "hi")]
    assert tls_server.seen[-1].json() == {"messages": MSGS, "updates": []}


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/x", "file:///etc/passwd"])
def test_redirect_to_another_kind_of_url_is_refused(server, make_client, location):
    server.reply(redirect_to(location))
    err = raised(lambda: make_client(server.url(), allow_redirects_to=["127.0.0.1"])
                 .exchange(MSGS, []))
    assert "not an http or https URL" in str(err)


def test_redirect_to_an_invalid_url(server, make_client):
    server.reply(redirect_to("http://[::1/x"))
    err = raised(lambda: make_client(server.url()).exchange(MSGS, []))
    assert str(err) == "the webapp redirected (HTTP 307) to an invalid URL"
    assert err.status == 307


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_same_origin_redirect_with_an_absolute_url(server, make_client, status):
    def respond(seen: Seen) -> Reply:
        if seen.path.startswith("/old"):
            port = server.server_address[1]
            return redirect_to(f"http://127.0.0.1:{port}/new/?key={QUERY_SECRET}", status)
        return Reply(body=b'{"medic-gateway": true}')

    server.responder = respond
    make_client(server.url("/old/")).handshake()
    assert [(s.method, s.path) for s in server.seen] == [
        ("GET", "/old/"), ("GET", f"/new/?key={QUERY_SECRET}")]
    assert server.seen[1].header("Authorization")


def test_redirect_body_is_read_so_the_connection_is_kept(server, make_client):
    def respond(seen: Seen) -> Reply:
        if seen.path.startswith("/old"):
            return Reply(307, b"<p>moved</p>", headers=[("Location", "/new/")])
        return Reply(body=json.dumps(OFFER).encode())

    server.responder = respond
    ports: set[int] = set()
    original = Handler.serve

    def serve(handler: Handler) -> None:
        ports.add(handler.client_address[1])
        original(handler)

    Handler.serve = serve  # type: ignore[method-assign]
    try:
        assert make_client(server.url("/old/")).exchange(MSGS, []) != []
    finally:
        Handler.serve = original  # type: ignore[method-assign]
    assert len(ports) == 1


@pytest.mark.parametrize("entry", ["", "a/b", "user@host", "http://host", "host:port"])
def test_bad_allow_redirects_to_entries(entry):
    with pytest.raises(ValueError):
        WebappClient("http://127.0.0.1/x", allow_redirects_to=[entry])


def test_redirect_body_is_not_read_whole(server, make_client):
    def respond(seen: Seen) -> Reply:
        if seen.path.startswith("/old"):
            return Reply(307, headers=[("Location", "/new/")], stream=zeros(50 << 20))
        return Reply(body=json.dumps(OFFER).encode())

    server.responder = respond
    client = make_client(server.url("/old/"))
    got: list[list[Offered]] = []
    peak = peak_memory(lambda: got.append(client.exchange(MSGS, [])))
    assert got == [[Offered("m1", "+254700000002", "hi")]]
    assert peak < 4 << 20, peak


@pytest.mark.parametrize("length", [b"\xb2", b"-1", b"1e3", b" 12 "])
def test_odd_content_length_is_not_a_crash(server, make_client, length):
    server.reply(Reply(write=lambda h: h.wfile.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\nConnection: close\r\n\r\n{}")))
    with contextlib.suppress(WebappError):  # refusing it is fine; a ValueError would not be
        assert make_client(server.url()).exchange([], []) == []


def test_conflicting_content_lengths_are_a_webapp_error(server, make_client):
    server.reply(Reply(write=lambda h: h.wfile.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{} ")))
    err = raised(lambda: make_client(server.url()).exchange([], []))
    assert "invalid header" in str(err) and "Content-Length" in str(err)
