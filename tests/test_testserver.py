"""The reference webapp, driven over real HTTP on 127.0.0.1 with the standard library."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smsgw.testserver import (
    FAULT_KINDS,
    REDIRECT_LOOP_PATH,
    WRONG_TYPE_VARIANTS,
    ReferenceWebapp,
    _bomb_stream,
    _gzip_bomb_parts,
    _is_loopback,
)

HEADERS = {
    "Accept": "application/json",
    "Accept-Charset": "utf-8",
    "Accept-Encoding": "gzip",
    "Cache-Control": "no-cache",
    "Content-Type": "application/json",
}
REPO = Path(__file__).resolve().parents[1]


class Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        data = self.body
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        return json.loads(data)


def call(app: ReferenceWebapp, method: str, path: str | None = None, body: Any = None, *,
         headers: dict[str, str] | None = None, raw: bytes | None = None,
         timeout: float = 10) -> Answer:
    """One request on a fresh connection; `body` is sent as JSON unless `raw` is given."""
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=timeout)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path or app.path, body=data,
                     headers=HEADERS if headers is None else headers)
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def exchange(app: ReferenceWebapp, messages: Any = None, updates: Any = None,
             **kwargs: Any) -> Answer:
    return call(app, "POST", body={"messages": messages, "updates": updates}, **kwargs)


def offered_ids(answer: Answer) -> list[str]:
    assert answer.status == 200, answer.body
    return [m["id"] for m in answer.json()["messages"]]


def incoming(msg_id: str, content: str = "hello") -> dict[str, Any]:
    return {"id": msg_id, "from": "+15550111", "content": content,
            "sms_sent": 0, "sms_received": 1700000001000}


@pytest.fixture
def make_app() -> Iterator[Callable[..., ReferenceWebapp]]:
    apps: list[ReferenceWebapp] = []

    def make(**kwargs: Any) -> ReferenceWebapp:
        app = ReferenceWebapp(**kwargs)
        app.start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop()


@pytest.fixture
def app(make_app: Callable[..., ReferenceWebapp]) -> ReferenceWebapp:
    return make_app()


# protocol ------------------------------------------------------------------------------
def test_handshake(app: ReferenceWebapp) -> None:
    answer = call(app, "GET")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {"medic-gateway": True}
    assert app.snapshot()["counters"]["gets"] == 1
    assert app.url == f"http://127.0.0.1:{app.port}/smsgateway/"


def test_message_is_offered_until_a_status_is_seen(app: ReferenceWebapp) -> None:
    first = app.queue("+15550100", "one", id="m1")
    second = app.queue("+15550101", "two")
    assert first == "m1" and len(second) == 36  # a uuid4

    answer = exchange(app)
    assert answer.json() == {"messages": [
        {"id": "m1", "to": "+15550100", "content": "one"},
        {"id": second, "to": "+15550101", "content": "two"}]}
    assert offered_ids(exchange(app)) == ["m1", second]

    # the update counts in the same POST, as in cht-core (updates first, then outgoing)
    assert offered_ids(exchange(app, updates=[{"id": "m1", "status": "UNSENT"}])) == [second]
    assert offered_ids(exchange(app)) == [second]
    assert offered_ids(exchange(app, updates=[
        {"id": second, "status": "FAILED", "reason": "no service"},
        {"id": "m1", "status": "SENT", "reason": None}])) == []
    assert offered_ids(exchange(app)) == []

    assert app.status_of("m1") == "SENT"
    assert app.status_of(second) == "FAILED"
    assert app.status_of("nope") is None
    assert app.statuses() == {"m1": ["UNSENT", "SENT"], second: ["FAILED"]}
    queued = {q["id"]: q for q in app.snapshot()["queued"]}
    assert queued["m1"]["offered"] == 2 and queued[second]["offered"] == 4


def test_offer_again_until_a_new_status(app: ReferenceWebapp) -> None:
    app.queue("+15550100", "twice", id="t")
    assert offered_ids(exchange(app, updates=[{"id": "t", "status": "SENT"}])) == []
    app.offer_again("t")
    assert offered_ids(exchange(app)) == ["t"]
    assert offered_ids(exchange(app)) == ["t"]
    assert offered_ids(exchange(app, updates=[{"id": "t", "status": "SENT"}])) == []
    assert app.statuses() == {"t": ["SENT", "SENT"]}
    with pytest.raises(KeyError):
        app.offer_again("unknown")


def test_incoming_deduplicated_updates_and_raw_log_complete(app: ReferenceWebapp) -> None:
    app.queue("+15550100", "x", id="out1")
    exchange(app, messages=[incoming("a", "first copy"), incoming("b")],
             updates=[{"id": "out1", "status": "PENDING"}])
    exchange(app, messages=[incoming("a", "second copy")],
             updates=[{"id": "out1", "status": "PENDING"}, {"id": "out1", "status": "SENT"}])

    received = app.received()
    assert [m["id"] for m in received] == ["a", "b"]
    assert received[0]["content"] == "first copy"
    assert [(u["id"], u["status"]) for u in app.updates()] == [
        ("out1", "PENDING"), ("out1", "PENDING"), ("out1", "SENT")]
    snap = app.snapshot()
    assert snap["counters"]["posts"] == 2
    assert snap["counters"]["duplicate_messages"] == 1
    assert [r["body"]["messages"][0]["content"] for r in snap["raw"]] == [
        "first copy", "second copy"]
    assert [r["n"] for r in snap["raw"]] == [1, 2]
    assert snap["problems"] == []
    json.dumps(snap)  # JSON-able


@pytest.mark.parametrize("body", [{}, {"messages": None, "updates": None},
                                  {"messages": [], "updates": []}, {"extra": {"x": 1}}])
def test_null_missing_and_empty_lists_mean_none(app: ReferenceWebapp, body: Any) -> None:
    app.queue("+15550100", "x", id="q")
    answer = call(app, "POST", body=body)
    assert offered_ids(answer) == ["q"]
    assert app.received() == [] and app.updates() == []


def test_protocol_problems_are_listed_but_accepted(app: ReferenceWebapp) -> None:
    answer = exchange(app, messages=[{"id": "n", "content": "no sender"}],
                      updates=[{"id": "ghost", "status": "LOST"},
                               {"id": "ghost", "status": "FAILED"}])
    assert answer.status == 200
    assert app.received() == []  # cht-core ignores an SMS without `from`
    problems = "\n".join(app.snapshot()["problems"])
    for text in ("from is not a string", "unknown status 'LOST'", "FAILED without a reason",
                 "never queued"):
        assert text in problems


def test_batch_limit(make_app: Callable[..., ReferenceWebapp]) -> None:
    app = make_app(batch_limit=2)
    for n in range(3):
        app.queue("+15550100", str(n), id=f"b{n}")
    assert offered_ids(exchange(app)) == ["b0", "b1"]
    assert offered_ids(exchange(app, updates=[{"id": "b0", "status": "UNSENT"}])) == ["b1", "b2"]


def test_queue_same_id_replaces_and_reoffers(app: ReferenceWebapp) -> None:
    app.queue("+15550100", "old", id="same")
    exchange(app, updates=[{"id": "same", "status": "SENT"}])
    app.queue("+15550100", "new", id="same")
    assert exchange(app).json()["messages"] == [
        {"id": "same", "to": "+15550100", "content": "new"}]


# auth, headers, bodies -----------------------------------------------------------------
def test_basic_auth_required_when_set(make_app: Callable[..., ReferenceWebapp]) -> None:
    app = make_app(username="gw", password="s3cret é")
    assert app.url == f"http://gw:s3cret%20%C3%A9@127.0.0.1:{app.port}/smsgateway/"
    good = "Basic " + base64.b64encode("gw:s3cret é".encode("latin-1")).decode()
    bad = "Basic " + base64.b64encode(b"gw:wrong").decode()
    app.queue("+15550100", "x", id="q")

    for auth in (None, bad, "Bearer abc", "Basic !!!"):
        headers = dict(HEADERS, **({"Authorization": auth} if auth else {}))
        for method in ("GET", "POST"):
            answer = call(app, method, body={"messages": [incoming("a")]}, headers=headers)
            assert answer.status == 401
            assert answer.json()["error"] is True and answer.json()["message"]
            assert answer.headers["WWW-Authenticate"].startswith("Basic")
    assert app.received() == []
    assert app.snapshot()["queued"][0]["offered"] == 0

    headers = dict(HEADERS, Authorization=good)
    assert call(app, "GET", headers=headers).json() == {"medic-gateway": True}
    assert offered_ids(exchange(app, messages=[incoming("a")], headers=headers)) == ["q"]
    assert [m["id"] for m in app.received()] == ["a"]
    snap = app.snapshot()
    assert snap["counters"]["auth_failures"] == 8
    assert "Authorization" not in json.dumps(snap["raw"])


@pytest.mark.parametrize("name, value", [
    ("Accept", "*/*"),
    ("Accept", "application/json, text/plain"),
    ("Content-Type", "application/json; charset=utf-8"),
    ("Accept-Encoding", "gzip, deflate"),
    ("Accept-Charset", "UTF-8"),
    ("Cache-Control", None),
])
def test_strict_headers_compare_literally(app: ReferenceWebapp, name: str,
                                          value: str | None) -> None:
    headers = {k: v for k, v in HEADERS.items() if k != name}
    if value is not None:
        headers[name] = value
    app.queue("+15550100", "x", id="q")
    answer = exchange(app, messages=[incoming("a")], headers=headers)
    assert answer.status == 400
    assert answer.json()["error"] is True
    assert name in answer.json()["message"]
    assert app.received() == []
    snap = app.snapshot()
    assert snap["counters"]["header_violations"] == 1
    assert snap["header_violations"] == [
        {"method": "POST", "header": name, "expected": HEADERS[name], "got": value}]


def test_handshake_checks_headers_but_not_content_type(app: ReferenceWebapp) -> None:
    no_type = {k: v for k, v in HEADERS.items() if k != "Content-Type"}
    assert call(app, "GET", headers=no_type).status == 200
    assert call(app, "GET", headers=dict(no_type, Accept="*/*")).status == 400
    assert app.snapshot()["header_violations"][0]["method"] == "GET"


def test_lenient_headers_still_record_violations(make_app: Callable[..., ReferenceWebapp]) -> None:
    app = make_app(strict_headers=False)
    answer = exchange(app, messages=[incoming("a")], headers={"Content-Type": "text/plain"})
    assert answer.status == 200
    assert [m["id"] for m in app.received()] == ["a"]
    assert {v["header"] for v in app.snapshot()["header_violations"]} == set(HEADERS)


@pytest.mark.parametrize("raw, headers", [
    (b"{not json", HEADERS),
    (b"", HEADERS),
    (b"[1, 2]", HEADERS),
    (b'{"messages": "x"}', HEADERS),
    (b'{"updates": [1]}', HEADERS),
    (b'{"messages": []}\xff', HEADERS),
    (b"not gzip", dict(HEADERS, **{"Content-Encoding": "gzip"})),
])
def test_bad_bodies_rejected_with_error_json(app: ReferenceWebapp, raw: bytes,
                                             headers: dict[str, str]) -> None:
    app.queue("+15550100", "x", id="q")
    answer = call(app, "POST", raw=raw, headers=headers)
    assert answer.status == 400
    assert answer.json()["error"] is True and answer.json()["message"]
    assert app.snapshot()["queued"][0]["offered"] == 0
    assert app.snapshot()["counters"]["bad_requests"] == 1


def test_gzip_request_is_decoded(app: ReferenceWebapp) -> None:
    app.queue("+15550100", "x", id="q")
    body = gzip.compress(json.dumps({"messages": [incoming("gz", "Ünïcode ✓")]}).encode())
    answer = call(app, "POST", raw=body, headers=dict(HEADERS, **{"Content-Encoding": "gzip"}))
    assert offered_ids(answer) == ["q"]
    assert app.received()[0]["content"] == "Ünïcode ✓"
    assert app.snapshot()["raw"][0]["body"]["messages"][0]["id"] == "gz"


def test_unknown_content_encoding_is_refused(app: ReferenceWebapp) -> None:
    answer = call(app, "POST", raw=b"{}", headers=dict(HEADERS, **{"Content-Encoding": "br"}))
    assert answer.status == 415 and answer.json()["error"] is True


def test_gzip_responses_when_enabled_and_accepted(make_app: Callable[..., ReferenceWebapp]
                                                  ) -> None:
    plain = make_app()
    assert exchange(plain).headers.get("Content-Encoding") is None

    app = make_app(gzip_responses=True, strict_headers=False)
    app.queue("+15550100", "x" * 500, id="q")
    answer = exchange(app)
    assert answer.headers["Content-Encoding"] == "gzip"
    assert len(answer.body) < 500
    assert answer.json()["messages"][0]["id"] == "q"
    assert call(app, "GET").headers["Content-Encoding"] == "gzip"

    for refused in ("identity", "gzip;q=0", "deflate"):
        answer = exchange(app, headers=dict(HEADERS, **{"Accept-Encoding": refused}))
        assert answer.headers.get("Content-Encoding") is None
        assert json.loads(answer.body)["messages"][0]["id"] == "q"


def test_other_paths_and_methods(app: ReferenceWebapp) -> None:
    assert call(app, "GET", "/elsewhere").status == 404
    assert call(app, "PUT", body={}).status == 405
    assert call(app, "POST", "/smsgateway?key=abc", body={}).status == 200  # query kept apart


def test_urllib_client_round_trip(make_app: Callable[..., ReferenceWebapp]) -> None:
    app = make_app()
    app.queue("+15550100", "x", id="q")
    request = urllib.request.Request(app.url, data=b'{"updates": []}', headers=HEADERS)
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.load(resp) == {"messages": [{"id": "q", "to": "+15550100", "content": "x"}]}


# faults --------------------------------------------------------------------------------
def assert_not_recorded(app: ReferenceWebapp, kind: str) -> None:
    snap = app.snapshot()
    assert app.received() == [] and app.updates() == [] and app.statuses() == {}
    assert snap["queued"][0]["offered"] == 0
    assert snap["raw"][-1]["fault"] == kind
    assert snap["raw"][-1]["body"]["messages"][0]["id"] == "in1"  # the attempt is logged


def then_normal(app: ReferenceWebapp) -> None:
    """After the fault, the next POST is handled and recorded."""
    assert offered_ids(exchange(app, messages=[incoming("in1")],
                                updates=[{"id": "q", "status": "UNSENT"}])) == []
    assert [m["id"] for m in app.received()] == ["in1"]
    assert app.status_of("q") == "UNSENT"


def faulted_post(app: ReferenceWebapp, kind: str, **params: Any) -> Answer:
    app.queue("+15550100", "x", id="q")
    app.set_fault(kind, **params)
    return exchange(app, messages=[incoming("in1")], updates=[{"id": "q", "status": "SENT"}])


def test_fault_status_default_is_json_error(app: ReferenceWebapp) -> None:
    answer = faulted_post(app, "status")
    assert answer.status == 500
    assert answer.json() == {"error": True, "message": "injected fault: HTTP 500"}
    assert_not_recorded(app, "status")
    assert app.snapshot()["counters"]["errors"] == 1
    then_normal(app)


def test_fault_status_with_html_page_and_headers(app: ReferenceWebapp) -> None:
    answer = faulted_post(app, "status", status=502, body="<html>Bad Gateway</html>",
                          headers={"Retry-After": "5"})
    assert answer.status == 502
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.headers["Retry-After"] == "5"
    assert answer.body == b"<html>Bad Gateway</html>"
    assert_not_recorded(app, "status")
    then_normal(app)


@pytest.mark.parametrize("kind, content_type", [("html", "text/html"),
                                                ("malformed", "application/json")])
def test_fault_200_with_unusable_body(app: ReferenceWebapp, kind: str, content_type: str
                                      ) -> None:
    answer = faulted_post(app, kind)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith(content_type)
    with pytest.raises(ValueError):
        json.loads(answer.body)
    assert_not_recorded(app, kind)
    then_normal(app)


@pytest.mark.parametrize("variant", sorted(WRONG_TYPE_VARIANTS))
def test_fault_wrong_types(app: ReferenceWebapp, variant: str) -> None:
    answer = faulted_post(app, "wrong_types", variant=variant)
    assert answer.status == 200
    assert answer.json() == WRONG_TYPE_VARIANTS[variant]
    body = answer.json()
    messages = body.get("messages") if isinstance(body, dict) else body
    well_formed = isinstance(messages, list) and all(
        isinstance(m, dict) and all(isinstance(m.get(k), str) and m.get(k)
                                    for k in ("id", "to", "content")) for m in messages)
    assert not well_formed or not isinstance(body, dict)
    assert_not_recorded(app, "wrong_types")
    then_normal(app)


def test_fault_wrong_types_custom_body(app: ReferenceWebapp) -> None:
    assert faulted_post(app, "wrong_types", body={"messages": [True]}).json() == {
        "messages": [True]}


def test_fault_slow_delays_and_records(app: ReferenceWebapp) -> None:
    answer = faulted_post(app, "slow", seconds=0.3)
    assert answer.status == 200 and answer.json() == {"messages": []}
    assert [m["id"] for m in app.received()] == ["in1"]
    assert app.status_of("q") == "SENT"
    assert app.snapshot()["raw"][-1]["fault"] == "slow"


def test_fault_slow_past_client_timeout_still_records(app: ReferenceWebapp) -> None:
    app.set_fault("slow", seconds=1.0)
    with pytest.raises(TimeoutError):
        exchange(app, messages=[incoming("late")], timeout=0.2)
    deadline = time.monotonic() + 10
    while not app.received() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m["id"] for m in app.received()] == ["late"]


def test_fault_timeout_gives_no_answer(app: ReferenceWebapp) -> None:
    app.queue("+15550100", "x", id="q")
    app.set_fault("timeout", seconds=60)
    with pytest.raises(TimeoutError):
        exchange(app, messages=[incoming("in1")], timeout=0.5)
    assert_not_recorded(app, "timeout")
    then_normal(app)  # other connections are served meanwhile


def test_fault_reset_cuts_the_body(app: ReferenceWebapp) -> None:
    app.queue("+15550100", "x" * 200, id="q")
    app.set_fault("reset")
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    try:
        conn.request("POST", app.path, body=json.dumps({"messages": [incoming("in1")]}),
                     headers=HEADERS)
        resp = conn.getresponse()
        assert resp.status == 200
        length = int(resp.headers["Content-Length"])
        assert length > 200
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        conn.close()
    assert_not_recorded(app, "reset")
    then_normal(app)


def read_start(app: ReferenceWebapp, kind: str) -> tuple[http.client.HTTPResponse, bytes]:
    app.queue("+15550100", "x", id="q")
    app.set_fault(kind)
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    conn.request("POST", app.path, body=json.dumps({"messages": [incoming("in1")]}),
                 headers=HEADERS)
    resp = conn.getresponse()
    first = resp.read(64 * 1024)
    conn.close()
    return resp, first


def test_fault_huge_streams_50_mb(app: ReferenceWebapp) -> None:
    resp, first = read_start(app, "huge")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert int(resp.headers["Content-Length"]) >= 50 * 1024 * 1024
    assert first.startswith(b'{"messages": [], "padding": "xxx')
    assert len(first) == 64 * 1024
    assert_not_recorded(app, "huge")
    then_normal(app)


def test_fault_huge_small_size_is_valid_json(app: ReferenceWebapp) -> None:
    app.set_fault("huge", size=100_000)
    answer = exchange(app)
    assert len(answer.body) == 100_000
    assert answer.json()["messages"] == []


def test_fault_gzip_bomb(app: ReferenceWebapp) -> None:
    resp, first = read_start(app, "gzip_bomb")
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert int(resp.headers["Content-Length"]) < 2 * 1024 * 1024
    inflated = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(first, 8 * 1024 * 1024)
    assert inflated.startswith(b'{"messages": []   ')
    assert_not_recorded(app, "gzip_bomb")
    then_normal(app)


def test_gzip_bomb_stream_is_valid_and_as_large_as_said() -> None:
    for size in (16, 1024 * 1024, 3 * 1024 * 1024 + 7):
        data = gzip.decompress(b"".join(_bomb_stream(*_gzip_bomb_parts(size))))
        assert len(data) == size
        assert json.loads(data) == {"messages": []}
    head, piece, repeat, tail = _gzip_bomb_parts(1_100_000_000)
    assert len(head) + len(piece) * repeat + len(tail) < 2 * 1024 * 1024
    assert int.from_bytes(tail[-4:], "little") == 1_100_000_000  # gzip ISIZE trailer


def test_fault_redirect_loop(app: ReferenceWebapp) -> None:
    app.queue("+15550100", "x", id="q")
    app.set_fault("redirect_loop")
    answer = call(app, "POST", f"{app.path}?key=abc",
                  body={"messages": [incoming("in1")], "updates": [{"id": "q", "status": "SENT"}]})
    assert answer.status == 302
    assert answer.headers["Location"] == f"{REDIRECT_LOOP_PATH}?key=abc"
    for method in ("GET", "POST"):
        hop = call(app, method, answer.headers["Location"], body={})
        assert hop.status == 302 and hop.headers["Location"] == answer.headers["Location"]
    assert_not_recorded(app, "redirect_loop")

    app.set_fault("redirect_loop")
    request = urllib.request.Request(app.url, data=b"{}", headers=HEADERS)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 302
    then_normal(app)


def test_faults_count_and_order(app: ReferenceWebapp) -> None:
    app.set_fault("status", count=2, status=503)
    app.set_fault("html")
    assert [f["kind"] for f in app.snapshot()["faults"]] == ["status", "status", "html"]
    assert call(app, "GET").status == 200  # a GET uses no fault
    assert [exchange(app).status for _ in range(3)] == [503, 503, 200]
    assert exchange(app).json() == {"messages": []}
    app.set_fault("status", count=5)
    app.clear_faults()
    assert exchange(app).status == 200
    assert app.snapshot()["counters"]["faults_served"] == 3


def test_set_fault_validates(app: ReferenceWebapp) -> None:
    with pytest.raises(ValueError):
        app.set_fault("explode")
    with pytest.raises(ValueError):
        app.set_fault("slow", secs=1)
    with pytest.raises(ValueError):
        app.set_fault("status", count=0)
    with pytest.raises(ValueError):
        app.set_fault("wrong_types", variant="nope")
    with pytest.raises(ValueError):
        app.set_fault("status", status=1000)
    assert app.snapshot()["faults"] == []


def test_every_documented_kind_is_tested() -> None:
    tested = {"status", "html", "malformed", "wrong_types", "slow", "timeout", "reset",
              "huge", "gzip_bomb", "redirect_loop",
              "bad_entry"}  # in test_testserver_flavours.py, for every flavour
    assert set(FAULT_KINDS) == tested


# control API ---------------------------------------------------------------------------
def control(app: ReferenceWebapp, method: str, path: str, body: Any = None) -> Answer:
    return call(app, method, path, body=body, headers={"Content-Type": "application/json"})


def test_control_api_round_trip(app: ReferenceWebapp) -> None:
    answer = control(app, "POST", "/api/queue", {"to": "+15550100", "content": "hi", "id": "c1"})
    assert answer.json() == {"id": "c1"}
    generated = control(app, "POST", "/api/queue", {"to": "+15550100", "content": "yo"}).json()
    assert offered_ids(exchange(app)) == ["c1", generated["id"]]

    assert control(app, "POST", "/api/faults", {"kind": "status", "count": 2,
                                                "status": 401}).status == 200
    assert [exchange(app).status for _ in range(2)] == [401, 401]
    control(app, "POST", "/api/faults", {"kind": "html"})
    assert control(app, "DELETE", "/api/faults").json() == {"faults": []}

    exchange(app, messages=[incoming("in")], updates=[{"id": "c1", "status": "SENT"}])
    control(app, "POST", "/api/offer_again", {"id": "c1"})
    state = control(app, "GET", "/api/state").json()
    assert state == json.loads(json.dumps(app.snapshot()))
    assert state["statuses"] == {"c1": ["SENT"]}
    assert [m["id"] for m in state["received"]] == ["in"]
    assert {q["id"]: q["awaiting_status"] for q in state["queued"]} == {
        "c1": True, generated["id"]: True}
    assert state["counters"]["posts"] == 4

    assert control(app, "POST", "/api/reset").status == 200
    state = control(app, "GET", "/api/state").json()
    assert state["queued"] == [] and state["raw"] == [] and state["counters"]["posts"] == 0


@pytest.mark.parametrize("method, path, body, status", [
    ("POST", "/api/queue", {"to": "+1"}, 400),
    ("POST", "/api/faults", {"kind": "explode"}, 400),
    ("POST", "/api/faults", {"kind": "slow", "nope": 1}, 400),
    ("POST", "/api/offer_again", {"id": "unknown"}, 400),
    ("POST", "/api/queue", [1], 400),
    ("GET", "/api/nothing", None, 404),
])
def test_control_api_errors(app: ReferenceWebapp, method: str, path: str, body: Any,
                            status: int) -> None:
    answer = control(app, method, path, body)
    assert answer.status == status
    assert answer.json()["error"] is True


def test_control_api_answers_loopback_only() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1")
    assert _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("192.168.1.20") and not _is_loopback("::ffff:10.0.0.1")


# life cycle ----------------------------------------------------------------------------
def test_stop_is_prompt_during_timeout_fault(make_app: Callable[..., ReferenceWebapp]) -> None:
    app = make_app()
    app.set_fault("timeout", seconds=60)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            exchange(app, timeout=30)
        except BaseException as exc:  # noqa: BLE001 - any error is what we expect
            errors.append(exc)

    before = set(threading.enumerate())
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while app.snapshot()["counters"]["faults_served"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.snapshot()["counters"]["faults_served"] == 1
    handlers = [t for t in set(threading.enumerate()) - before if "process_request" in t.name]
    assert handlers

    started = time.monotonic()
    app.stop()
    assert time.monotonic() - started < 10  # did not wait for the 60 s fault
    thread.join(10)
    assert not thread.is_alive()
    for handler in handlers:  # the fault's wait was cut short, no thread left sleeping
        handler.join(10)
        assert not handler.is_alive()
    assert errors and isinstance(errors[0], (ConnectionError, http.client.HTTPException))


def test_stop_cuts_keep_alive_connections_and_restart_keeps_port(
        make_app: Callable[..., ReferenceWebapp]) -> None:
    app = make_app()
    app.queue("+15550100", "x", id="q")
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    conn.request("GET", app.path, headers=HEADERS)
    assert conn.getresponse().read() == b'{"medic-gateway": true}'
    port = app.port
    app.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", app.path, headers=HEADERS)
        conn.getresponse().read()
    conn.close()
    with pytest.raises(ConnectionError):
        call(app, "GET", timeout=2)

    assert app.start() == f"http://127.0.0.1:{port}/smsgateway/"
    assert offered_ids(exchange(app)) == ["q"]  # state survives a restart


def test_serve_prints_url_answers_and_stops_on_ctrl_c() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "from smsgw.testserver import serve; "
         "serve('127.0.0.1', 0, username='gw', password='hunter2')"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        printed = [proc.stdout.readline()]
        while "Ctrl-C" not in printed[-1] and printed[-1]:
            printed.append(proc.stdout.readline())
        first = printed[0].strip()
        url = first.rsplit(" ", 1)[-1]
        assert url.startswith("http://gw:***@127.0.0.1:") and url.endswith("/smsgateway/")
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        base = f"http://127.0.0.1:{port}"

        request = urllib.request.Request(f"{base}/api/queue", method="POST",
                                         data=b'{"to": "+15550100", "content": "hi"}')
        with urllib.request.urlopen(request, timeout=10) as resp:
            msg_id = json.load(resp)["id"]
        auth = "Basic " + base64.b64encode(b"gw:hunter2").decode()
        request = urllib.request.Request(f"{base}/smsgateway/", data=b"{}",
                                         headers=dict(HEADERS, Authorization=auth))
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert [m["id"] for m in json.load(resp)["messages"]] == [msg_id]
        with pytest.raises(urllib.error.HTTPError):  # 401, and quietly
            urllib.request.urlopen(f"{base}/smsgateway/", timeout=10)

        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert out == ""  # the URL and the control API are printed once
    assert "/api/state" in "".join(printed) and "hunter2" not in "".join(printed)
    assert err == ""  # no per-request lines


def test_serve_in_process_with_stop_event() -> None:
    import io

    from smsgw.testserver import serve

    out = io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=("127.0.0.1", 0),
                              kwargs={"out": out, "stop_event": stop}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while "listening" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    url = out.getvalue().splitlines()[0].rsplit(" ", 1)[-1]
    with urllib.request.urlopen(urllib.request.Request(url, headers=HEADERS), timeout=10) as r:
        assert json.load(r) == {"medic-gateway": True}
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
