"""The gateway cycle against the reference webapp over real HTTP: every rule of PROTOCOL.md.

Wired as the product wires it: ReferenceWebapp on 127.0.0.1 + WebappClient(url) +
SimulatedPhone(clock) + Store(tmp_path) + Gateway, with one virtual clock that moves 10 s
after each cycle. A few answers the reference webapp cannot give (a 204, a message offered
twice in one answer, a missing field) come from ScriptedWebapp, a tiny server in this file.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock

from smsgw.config import Settings
from smsgw.gateway import MAX_ROUNDS, UNKNOWN_OUTCOME, CycleReport, Gateway
from smsgw.models import from_iso
from smsgw.phone.base import SENT, java_trim, normalize_number
from smsgw.phone.simulated import SimulatedPhone
from smsgw.retry import backoff
from smsgw.segment import fits_one_sms, strip_prefix
from smsgw.store import Store
from smsgw.testserver import ReferenceWebapp
from smsgw.webapp import WebappClient, WebappError

pytestmark = pytest.mark.usefixtures("no_proxies")

PROTOCOL_HEADERS = {
    "Accept": "application/json",
    "Accept-Charset": "utf-8",
    "Accept-Encoding": "gzip",
    "Cache-Control": "no-cache",
    "Content-Type": "application/json",
}
REPORTABLE = {"UNSENT", "PENDING", "SENT", "FAILED"}  # DELIVERED is never observable
NUMBER = "+254700000001"


# --- a scripted webapp for answers the reference webapp cannot give ------------------------

@dataclass
class Reply:
    """One answer: a dict/list is sent as JSON, bytes as they are; None content type = none."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"messages": []})
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def data(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode("utf-8")


@dataclass
class Seen:
    """One request as the scripted webapp received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class ScriptedWebapp:
    """Answers each POST with the next scripted Reply, then with `default`; GET with `get`."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.default = Reply()
        self.get = Reply(body={"medic-gateway": True})
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go in two writes: without this, delayed ACKs cost 40 ms
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                app._record(self, None)
                self._answer(app.get)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                app._record(self, json.loads(raw))
                with app._lock:
                    reply = app.script.pop(0) if app.script else app.default
                self._answer(reply)

            def _answer(self, reply: Reply) -> None:
                data = b"" if reply.status in (204, 304) else reply.data()
                self.send_response(reply.status)
                if reply.content_type is not None:
                    self.send_header("Content-Type", reply.content_type)
                if reply.status not in (204, 304):
                    self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _record(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        with self._lock:
            self.seen.append(Seen(handler.command, handler.path, dict(handler.headers.items()),
                                  body))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/gw/"

    def posts(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == "POST"]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def scripted() -> Iterator[ScriptedWebapp]:
    app = ScriptedWebapp()
    yield app
    app.stop()


# --- the rig: everything wired as the product does ----------------------------------------

@dataclass
class Rig:
    webapp: Any  # ReferenceWebapp or ScriptedWebapp
    client: WebappClient
    phone: SimulatedPhone
    store: Store
    gateway: Gateway
    clock: Clock
    step: float = 10

    def cycle(self) -> CycleReport:
        """One gateway cycle at the current time; then the clock moves on by `step`."""
        report = self.gateway.cycle()
        self.clock.advance(self.step)
        return report

    def cycles(self, n: int) -> list[CycleReport]:
        return [self.cycle() for _ in range(n)]

    def summary(self) -> dict[str, Any]:
        return self.store.summary(self.clock())

    def posts(self) -> int:
        return self.webapp.snapshot()["counters"]["posts"]

    def raw(self) -> list[dict[str, Any]]:
        return self.webapp.snapshot()["raw"]


@pytest.fixture
def make_rig(tmp_path: Path, clock: Clock,
             make_webapp: Callable[..., ReferenceWebapp]) -> Iterator[Callable[..., Rig]]:
    clients: list[WebappClient] = []

    def make(*, webapp: Any = None, url: str | None = None, settings: Settings | None = None,
             phone: SimulatedPhone | None = None, client: dict[str, Any] | None = None,
             server: dict[str, Any] | None = None, state: Path | None = None) -> Rig:
        if webapp is None:
            webapp = make_webapp(**(server or {}))
        url = url or webapp.url
        web = WebappClient(url, **(client or {}))
        clients.append(web)
        phone = phone or SimulatedPhone(clock)
        store = Store(state or tmp_path / f"state{len(clients)}")
        gateway = Gateway(store, web, phone, settings or Settings(url=url), clock)
        rig = Rig(webapp, web, phone, store, gateway, clock)
        first = rig.cycle()  # first start: sets the inbox position, posts once
        assert first.errors == [] and first.posts == 1
        return rig

    yield make
    for web in clients:
        web.close()


def assert_clean(webapp: ReferenceWebapp) -> None:
    """The gateway never broke the protocol, as far as the reference webapp can tell."""
    snap = webapp.snapshot()
    assert snap["problems"] == []
    assert snap["header_violations"] == []
    assert snap["counters"]["header_violations"] == 0
    for update in snap["updates"]:
        assert update["status"] in REPORTABLE, update
        assert (update["status"] == "FAILED") == bool(update.get("reason")), update


def updates_for(webapp: ReferenceWebapp, msg_id: str) -> list[dict[str, Any]]:
    return [u for u in webapp.updates() if u["id"] == msg_id]


def run_until(rig: Rig, done: Callable[[], bool], limit: int = 60) -> int:
    """Cycle until `done()`; return how many cycles it took."""
    for n in range(1, limit + 1):
        report = rig.cycle()
        assert report.errors == [], report.errors
        if done():
            return n
    raise AssertionError(f"not done after {limit} cycles")


# --- handshake, headers, encodings, auth, query ------------------------------------------

def test_handshake_ok_through_the_client(make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp()
    with WebappClient(webapp.url) as client:
        client.handshake()
    snap = webapp.snapshot()
    assert snap["counters"]["gets"] == 1
    assert snap["header_violations"] == []


@pytest.mark.parametrize("reply, words", [
    (Reply(body={"medic-gateway": False}), 'no "medic-gateway": true'),
    (Reply(body={"gateway": True}), 'no "medic-gateway": true'),
    (Reply(body={"medic-gateway": "true"}), 'no "medic-gateway": true'),
    (Reply(body=b"<html><body>Welcome to nginx!</body></html>", content_type="text/html"),
     "not JSON: Welcome to nginx!"),
    (Reply(body=b""), "empty body"),
    (Reply(status=404, body={"error": True, "message": "no such page"}), "no such page"),
])
def test_handshake_refused_on_a_wrong_answer(scripted: ScriptedWebapp, reply: Reply,
                                             words: str) -> None:
    scripted.get = reply
    with WebappClient(scripted.url) as client, pytest.raises(WebappError) as err:
        client.handshake()
    assert words in str(err.value)
    assert err.value.status == reply.status


def test_handshake_refused_with_a_wrong_password(
        make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp(username="gw", password="right")
    wrong = webapp.url.replace(":right@", ":wrong@")
    with WebappClient(wrong) as client, pytest.raises(WebappError) as err:
        client.handshake()
    assert err.value.status == 401
    assert "wrong" not in str(err.value)


def test_every_post_carries_exactly_the_five_headers(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(server={"strict_headers": True})
    rig.webapp.queue(NUMBER, "hello")
    rig.phone.receive("+254711000001", "hi there")
    rig.cycles(4)
    raw = rig.raw()
    assert len(raw) >= 5
    for entry in raw:
        headers = {k.lower(): v for k, v in entry["headers"].items()}
        for name, value in PROTOCOL_HEADERS.items():
            assert headers.get(name.lower()) == value, (name, entry["headers"])
        assert "content-encoding" not in headers  # plain JSON unless asked
        assert entry["status"] == 200
    assert rig.webapp.snapshot()["counters"]["bad_requests"] == 0
    assert_clean(rig.webapp)


def test_gzip_responses_are_accepted(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(server={"gzip_responses": True})
    msg_id = rig.webapp.queue(NUMBER, "compressed offer")
    rig.phone.receive("+254711000001", "hello")
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "SENT")
    assert rig.phone.sends == [(NUMBER, "compressed offer")]
    assert [m["content"] for m in rig.webapp.received()] == ["hello"]
    assert_clean(rig.webapp)


def test_gzip_encoded_answer_from_a_plain_server(make_rig: Callable[..., Rig],
                                                 scripted: ScriptedWebapp) -> None:
    rig = make_rig(webapp=scripted)
    offer = {"messages": [{"id": "gz-1", "to": NUMBER, "content": "zipped"}]}
    scripted.script.append(Reply(body=gzip.compress(json.dumps(offer).encode()),
                                 headers={"Content-Encoding": "gzip"}))
    report = rig.cycle()
    assert report.errors == []
    assert rig.phone.sends == [(NUMBER, "zipped")]


@pytest.mark.parametrize("compress", [False, True])
def test_requests_are_gzipped_only_when_asked(make_rig: Callable[..., Rig],
                                              compress: bool) -> None:
    rig = make_rig(client={"compress_requests": compress})
    rig.phone.receive("+254711000001", "squeeze me")
    assert rig.cycle().errors == []
    for entry in rig.raw():
        encoding = {k.lower(): v for k, v in entry["headers"].items()}.get("content-encoding")
        assert encoding == ("gzip" if compress else None)
    assert [m["content"] for m in rig.webapp.received()] == ["squeeze me"]
    assert_clean(rig.webapp)


@pytest.mark.parametrize("password", ["s3cret-pass", "pässwörd£"])
def test_basic_auth_from_the_url(make_rig: Callable[..., Rig], password: str) -> None:
    assert password.encode("latin-1")
    rig = make_rig(server={"username": "gateway", "password": password})
    assert "gateway:" in rig.webapp.url
    rig.client.handshake()
    rig.phone.receive("+254711000001", "authorised")
    msg_id = rig.webapp.queue(NUMBER, "out")
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "SENT")
    assert [m["content"] for m in rig.webapp.received()] == ["authorised"]
    assert rig.webapp.snapshot()["counters"]["auth_failures"] == 0
    assert_clean(rig.webapp)


def test_wrong_password_is_an_error_and_nothing_is_lost(
        make_webapp: Callable[..., ReferenceWebapp], make_rig: Callable[..., Rig]) -> None:
    webapp = make_webapp(username="gateway", password="right-one")
    rig = make_rig(webapp=webapp)
    with WebappClient(webapp.url.replace("right-one", "wrong-one")) as bad:
        rig.gateway.webapp = bad
        rig.phone.receive("+254711000001", "kept")
        report = rig.cycle()
    assert report.errors and "HTTP 401" in report.errors[0]
    summary = rig.summary()
    assert summary["last_error"]["status"] == 401
    assert summary["last_error"]["message"] == "Unauthorized"
    assert "wrong-one" not in json.dumps(summary)
    assert summary["incoming"]["WAITING"] == 1
    rig.gateway.webapp = rig.client
    assert rig.cycle().errors == []
    assert [m["content"] for m in webapp.received()] == ["kept"]


def test_query_string_is_kept(make_rig: Callable[..., Rig], scripted: ScriptedWebapp,
                              make_webapp: Callable[..., ReferenceWebapp]) -> None:
    rig = make_rig(webapp=scripted, url=scripted.url + "?key=abc")
    rig.client.handshake()
    rig.phone.receive("+254711000001", "with key")
    assert rig.cycle().errors == []
    assert len(scripted.seen) >= 3
    assert all(s.path == "/gw/?key=abc" for s in scripted.seen), [s.path for s in scripted.seen]
    # and the reference webapp, which ignores the query, works through such a URL too
    webapp = make_webapp()
    ref = make_rig(webapp=webapp, url=webapp.url + "?key=abc")
    ref.phone.receive("+254711000001", "with key")
    assert ref.cycle().errors == []
    assert [m["content"] for m in webapp.received()] == ["with key"]


# --- periodic POST, incoming SMS -----------------------------------------------------------

def test_an_idle_cycle_posts_once_with_empty_lists(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    before = rig.posts()
    report = rig.cycle()
    assert report.errors == [] and report.posts == 1
    assert rig.posts() == before + 1
    assert rig.raw()[-1]["body"] == {"messages": [], "updates": []}
    rig.cycle()
    assert rig.posts() == before + 2
    assert_clean(rig.webapp)


def test_incoming_sms_forwarded_with_the_protocol_fields(make_rig: Callable[..., Rig],
                                                         clock: Clock) -> None:
    phone = SimulatedPhone(clock)
    phone.receive("+254711000009", "old SMS from before the gateway")
    clock.advance(60)  # the gateway is set up a minute later
    rig = make_rig(phone=phone)
    assert rig.webapp.received() == []  # the old inbox is not forwarded
    clock.advance(3)
    when = clock()
    rig.phone.receive("+254711000001", "Habari, I need help")
    report = rig.cycle()
    assert report.errors == [] and report.received == 1 and report.forwarded == 1
    [msg] = rig.webapp.received()
    assert set(msg) == {"id", "from", "content", "sms_sent", "sms_received"}
    assert str(uuid.UUID(msg["id"])) == msg["id"]
    assert msg["from"] == "+254711000001"
    assert msg["content"] == "Habari, I need help"
    assert msg["sms_sent"] == 0
    assert msg["sms_received"] == int(when.timestamp() * 1000)
    assert rig.summary()["incoming"]["WAITING"] == 0
    rig.cycles(2)
    assert len(rig.webapp.received()) == 1
    assert_clean(rig.webapp)


def test_incoming_id_is_stable_across_resends(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.phone.receive("+254711000001", "say it twice")
    rig.webapp.set_fault("status", status=500)
    failed = rig.cycle()
    assert failed.errors and "HTTP 500" in failed.errors[0]
    assert rig.webapp.received() == []
    first = rig.raw()[-1]
    assert first["fault"] == "status"
    sent_id = first["body"]["messages"][0]["id"]
    assert rig.summary()["incoming"]["WAITING"] == 1
    assert rig.cycle().errors == []
    [msg] = rig.webapp.received()
    assert msg["id"] == sent_id and msg["content"] == "say it twice"
    assert rig.raw()[-1]["body"]["messages"][0]["id"] == sent_id
    assert_clean(rig.webapp)


def test_incoming_backlog_goes_in_batches_of_50_in_one_cycle(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    for i in range(120):
        rig.phone.receive(f"+2547110{i:05d}", f"sms {i:03d}")
    before = rig.posts()
    report = rig.cycle()
    assert report.errors == [] and report.received == 120 and report.forwarded == 120
    assert rig.posts() == before + 3
    assert [len(e["body"]["messages"]) for e in rig.raw()[-3:]] == [50, 50, 20]
    received = rig.webapp.received()
    assert [m["content"] for m in received] == [f"sms {i:03d}" for i in range(120)]
    assert len({m["id"] for m in received}) == 120
    assert rig.webapp.snapshot()["counters"]["duplicate_messages"] == 0
    assert_clean(rig.webapp)


# --- outgoing: statuses, invalid messages, batches ------------------------------------------

def test_status_flow_unsent_pending_sent(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    msg_id = rig.webapp.queue(NUMBER, "Hello from the clinic")
    rig.cycle()
    assert rig.phone.sends == [(NUMBER, "Hello from the clinic")]
    assert rig.webapp.statuses()[msg_id] == ["UNSENT"]  # reported before the send
    rig.cycle()
    assert rig.webapp.statuses()[msg_id] == ["UNSENT", "PENDING"]
    rig.cycle()
    assert rig.webapp.statuses()[msg_id] == ["UNSENT", "PENDING", "SENT"]
    rig.cycles(3)
    assert rig.webapp.statuses()[msg_id] == ["UNSENT", "PENDING", "SENT"]
    assert len(rig.phone.sends) == 1
    assert all(u["reason"] is None for u in updates_for(rig.webapp, msg_id))
    assert_clean(rig.webapp)


def test_sent_only_after_the_row_settled(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.step = 2  # SETTLE is 5 s: a 2 s old sent row is not yet trusted
    msg_id = rig.webapp.queue(NUMBER, "settle")
    rig.cycles(3)  # t, t+2, t+4
    assert "SENT" not in rig.webapp.statuses()[msg_id]
    rig.cycles(3)
    assert rig.webapp.statuses()[msg_id][-1] == "SENT"


def test_invalid_messages_fail_with_a_reason(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    expected = {
        rig.webapp.queue("", "no recipient", id="no-to"): "missing recipient",
        rig.webapp.queue(NUMBER, "", id="no-content"): "missing content",
        rig.webapp.queue("12ab", "letters", id="letters"): "12ab",
        rig.webapp.queue("+1;rm", "shell", id="shell"): "+1;rm",
    }
    rig.webapp.queue(NUMBER, "no id here", id="")
    good = rig.webapp.queue(NUMBER, "this one is fine")
    rig.cycles(3)
    assert rig.phone.sends == [(NUMBER, "this one is fine")]
    for msg_id, words in expected.items():
        [update] = updates_for(rig.webapp, msg_id)
        assert update["status"] == "FAILED"
        assert words in update["reason"]
    assert updates_for(rig.webapp, "") == []  # no id: ignored, nothing to report
    assert rig.webapp.status_of(good) == "SENT"
    assert_clean(rig.webapp)


def test_messages_with_missing_fields(make_rig: Callable[..., Rig],
                                      scripted: ScriptedWebapp) -> None:
    rig = make_rig(webapp=scripted)
    scripted.script.append(Reply(body={"messages": [
        {"to": NUMBER, "content": "no id at all"},
        {"id": "", "to": NUMBER, "content": "empty id"},
        {"id": "m-to", "content": "no to"},
        {"id": "null-to", "to": None, "content": "null to"},
        {"id": "m-content", "to": NUMBER},
        {"id": "bad-to", "to": "12ab", "content": "letters"},
    ]}))
    report = rig.cycle()
    assert report.errors == [] and report.invalid == 6
    assert rig.phone.sends == []
    updates = scripted.posts()[-1].body["updates"]
    assert {u["id"] for u in updates} == {"m-to", "null-to", "m-content", "bad-to"}
    assert all(u["status"] == "FAILED" and u["reason"] for u in updates)


def test_at_most_50_updates_per_post(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(settings=Settings(max_parts_per_minute=200))
    ids = [rig.webapp.queue(f"+2547000{i:05d}", f"bulk {i}") for i in range(60)]
    report = rig.cycle()
    assert report.errors == [] and report.new == 60
    first = [len(e["body"]["updates"]) for e in rig.raw()[-report.posts:]]
    assert first[:2] == [0, 50]
    run_until(rig, lambda: all(rig.webapp.status_of(i) == "SENT" for i in ids))
    assert max(len(e["body"]["updates"]) for e in rig.raw()) == 50
    for msg_id in ids:
        assert rig.webapp.statuses()[msg_id][0] == "UNSENT"
    assert len(rig.phone.sends) == 60
    assert_clean(rig.webapp)


# --- 2xx variants ----------------------------------------------------------------------------

def _offer(msg_id: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"id": msg_id, "to": NUMBER, "content": f"text of {msg_id}", **extra}]}


@pytest.mark.parametrize("reply, offered", [
    (Reply(status=201, body=_offer("v201")), "v201"),
    (Reply(status=202, body=_offer("v202")), "v202"),
    (Reply(status=204, body=b""), None),
    (Reply(body={}), None),
    (Reply(body={"messages": None}), None),
    (Reply(body={"messages": []}), None),
    (Reply(body=b""), None),
    (Reply(body=b"  \r\n"), None),
    (Reply(body={"messages": None, "updates": None}), None),
    (Reply(body=_offer("plain"), content_type="text/plain"), "plain"),
    (Reply(body=_offer("html-ct"), content_type="text/html; charset=utf-8"), "html-ct"),
    (Reply(body=_offer("no-ct"), content_type=None), "no-ct"),
    (Reply(body=_offer("charset"), content_type="application/json; charset=utf-8"), "charset"),
    (Reply(body={**_offer("extra", priority=5, meta={"a": [1, None]}), "ok": True,
                 "server": {"version": "4.2"}}), "extra"),
], ids=lambda v: v.status if isinstance(v, Reply) else str(v))
def test_every_2xx_variant_is_understood(make_rig: Callable[..., Rig],
                                         scripted: ScriptedWebapp, reply: Reply,
                                         offered: str | None) -> None:
    rig = make_rig(webapp=scripted)
    rig.phone.receive("+254711000001", "incoming")
    scripted.script.append(reply)
    report = rig.cycle()
    assert report.errors == []
    assert scripted.posts()[1].body["messages"][0]["content"] == "incoming"
    assert rig.summary()["incoming"]["WAITING"] == 0
    assert rig.summary()["last_error"] is None
    if offered is None:
        assert rig.phone.sends == []
        assert report.new == 0
    else:
        assert rig.phone.sends == [(NUMBER, f"text of {offered}")]
        assert scripted.posts()[2].body["updates"] == [
            {"id": offered, "status": "UNSENT", "reason": None}]
    # and the next cycle works as usual
    assert rig.cycle().errors == []


# --- errors: HTTP statuses, unusable answers, transport faults -------------------------------

def _pipeline(rig: Rig) -> str:
    """An outgoing message handed over (updates queued) and an incoming SMS waiting."""
    msg_id = rig.webapp.queue(NUMBER, "in flight")
    assert rig.cycle().errors == []
    assert rig.webapp.statuses()[msg_id] == ["UNSENT"]
    rig.phone.receive("+254711000001", "waiting for the webapp")
    return msg_id


def _recovers(rig: Rig, msg_id: str) -> None:
    """After a failed exchange: everything queued arrives on the next good one."""
    summary = rig.summary()
    assert summary["incoming"]["WAITING"] == 1
    # The PENDING that did not get through is replaced by this cycle's SENT: a webapp
    # never hears an older status after a newer one, and needs no stale one.
    assert summary["updates_queued"] == 1
    assert rig.webapp.received() == []
    report = rig.cycle()
    assert report.errors == []
    assert [m["content"] for m in rig.webapp.received()] == ["waiting for the webapp"]
    assert rig.webapp.statuses()[msg_id] == ["UNSENT", "SENT"]
    assert len(rig.phone.sends) == 1
    assert rig.summary()["webapp_failures"] == 0
    assert_clean(rig.webapp)


@pytest.mark.parametrize("status, body, content_type, message", [
    (400, {"error": True, "message": "bad request, says the webapp"}, None,
     "bad request, says the webapp"),
    (401, {"error": True, "message": "Unauthorized"}, None, "Unauthorized"),
    (403, {"error": True, "message": "forbidden for this gateway"}, None,
     "forbidden for this gateway"),
    (404, {"error": True, "message": "no such endpoint"}, None, "no such endpoint"),
    (500, {"error": True, "message": "database is down"}, None, "database is down"),
    (503, {"error": True, "message": "maintenance"}, "application/json", "maintenance"),
    (502, "<html><body><h1>502 Bad Gateway</h1>nginx</body></html>", None, None),
    (500, "Internal Server Error", "text/plain", None),
])
def test_http_errors_are_recorded_and_nothing_is_lost(
        make_rig: Callable[..., Rig], status: int, body: Any, content_type: str | None,
        message: str | None) -> None:
    rig = make_rig()
    msg_id = _pipeline(rig)
    params: dict[str, Any] = {"status": status, "body": body}
    if content_type:
        params["content_type"] = content_type
    rig.webapp.set_fault("status", **params)
    report = rig.cycle()
    assert len(report.errors) == 1 and report.errors[0].startswith("exchange")
    error = rig.summary()["last_error"]
    assert error["status"] == status
    assert error["message"] == message
    assert f"HTTP {status}" in error["text"]
    if message is None:
        words = "502 Bad Gateway nginx" if status == 502 else "Internal Server Error"
        assert words in error["text"]
        assert "<" not in error["text"]
    else:
        assert message in error["text"]
    assert rig.summary()["webapp_failures"] == 1
    assert rig.raw()[-1]["body"]["updates"][0] == {"id": msg_id, "status": "PENDING",
                                                   "reason": None}
    _recovers(rig, msg_id)


@pytest.mark.parametrize("kind, params, words", [
    ("malformed", {}, "not valid JSON"),
    ("html", {}, "not valid JSON"),
    ("wrong_types", {"variant": "messages_string"}, '"messages" as a string'),
    ("wrong_types", {"variant": "messages_object"}, '"messages" as an object'),
    ("wrong_types", {"variant": "messages_number"}, '"messages" as a number'),
    ("wrong_types", {"variant": "top_level_list"}, "an array, not a JSON object"),
    ("wrong_types", {"body": b'"just a string"'}, "a string, not a JSON object"),
])
def test_unusable_answers_are_clear_errors(make_rig: Callable[..., Rig], kind: str,
                                           params: dict[str, Any], words: str) -> None:
    rig = make_rig()
    msg_id = _pipeline(rig)
    rig.webapp.set_fault(kind, **params)
    report = rig.cycle()
    assert len(report.errors) == 1
    error = rig.summary()["last_error"]
    assert words in error["text"], error
    assert error["status"] == 200
    _recovers(rig, msg_id)


@pytest.mark.parametrize("variant", ["items_not_objects", "id_null", "nested",
                                     "content_null", "id_number"])
def test_odd_items_in_an_answer_do_not_stop_the_gateway(make_rig: Callable[..., Rig],
                                                        variant: str) -> None:
    rig = make_rig()
    msg_id = _pipeline(rig)
    rig.webapp.set_fault("wrong_types", variant=variant)
    report = rig.cycle()
    assert report.errors == []
    assert report.invalid + report.new == (0 if variant == "items_not_objects" else 1)
    # A 2xx acknowledges the batch. (This fault answers 200 but drops what it was sent,
    # so the webapp never sees that SMS: a webapp bug no gateway can detect.)
    faulted = rig.raw()[-report.posts]  # the cycle's first POST
    assert faulted["fault"] == "wrong_types"
    assert faulted["body"]["messages"][0]["content"] == "waiting for the webapp"
    assert rig.summary()["incoming"]["WAITING"] == 0
    assert rig.summary()["last_error"] is None
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "SENT")
    # A number as id is of the wrong shape: not sent, but reported FAILED under the
    # number's decimal spelling, with the reason naming the field.
    assert len(rig.phone.sends) == 1
    if variant == "content_null":
        [update] = updates_for(rig.webapp, "w-content")
        assert update["status"] == "FAILED" and "missing content" in update["reason"]
    if variant == "id_number":
        [update] = updates_for(rig.webapp, "7")
        assert update["status"] == "FAILED"
        assert update["reason"] == "id is a number, not a string"


@pytest.mark.parametrize("kind, params, words", [
    ("redirect_loop", {}, "too many redirects"),
    ("redirect_loop", {"status": 307}, "too many redirects"),
    ("redirect_loop", {"status": 308}, "too many redirects"),
    ("huge", {"size": 11 * 1024 * 1024}, "larger than 10 MB"),
    ("gzip_bomb", {"size": 64 * 1024 * 1024}, "larger than 10 MB"),
    ("reset", {}, "broke"),
    ("timeout", {"seconds": 5}, "did not answer within 1 s"),
])
def test_transport_faults_are_errors_without_loss(make_rig: Callable[..., Rig], kind: str,
                                                  params: dict[str, Any], words: str) -> None:
    rig = make_rig(client={"read_timeout": 1.0})
    msg_id = _pipeline(rig)
    rig.webapp.set_fault(kind, **params)
    report = rig.cycle()
    assert len(report.errors) == 1 and report.errors[0].startswith("exchange")
    error = rig.summary()["last_error"]
    assert words in error["text"], error
    _recovers(rig, msg_id)


def test_messages_offered_in_a_broken_answer_are_not_lost(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    msg_id = rig.webapp.queue(NUMBER, "offered in a cut answer")
    rig.webapp.set_fault("reset")
    assert rig.cycle().errors
    assert rig.phone.sends == []
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "SENT")
    assert rig.phone.sends == [(NUMBER, "offered in a cut answer")]
    assert_clean(rig.webapp)


# --- idempotence ------------------------------------------------------------------------------

def test_offered_again_after_sent_is_not_sent_again(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    msg_id = rig.webapp.queue(NUMBER, "only once")
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "SENT")
    rig.cycle()
    rig.webapp.offer_again(msg_id)
    report = rig.cycle()
    assert report.known == 1 and report.new == 0
    assert rig.phone.sends == [(NUMBER, "only once")]
    assert rig.webapp.statuses()[msg_id] == ["UNSENT", "PENDING", "SENT", "SENT"]
    rig.cycles(3)
    assert len(rig.phone.sends) == 1
    assert_clean(rig.webapp)


def test_same_id_twice_in_one_answer_is_stored_once(make_rig: Callable[..., Rig],
                                                    scripted: ScriptedWebapp) -> None:
    rig = make_rig(webapp=scripted)
    twice = {"id": "dup", "to": NUMBER, "content": "twice in one answer"}
    scripted.script.append(Reply(body={"messages": [twice, dict(twice)]}))
    report = rig.cycle()
    assert report.new == 1 and report.known == 1
    assert rig.phone.sends == [(NUMBER, "twice in one answer")]
    out = rig.store.messages(rig.clock(), 10).outgoing
    assert [m.id for m in out] == ["dup"]
    rig.cycles(3)
    assert len(rig.phone.sends) == 1
    statuses = [u["status"] for p in scripted.posts() for u in p.body["updates"]
                if u["id"] == "dup"]
    assert statuses[-1] == "SENT" and "DELIVERED" not in statuses


def test_a_webapp_that_always_reoffers_never_causes_a_second_send(
        make_rig: Callable[..., Rig], scripted: ScriptedWebapp) -> None:
    rig = make_rig(webapp=scripted)
    scripted.default = Reply(body=_offer("again"))
    for _ in range(6):
        before = len(scripted.posts())
        report = rig.cycle()
        assert report.errors == []
        assert 1 <= len(scripted.posts()) - before <= MAX_ROUNDS
    assert rig.phone.sends == [(NUMBER, "text of again")]
    statuses = [u["status"] for p in scripted.posts() for u in p.body["updates"]]
    assert statuses[0] == "UNSENT" and statuses[-1] == "SENT"
    assert set(statuses) == {"UNSENT", "PENDING", "SENT"}


def test_reference_webapp_reoffering_until_a_status_sends_once(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    msg_id = rig.webapp.queue(NUMBER, "cht style")
    rig.webapp.set_fault("status", status=503)  # the POST carrying UNSENT fails
    rig.webapp.set_fault("status", status=503)  # and the next one too
    rig.cycle()
    rig.cycle()
    assert rig.webapp.status_of(msg_id) is None
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "SENT")
    assert rig.webapp.snapshot()["queued"][0]["offered"] >= 1
    assert rig.phone.sends == [(NUMBER, "cht style")]
    assert_clean(rig.webapp)


def test_an_archived_id_is_still_recognised(make_rig: Callable[..., Rig], tmp_path: Path,
                                            clock: Clock) -> None:
    rig = make_rig(state=tmp_path / "state")
    msg_id = rig.webapp.queue(NUMBER, "finished long ago")
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "SENT")
    rig.cycle()
    assert not any(rig.summary()["outgoing"].values())  # archived, not active
    assert list((tmp_path / "state" / "archive").glob("*.jsonl"))
    clock.advance(3600)
    # a restarted gateway: new Store, client and Gateway on the same folder
    store = Store(tmp_path / "state")
    with WebappClient(rig.webapp.url) as client:
        gateway = Gateway(store, client, rig.phone, Settings(), clock)
        rig.webapp.offer_again(msg_id)
        report = gateway.cycle()
    assert report.errors == [] and report.known == 1 and report.new == 0
    assert rig.phone.sends == [(NUMBER, "finished long ago")]
    assert rig.webapp.statuses()[msg_id] == ["UNSENT", "PENDING", "SENT", "SENT"]
    assert_clean(rig.webapp)


# --- retries -----------------------------------------------------------------------------------

def test_a_failed_send_is_retried_after_its_due_time(make_rig: Callable[..., Rig],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smsgw")
    rig = make_rig()
    rig.phone.fail_next_sends(1)
    msg_id = rig.webapp.queue(NUMBER, "second time lucky")
    failed_at = rig.clock()
    report = rig.cycle()
    assert report.failed_tries == 1
    due = from_iso(rig.summary()["next_retry"])
    assert due == failed_at + timedelta(minutes=1)
    while rig.clock() < due:
        rig.cycle()
        assert len(rig.phone.sends) == 1, rig.clock()
    rig.cycle()
    assert len(rig.phone.sends) == 2
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "SENT")
    # The failed try is not reported as UNSENT after PENDING: cht-core would move the
    # message back (statuses must never go backwards within an attempt).
    assert rig.webapp.statuses()[msg_id] == ["UNSENT", "PENDING", "SENT"]
    assert any(f"Sending SMS to {NUMBER} failed (cause: the phone recorded the SMS as failed) "
               "Retry #1 in 1 min" in r.getMessage() for r in caplog.records)
    assert_clean(rig.webapp)


def test_radio_off_gives_up_after_20_retries(make_rig: Callable[..., Rig], clock: Clock,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smsgw")
    rig = make_rig()
    rig.phone.radio_off = True
    msg_id = rig.webapp.queue(NUMBER, "never gets through")
    for _ in range(80):
        report = rig.gateway.cycle()
        assert report.errors == []
        if rig.webapp.status_of(msg_id) == "FAILED":
            break
        step = clock() + timedelta(seconds=10)
        clock.now = max(step, report.next_send) if report.next_send else step
    else:
        raise AssertionError("never gave up")
    assert len(rig.phone.sends) == 21
    assert rig.webapp.statuses()[msg_id] == ["UNSENT", "PENDING", "FAILED"]
    assert updates_for(rig.webapp, msg_id)[-1]["reason"] == "radio off"
    rows = rig.phone.read_outgoing(clock() - timedelta(days=2))
    assert len(rows) == 21
    for n in range(1, 21):  # try n+1 is retry #n, due backoff(n) after try n
        assert rows[n].date - rows[n - 1].date >= backoff(n) - timedelta(seconds=1)
    lines = [r.getMessage() for r in caplog.records]
    for n in range(1, 21):
        minutes = round(n ** 1.5)
        want = f"Sending SMS to {NUMBER} failed (cause: radio off) Retry #{n} in {minutes} min"
        assert sum(want in line for line in lines) == 1, want
    not_retrying = [line for line in lines if "Not retrying" in line]
    assert len(not_retrying) == 1
    assert f"Sending message to {NUMBER} failed (cause: radio off) Not retrying" \
        in not_retrying[0]
    assert rig.summary()["last_failures"][-1]["reason"] == "radio off"
    assert_clean(rig.webapp)


# --- rate limit -------------------------------------------------------------------------------

def test_rate_limit_30_parts_per_minute_in_arrival_order(make_rig: Callable[..., Rig],
                                                          clock: Clock) -> None:
    rig = make_rig(settings=Settings(max_parts_per_minute=30))
    ids = [rig.webapp.queue(f"+2547000{i:05d}", f"message {i:03d}") for i in range(100)]
    run_until(rig, lambda: all(rig.webapp.status_of(i) == "SENT" for i in ids), limit=40)
    assert [text for _, text in rig.phone.sends] == [f"message {i:03d}" for i in range(100)]
    rows = rig.phone.read_outgoing(clock() - timedelta(days=1))
    assert len(rows) == 100 and all(r.kind == SENT for r in rows)
    dates = sorted(r.date for r in rows)
    for start in dates:
        in_window = sum(1 for d in dates if start <= d < start + timedelta(seconds=60))
        assert in_window <= 30, start
    assert_clean(rig.webapp)


def test_a_wait_for_the_rate_budget_is_logged_once_per_message_not_every_cycle(
        make_rig: Callable[..., Rig], clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    rig = make_rig(settings=Settings(max_parts_per_minute=1))
    first = rig.webapp.queue("+254700000001", "goes first")
    second = rig.webapp.queue("+254700000002", "waits a minute")
    with caplog.at_level(logging.DEBUG, logger="smsgw"):
        for _ in range(6):  # within the minute: the second waits every cycle
            rig.cycle()
            clock.advance(5)
        run_until(rig, lambda: rig.webapp.status_of(second) == "SENT", limit=40)
    waits = [r for r in caplog.records if "rate limit" in r.getMessage()
             and second in r.getMessage()]
    assert len(waits) > 1, waits  # it did wait several cycles
    assert [r.levelno for r in waits].count(logging.INFO) == 1, waits
    assert rig.webapp.status_of(first) == "SENT"


# --- CDMA mode --------------------------------------------------------------------------------

LONG = " ".join(f"word{i:03d}" for i in range(60))[:400]


class HeldRowPhone(SimulatedPhone):
    """Writes no row for texts that `hold` matches until `release()`, like a slow radio."""

    def __init__(self, clock: Clock, hold: Callable[[str], bool]) -> None:
        super().__init__(clock)
        self.hold = hold
        self.held: list[tuple[str, str]] = []

    def send(self, number: str, text: str) -> None:
        if self.hold(text):
            self.sends.append((normalize_number(number), text))
            self.held.append((normalize_number(number), java_trim(text)))
            return
        super().send(number, text)

    def release(self) -> None:
        with self._lock:
            for number, text in self.held:
                self._add(SENT, number, text)
        self.held.clear()


class FailOncePhone(SimulatedPhone):
    """The first send whose text `fail` matches ends as a failed row."""

    def __init__(self, clock: Clock, fail: Callable[[str], bool]) -> None:
        super().__init__(clock)
        self.fail = fail
        self.failed = False

    def send(self, number: str, text: str) -> None:
        if not self.failed and self.fail(text):
            self.failed = True
            self.fail_next_sends(1)
        super().send(number, text)


def test_cdma_mode_sends_prefixed_single_parts(make_rig: Callable[..., Rig],
                                               clock: Clock) -> None:
    assert len(LONG) == 400
    phone = HeldRowPhone(clock, lambda text: text.startswith("2/"))
    rig = make_rig(settings=Settings(cdma_mode=True), phone=phone)
    msg_id = rig.webapp.queue(NUMBER, LONG)
    rig.cycles(4)
    texts = [text for _, text in phone.sends]
    assert len(texts) >= 3
    total = len(texts)
    for n, text in enumerate(texts, 1):
        assert text.startswith(f"{n}/{total} ")
        assert fits_one_sms(text)
    assert "".join(strip_prefix(t) for t in texts) == LONG
    # parts 1 and 3 have sent rows, part 2 has none yet: not SENT
    assert rig.webapp.statuses()[msg_id] == ["UNSENT", "PENDING"]
    phone.release()
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "SENT")
    assert len(phone.sends) == total
    assert rig.webapp.statuses()[msg_id] == ["UNSENT", "PENDING", "SENT"]
    assert_clean(rig.webapp)


def test_cdma_retry_resends_only_the_failed_part(make_rig: Callable[..., Rig],
                                                 clock: Clock) -> None:
    phone = FailOncePhone(clock, lambda text: text.startswith("2/"))
    rig = make_rig(settings=Settings(cdma_mode=True), phone=phone)
    msg_id = rig.webapp.queue(NUMBER, LONG)
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "SENT", limit=20)
    texts = [text for _, text in phone.sends]
    parts = texts[:-1]
    assert len(parts) >= 3
    assert texts[-1] == parts[1]  # only part 2 went again
    assert len(texts) == len(parts) + 1
    # The failed try is not reported as UNSENT after PENDING: cht-core would move the
    # message back (statuses must never go backwards within an attempt).
    assert rig.webapp.statuses()[msg_id] == ["UNSENT", "PENDING", "SENT"]
    assert_clean(rig.webapp)


# --- expiry, unknown outcomes, DELIVERED ------------------------------------------------------

def test_message_ttl_fails_an_unsent_message_as_expired(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(settings=Settings(max_parts_per_minute=1, message_ttl=30))
    first = rig.webapp.queue(NUMBER, "goes out")
    late = rig.webapp.queue("+254700000002", "waits for the rate limit")
    run_until(rig, lambda: rig.webapp.status_of(late) == "FAILED")
    assert rig.phone.sends == [(NUMBER, "goes out")]
    [failed] = [u for u in updates_for(rig.webapp, late) if u["status"] == "FAILED"]
    assert failed["reason"] == "expired"
    assert rig.webapp.status_of(first) == "SENT"
    rig.cycles(8)  # well past the rate window: never sent
    assert len(rig.phone.sends) == 1
    assert_clean(rig.webapp)


class BlindPhone(SimulatedPhone):
    """Takes the SMS but records no row while `blind`: the outcome cannot be known."""

    blind = True

    def send(self, number: str, text: str) -> None:
        if self.blind:
            self.sends.append((normalize_number(number), text))
            return
        super().send(number, text)


def test_unknown_outcome_fails_and_is_sent_again_only_on_request(
        make_rig: Callable[..., Rig], clock: Clock) -> None:
    phone = BlindPhone(clock)
    rig = make_rig(settings=Settings(confirm_timeout=60), phone=phone)
    msg_id = rig.webapp.queue(NUMBER, "into the void")
    handed_at = clock()
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "FAILED")
    assert clock() - handed_at > timedelta(seconds=60)
    [failed] = [u for u in updates_for(rig.webapp, msg_id) if u["status"] == "FAILED"]
    assert failed["reason"] == UNKNOWN_OUTCOME == "outcome unknown: no record on the phone"
    rig.cycles(20)  # minutes later: never sent again automatically
    assert len(phone.sends) == 1
    phone.blind = False
    result = rig.store.retry([msg_id], False, clock())
    assert result.retried == [msg_id]
    run_until(rig, lambda: rig.webapp.status_of(msg_id) == "SENT")
    assert len(phone.sends) == 2
    assert rig.webapp.statuses()[msg_id] == [
        "UNSENT", "PENDING", "FAILED", "UNSENT", "PENDING", "SENT"]
    assert_clean(rig.webapp)


def test_delivered_is_never_reported(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    ids = [rig.webapp.queue(f"+25470000000{i}", f"report me {i}") for i in range(3)]
    rig.phone.fail_next_sends(1)
    run_until(rig, lambda: all(rig.webapp.status_of(i) == "SENT" for i in ids))
    rig.cycles(12)  # minutes after SENT: still no DELIVERED, no more updates
    seen = [u["status"] for u in rig.webapp.updates()]
    assert "DELIVERED" not in seen
    assert set(seen) <= REPORTABLE
    for msg_id in ids:
        assert rig.webapp.statuses()[msg_id][-1] == "SENT"
    assert_clean(rig.webapp)


def test_protocol_headers_match_the_reference_webapp() -> None:
    from smsgw.testserver import PROTOCOL_HEADERS as SERVER_HEADERS
    from smsgw.webapp import HEADERS

    assert PROTOCOL_HEADERS == SERVER_HEADERS == HEADERS

