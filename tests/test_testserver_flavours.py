"""The testserver's flavours "cht" and "php" and the bad_entry fault, over real HTTP.

Each test reproduces one behaviour read in the real servers' code: cht-core
(api/src/routing.js, server-utils.js, controllers/sms-gateway.js, services/messaging.js)
and the multiOTP SMSGateway PHP class (src/SMSGateway.php).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from smsgw.testserver import (
    BAD_ENTRY_VARIANTS,
    CHT_BATCH,
    FLAVOURS,
    ReferenceWebapp,
    php_auth_hash,
    serve,
)

HEADERS = {
    "Accept": "application/json",
    "Accept-Charset": "utf-8",
    "Accept-Encoding": "gzip",
    "Cache-Control": "no-cache",
    "Content-Type": "application/json",
}
Make = Callable[..., ReferenceWebapp]


class Answer:
    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self.raw = resp.read()  # chunked transfer decoded, gzip not
        self.body = (gzip.decompress(self.raw)
                     if resp.headers.get("Content-Encoding") == "gzip" else self.raw)

    def json(self) -> Any:
        return json.loads(self.body)


def call(app: ReferenceWebapp, method: str = "POST", body: Any = None, *,
         headers: dict[str, str] | None = None, raw: bytes | None = None,
         target: str | None = None) -> Answer:
    """One request on a fresh connection to the endpoint (with the app's query)."""
    if target is None:
        parts = urlsplit(app.url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    try:
        conn.request(method, target, body=data, headers=HEADERS if headers is None else headers)
        return Answer(conn.getresponse())
    finally:
        conn.close()


def post(app: ReferenceWebapp, messages: Any = None, updates: Any = None,
         **kwargs: Any) -> Answer:
    body: dict[str, Any] = {}
    if messages is not None:
        body["messages"] = messages
    if updates is not None:
        body["updates"] = updates
    return call(app, "POST", body, **kwargs)


def ids(answer: Answer) -> list[Any]:
    assert answer.status == 200, answer.body
    return [m["id"] for m in answer.json().get("messages", [])]


def incoming(msg_id: Any, content: Any = "hello", sender: Any = "+15550111") -> dict[str, Any]:
    return {"id": msg_id, "from": sender, "content": content,
            "sms_sent": 0, "sms_received": 1700000001000}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def make() -> Iterator[Make]:
    apps: list[ReferenceWebapp] = []

    def start(**kwargs: Any) -> ReferenceWebapp:
        app = ReferenceWebapp("127.0.0.1", 0, **kwargs)
        app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


@pytest.fixture
def cht(make: Make) -> ReferenceWebapp:
    return make(flavour="cht")


@pytest.fixture
def php(make: Make) -> ReferenceWebapp:
    return make(flavour="php")


# construction ----------------------------------------------------------------------------
def test_flavours_and_their_urls(make: Make) -> None:
    assert FLAVOURS == ("reference", "cht", "php")
    assert make().url.endswith("/smsgateway/")
    assert make(flavour="cht").url.endswith("/api/sms")  # cht-core's real endpoint
    php = make(flavour="php")
    assert php.url.endswith(f"/smsgateway/?id=demo&h={php_auth_hash('demo')}")
    assert make(flavour="php", query={"id": "dev1"}).query == {
        "id": "dev1", "h": php_auth_hash("dev1")}
    with pytest.raises(ValueError):
        ReferenceWebapp(flavour="django")
    with pytest.raises(ValueError):
        ReferenceWebapp(flavour="cht", path="/api/queue")


def test_php_auth_hash_is_the_class_formula() -> None:
    assert php_auth_hash("demo") == hashlib.md5(b"secret#salt@demo").hexdigest()[:6]
    assert php_auth_hash("demo", "other") == hashlib.md5(b"other#salt@demo").hexdigest()[:6]


# cht -------------------------------------------------------------------------------------
def test_cht_handshake(cht: ReferenceWebapp) -> None:
    answer = call(cht, "GET")
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert answer.body == b'{"medic-gateway":true}'
    assert answer.headers["ETag"].startswith('W/"16-')


@pytest.mark.parametrize("content_type", [
    "application/json; charset=utf-8", "text/plain", "Application/JSON", None])
def test_cht_content_type_must_be_exactly_application_json(
        cht: ReferenceWebapp, content_type: str | None) -> None:
    cht.queue("+15550100", "x", id="q")
    headers = {k: v for k, v in HEADERS.items() if k != "Content-Type"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    answer = post(cht, [incoming("in1")], headers=headers)
    assert answer.status == 400
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert answer.json() == {"code": 400, "error": "Content-Type must be application/json"}
    # respond(): text/plain, the bare message, when the client does not prefer JSON
    answer = post(cht, [incoming("in1")], headers=dict(headers, Accept="*/*"))
    assert answer.status == 400
    assert answer.headers["Content-Type"] == "text/plain"
    assert answer.body == b"Content-Type must be application/json"
    assert cht.received() == [] and cht.snapshot()["queued"][0]["offered"] == 0
    assert cht.cht_state_of("q") == "pending"


def test_cht_content_type_is_checked_before_the_password(make: Make) -> None:
    app = make(flavour="cht", username="gw", password="pw")
    answer = post(app, [], headers=dict(HEADERS, **{"Content-Type": "text/plain"}))
    assert answer.status == 400


def test_cht_bad_password_with_json_accept_is_401_json_without_www_authenticate(
        make: Make) -> None:
    app = make(flavour="cht", username="gw", password="pw")
    for auth in (None, basic("gw", "wrong"), "Bearer abc"):
        headers = dict(HEADERS, **({"Authorization": auth} if auth else {}))
        for method in ("GET", "POST"):
            answer = call(app, method, {"messages": [incoming("a")]}, headers=headers)
            assert answer.status == 401
            assert answer.json() == {"code": 401, "error": "unauthorized"}
            assert "WWW-Authenticate" not in answer.headers
            assert answer.headers["logout-authorization"] == "CHT-Core API"
    assert app.received() == []
    good = dict(HEADERS, Authorization=basic("gw", "pw"))
    assert call(app, "GET", headers=good).json() == {"medic-gateway": True}
    assert post(app, [incoming("a")], headers=good).status == 200
    assert [m["id"] for m in app.received()] == ["a"]


def test_cht_bad_password_with_another_accept_redirects_to_login(make: Make) -> None:
    app = make(flavour="cht", username="gw", password="pw")
    headers = dict(HEADERS, Accept="*/*", Authorization=basic("gw", "wrong"),
                   **{"User-Agent": "smsgw/1.0 python-requests/2.32"})
    answer = post(app, [], headers=headers, target="/api/sms?key=a/b&x=1")
    assert answer.status == 302
    location = answer.headers["Location"]
    assert location == "/medic/login?redirect=%2Fapi%2Fsms%3Fkey%3Da%2Fb%26x%3D1"
    assert answer.headers["Set-Cookie"].startswith("login=force;")
    assert "WWW-Authenticate" not in answer.headers
    login = call(app, "GET", headers={"Accept": "*/*"}, target=location)
    assert login.status == 200 and login.headers["Content-Type"].startswith("text/html")
    assert b"<form" in login.body

    # urllib follows it (a POST becomes a GET) and ends on the HTML page with a 200
    request = urllib.request.Request(f"{app.base_url}{app.path}", data=b"{}", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200 and resp.url.endswith("/medic/login?redirect=%2Fapi%2Fsms")

    # no User-Agent, or the Android gateway's: not a human, prompted for Basic auth
    for agent in (None, "Dalvik/2.1.0 (Linux; Android 9) medic.gateway.alert.generic/1.0"):
        headers = dict(HEADERS, Accept="text/html")
        if agent:
            headers["User-Agent"] = agent
        answer = post(app, [], headers=headers)
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"] == 'Basic realm="Medic Web Services"'
        assert answer.body == b"not logged in"


def test_cht_failed_logins_are_rate_limited(make: Make) -> None:
    app = make(flavour="cht", username="gw", password="pw")
    wrong = dict(HEADERS, Authorization=basic("gw", "wrong"))
    assert [call(app, "GET", headers=wrong).status for _ in range(10)] == [401] * 10
    right = dict(HEADERS, Authorization=basic("gw", "pw"))
    answer = post(app, [incoming("a")], headers=right)  # keyed by address: right or not
    assert answer.status == 429
    assert answer.json() == {"code": 429, "error": "Too Many Requests"}
    assert app.received() == []
    assert call(app, "GET", headers=HEADERS).status == 401  # no credentials: not a login
    assert app.snapshot()["counters"]["rate_limited"] == 1


def test_cht_query_is_required_when_configured(make: Make) -> None:
    app = make(flavour="cht", query={"key": "abc"})
    assert app.url.endswith("/api/sms?key=abc")
    assert post(app, [], target="/api/sms?key=wrong").json() == {
        "code": 401, "error": "unauthorized"}
    assert post(app, []).status == 200


def test_cht_offers_at_most_25_on_every_post_until_a_status(cht: ReferenceWebapp) -> None:
    queued = [cht.queue("+15550100", f"m{n}", id=f"m{n:02}") for n in range(30)]
    assert CHT_BATCH == 25
    first = post(cht, [], [])
    assert first.json()["messages"][0] == {"content": "m0", "to": "+15550100", "id": "m00"}
    assert ids(first) == queued[:25]
    assert cht.cht_state_of("m00") == "forwarded-to-gateway"
    assert cht.cht_state_of("m29") == "pending"
    assert ids(post(cht)) == queued[:25]  # again, and the last five still wait
    # statuses apply before the answer is built; UNSENT (received-by-gateway) stops it
    answer = post(cht, updates=[{"id": m, "status": "UNSENT"} for m in queued[:10]])
    assert ids(answer) == queued[10:30]
    assert cht.cht_state_of("m00") == "received-by-gateway"
    assert [h["state"] for h in cht.cht_history("m00")] == [
        "pending", "forwarded-to-gateway", "received-by-gateway"]
    snap = cht.snapshot()
    assert snap["flavour"] == "cht"
    queued_state = {q["id"]: q for q in snap["queued"]}
    assert queued_state["m00"]["offered"] == 2 and queued_state["m00"]["awaiting_status"] is False
    assert queued_state["m29"]["cht_state"] == "forwarded-to-gateway"
    assert queued_state["m29"]["awaiting_status"] is True


def test_cht_state_can_go_backwards(cht: ReferenceWebapp) -> None:
    cht.queue("+15550100", "x", id="m")
    post(cht)
    post(cht, updates=[{"id": "m", "status": "SENT"}, {"id": "m", "status": "PENDING"}])
    assert cht.cht_state_of("m") == "forwarded-by-gateway"  # after sent
    post(cht, updates=[{"id": "m", "status": "DELIVERED"}])
    post(cht, updates=[{"id": "m", "status": "UNSENT"}])
    assert cht.cht_state_of("m") == "received-by-gateway"
    post(cht, updates=[{"id": "m", "status": "UNSENT"}])  # same state, no details: no entry
    post(cht, updates=[{"id": "m", "status": "FAILED", "reason": "radio off"},
                       {"id": "m", "status": "FAILED", "reason": "radio off"}])
    post(cht, updates=[{"id": "m", "status": "LOST"}])
    history = cht.cht_history("m")
    assert [h["state"] for h in history] == [
        "pending", "forwarded-to-gateway", "sent", "forwarded-by-gateway", "delivered",
        "received-by-gateway", "failed", "failed", "unrecognised"]
    assert history[6]["details"] == {"reason": "radio off"}
    assert history[-1]["details"] == {"gateway_status": "LOST"}
    assert [h["post"] for h in history] == [None, 1, 2, 2, 3, 4, 6, 6, 7]
    assert cht.statuses()["m"] == ["SENT", "PENDING", "DELIVERED", "UNSENT", "UNSENT",
                                   "FAILED", "FAILED", "LOST"]
    problems = "\n".join(cht.snapshot()["problems"])
    assert "went back from 'sent' to 'forwarded-by-gateway'" in problems
    assert "went back from 'delivered' to 'received-by-gateway'" in problems
    assert ids(post(cht)) == []  # any status, even an unknown one, stops the offers
    state = json.loads(urllib.request.urlopen(f"{cht.base_url}/api/state", timeout=10).read())
    assert state["flavour"] == "cht"
    assert state["queued"][0]["cht_state"] == "unrecognised"
    assert len(state["queued"][0]["cht_history"]) == 9


def test_cht_offer_again_and_queue_again_make_it_pending(cht: ReferenceWebapp) -> None:
    cht.queue("+15550100", "x", id="m")
    assert ids(post(cht, updates=[{"id": "m", "status": "SENT"}])) == []
    cht.offer_again("m")
    assert cht.cht_state_of("m") == "pending"
    assert ids(post(cht)) == ["m"]
    cht.queue("+15550100", "y", id="m")
    assert post(cht).json()["messages"] == [{"content": "y", "to": "+15550100", "id": "m"}]


def test_cht_incoming_without_id_from_or_content_is_dropped_silently(
        cht: ReferenceWebapp) -> None:
    answer = post(cht, [
        {"from": "+15550111", "content": "no id"},
        incoming("no-from", sender=""),
        incoming("no-content", content=""),
        incoming("zero", content=0),
        "a string entry",
        [1, 2],
        incoming("ok"),
        incoming("ok", content="same id, same request"),
        incoming(7, content="a number id is kept"),
    ])
    assert answer.status == 200 and answer.json() == {"messages": []}
    assert [(m["id"], m["content"]) for m in cht.received()] == [
        ("ok", "hello"), ("ok", "same id, same request"), (7, "a number id is kept")]
    assert post(cht, [incoming("ok", "again"), incoming(7), incoming("new")]).status == 200
    assert [m["id"] for m in cht.received()][3:] == ["new"]  # earlier ids are ignored
    assert cht.snapshot()["counters"]["duplicate_messages"] == 2
    problems = "\n".join(cht.snapshot()["problems"])
    assert problems.count("dropped silently") == 6
    assert "saved twice" in problems


@pytest.mark.parametrize("raw", [b"{not json", b'{"messages": [}', b'"just a string"', b"  ",
                                 b'{"messages": NaN}'])
def test_cht_malformed_json_is_500_even_before_auth(make: Make, raw: bytes) -> None:
    app = make(flavour="cht", username="gw", password="pw")
    app.queue("+15550100", "x", id="q")
    answer = call(app, "POST", raw=raw)  # no credentials at all
    assert answer.status == 500
    assert answer.json() == {"code": 500, "error": "Server error"}
    answer = call(app, "POST", raw=raw, headers=dict(HEADERS, Accept="*/*"))
    assert answer.status == 500 and answer.body == b"Server error"
    assert app.snapshot()["queued"][0]["offered"] == 0
    assert app.snapshot()["counters"]["server_errors"] == 2


def test_cht_empty_body_is_an_empty_object(cht: ReferenceWebapp) -> None:
    cht.queue("+15550100", "x", id="q")
    assert ids(call(cht, "POST", raw=b"")) == ["q"]
    assert ids(call(cht, "POST", raw=b"[1, 2]")) == ["q"]  # req.body.messages: undefined


def test_cht_wrong_shapes_that_crash_the_handler(cht: ReferenceWebapp) -> None:
    cht.queue("+15550100", "x", id="q")
    for body in ({"messages": None}, {"messages": {"id": "a"}}, {"messages": "x"},
                 {"messages": [incoming("lost"), None]}):
        answer = call(cht, "POST", body)
        assert answer.status == 500, body
    assert cht.received() == []
    # updates crash after the incoming SMS are saved: those are kept, the updates lost
    answer = call(cht, "POST", {"messages": [incoming("kept")],
                                "updates": [{"id": "q", "status": "SENT"}, None]})
    assert answer.status == 500
    assert call(cht, "POST", {"updates": "SENT"}).status == 500
    assert [m["id"] for m in cht.received()] == ["kept"]
    assert cht.cht_state_of("q") == "pending" and cht.updates() == []
    for falsy in (None, "", 0, False):  # `if (!req.body.updates)`
        assert ids(call(cht, "POST", {"updates": falsy})) == ["q"]
    problems = "\n".join(cht.snapshot()["problems"])
    assert "messages is null" in problems and "updates[1] is null" in problems


def test_cht_bad_update_entries_are_skipped_one_by_one(cht: ReferenceWebapp) -> None:
    cht.queue("+15550100", "x", id="m")
    cht.queue("+15550100", "y", id="n")
    answer = post(cht, updates=["a string", {"status": "SENT"}, {"id": 7, "status": "SENT"},
                                {"id": "ghost", "status": "SENT"}, [1],
                                {"id": "m", "status": "SENT"},
                                {"id": "n", "status": ["DELIVERED"]}])
    assert ids(answer) == []
    assert cht.cht_state_of("m") == "sent"
    assert cht.cht_state_of("n") == "delivered"  # a JavaScript key: ["DELIVERED"] -> "DELIVERED"
    assert len(cht.updates()) == 7
    problems = "\n".join(cht.snapshot()["problems"])
    assert problems.count("Message id required") == 3
    assert problems.count("Message not found") == 2


def test_cht_answers_are_gzipped_from_one_kib(cht: ReferenceWebapp) -> None:
    cht.queue("+15550100", "short", id="s")
    small = post(cht)
    assert small.headers.get("Content-Encoding") is None
    assert small.headers["Vary"] == "Accept-Encoding"
    cht.queue("+15550100", "x" * 2000, id="big")
    big = post(cht)
    assert big.headers["Content-Encoding"] == "gzip"
    assert big.headers["Transfer-Encoding"] == "chunked"
    assert len(big.raw) < 500 and ids(big) == ["s", "big"]
    plain = post(cht, headers=dict(HEADERS, **{"Accept-Encoding": "identity"}))
    assert plain.headers.get("Content-Encoding") is None and ids(plain) == ["s", "big"]


def test_cht_gzip_request_is_decoded(cht: ReferenceWebapp) -> None:
    body = gzip.compress(json.dumps({"messages": [incoming("gz")]}).encode())
    answer = call(cht, "POST", raw=body, headers=dict(HEADERS, **{"Content-Encoding": "gzip"}))
    assert answer.status == 200
    assert [m["id"] for m in cht.received()] == ["gz"]


# php -------------------------------------------------------------------------------------
def test_php_handshake_is_json_served_as_text_html(php: ReferenceWebapp) -> None:
    answer = call(php, "GET")
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert answer.body == b'{"medic-gateway": true}'
    assert json.loads(answer.body) == {"medic-gateway": True}
    # a POST without a body is the same to apiServer()
    php.queue("+15550100", "x", id="p")
    assert call(php, "POST", raw=b"").body == b'{"medic-gateway": true}'
    assert php.php_file_of("p") == "p.NEW"


def test_php_authenticates_with_the_query_string(php: ReferenceWebapp) -> None:
    good = f"/smsgateway/?id=demo&h={php_auth_hash('demo')}"
    assert call(php, "GET", target=good).status == 200
    for target, status in (("/smsgateway/", 404), ("/smsgateway/?h=abc", 404),
                           ("/smsgateway/?id=demo", 401), ("/smsgateway/?id=demo&h=000000", 401)):
        for method in ("GET", "POST"):
            answer = call(php, method, {"messages": [incoming("a")]}, target=target)
            assert answer.status == status, (method, target)
            assert answer.body == b"" and "WWW-Authenticate" not in answer.headers
            assert answer.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert php.received() == []
    # any device with its own valid hash is let in (to another, empty, folder)
    other = call(php, "POST", {"messages": [incoming("b")]},
                 target=f"/smsgateway/?id=other&h={php_auth_hash('other')}")
    assert other.status == 200 and other.body == b"{}" and php.received() == []


def test_php_control_characters_go_out_raw_inside_the_json_string(php: ReferenceWebapp) -> None:
    content = 'tab\there "quoted" back\\slash\nnewline\x01ctl'
    php.queue("+15550100", content, id="p1")
    answer = post(php, [], [])
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert answer.body == (b'{"messages": [{"id": "p1", "to": "+15550100", "content": '
                           b'"tab\there \\"quoted\\" back\\\\slash\\nnewline\x01ctl"}]}')
    inside = answer.body[answer.body.index(b'"content": "') + 12:]
    assert inside.index(b"\x09") < inside.index(b'"}]}')  # the raw tab is inside the string
    with pytest.raises(json.JSONDecodeError, match="control character"):
        json.loads(answer.body)
    assert json.loads(answer.body, strict=False)["messages"][0]["content"] == content


def test_php_offers_each_message_once_then_after_the_device_timeout(make: Make) -> None:
    php = make(flavour="php", php_device_timeout=0.3)
    php.queue("+15550100", "one", id="p1")
    php.queue("+15550100", "two", id="p2")
    assert sorted(ids(post(php, [], []))) == ["p1", "p2"]
    assert php.php_file_of("p1") == "p1.PUSHED"
    assert post(php, [], []).body == b"{}"  # handed over: not offered again, even if lost
    post(php, updates=[{"id": "p2", "status": "SENT"}])
    time.sleep(0.35)
    assert ids(post(php, [], [])) == ["p1"]  # no status came within the device timeout
    assert php.php_history("p1") == ["p1.NEW", "p1.PUSHED", "p1.NEW", "p1.PUSHED"]
    assert php.php_file_of("p2") == "p2.SENT"
    snap = php.snapshot()
    assert snap["flavour"] == "php"
    assert {q["id"]: q["php_file"] for q in snap["queued"]} == {
        "p1": "p1.PUSHED", "p2": "p2.SENT"}
    assert {q["id"]: q["offered"] for q in snap["queued"]} == {"p1": 2, "p2": 1}


def test_php_answers_braces_when_nothing_is_queued(php: ReferenceWebapp) -> None:
    answer = post(php, [incoming("a")], [])
    assert answer.status == 200 and answer.body == b"{}"
    assert [m["id"] for m in php.received()] == ["a"]


def test_php_generated_ids_look_like_uniqid(php: ReferenceWebapp) -> None:
    msg_id = php.queue("+15550100", "x")
    head, _, tail = msg_id.partition("-")
    assert len(head) == 14 and int(head[:13], 16) and len(tail) == 8 and tail.isdigit()


def test_php_status_words_are_file_extensions(php: ReferenceWebapp) -> None:
    for n in range(4):
        php.queue("+15550100", str(n), id=f"p{n}")
    post(php, [], [])
    answer = post(php, updates=[
        {"id": "p0", "status": "sent"}, {"id": "p1", "status": "NEW"},
        {"id": "p2", "status": "DELIVERED"}, {"id": "nope", "status": "SENT"},
        {"id": "p3", "status": 5}])
    assert ids(answer) == ["p1"]  # renamed p1.NEW before the answer: offered again at once
    assert php.php_file_of("p0") == "p0.sent"  # kept as is, and never offered again
    assert php.php_file_of("p2") == "p2.DELIVERED"
    assert php.php_file_of("p3") == "p3.5"
    assert php.php_file_of("p1") == "p1.PUSHED"
    assert post(php, [], []).body == b"{}"
    problems = "\n".join(php.snapshot()["problems"])
    assert "status 'sent' is not a spec word: the file is renamed p0.sent" in problems
    assert "'NEW' is not a spec word" in problems and "offered again" in problems
    assert "update 'nope' ignored: 0 files match" in problems
    assert php.statuses() == {"p0": ["sent"], "p1": ["NEW"], "p2": ["DELIVERED"],
                              "nope": ["SENT"], "p3": ["5"]}


def test_php_update_id_is_a_glob_pattern(php: ReferenceWebapp) -> None:
    php.queue("+15550100", "x", id="abc")
    post(php, [], [])
    post(php, updates=[{"id": "a*", "status": "SENT"}])  # glob("send/a*.*"): one file
    assert php.php_file_of("abc") == "a*.SENT"


def test_php_takes_what_it_can_from_entries_of_the_wrong_shape(php: ReferenceWebapp) -> None:
    php.queue("+15550100", "x", id="p")
    answer = post(php, ["a string", {"from": "+1", "content": "no id"}, {"id": None},
                        incoming("good"), {"id": 7}, [1, 2]],
                  ["SENT", {"id": "p"}, {"id": "p", "status": None}])
    assert ids(answer) == ["p"]
    assert [m["id"] for m in php.received()] == ["good", 7]
    assert php.php_file_of("p") == "p.PUSHED"
    post(php, updates={"first": {"id": "p", "status": "SENT"}})  # an object: its values
    assert php.php_file_of("p") == "p.SENT"
    post(php, messages="not a list")
    problems = "\n".join(php.snapshot()["problems"])
    assert "messages[0] (a string) skipped" in problems
    assert "updates[2] (an object) skipped" in problems
    assert "messages is a string: foreach() warns" in problems


def test_php_repeated_incoming_id_overwrites_the_file(php: ReferenceWebapp) -> None:
    post(php, [incoming("a", "first")], [])
    post(php, [incoming("a", "second"), incoming("b")], [])
    assert [(m["id"], m["content"]) for m in php.received()] == [("a", "second"), ("b", "hello")]
    assert php.snapshot()["counters"]["duplicate_messages"] == 1


@pytest.mark.parametrize("raw, headers", [
    (gzip.compress(json.dumps({"messages": [incoming("gz")]}).encode()),
     dict(HEADERS, **{"Content-Encoding": "gzip"})),
    (b'{"messages": [{"id": "x", "from": "+1", "content": "trunc', HEADERS),
    (b'{"messages": [{"id": "x", "content": "\\ud800"}]}', HEADERS),
])
def test_php_undecodable_body_is_lost_and_still_answered(php: ReferenceWebapp, raw: bytes,
                                                         headers: dict[str, str]) -> None:
    php.queue("+15550100", "x", id="p")
    answer = call(php, "POST", raw=raw, headers=headers)
    assert answer.status == 200 and ids(answer) == ["p"]
    assert php.received() == [] and php.php_file_of("p") == "p.PUSHED"
    assert "json_decode() gives null" in "\n".join(php.snapshot()["problems"])


def test_php_null_byte_in_an_id_is_a_fatal_error(php: ReferenceWebapp) -> None:
    php.queue("+15550100", "x", id="p")
    answer = post(php, [incoming("a\x00b")], [])
    assert answer.status == 500 and answer.body == b""
    assert php.php_file_of("p") == "p.NEW"


# bad_entry fault -------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("variant", sorted(BAD_ENTRY_VARIANTS))
def test_bad_entry_among_the_good_messages(make: Make, flavour: str, variant: str) -> None:
    app = make(flavour=flavour)
    app.queue("+15550100", "one", id="g1")
    app.queue("+15550101", "two", id="g2")
    app.set_fault("bad_entry", variant=variant)
    answer = post(app, [incoming("in1")], [])
    assert answer.status == 200
    messages = answer.json()["messages"]
    assert len(messages) == 3
    assert messages[1] == BAD_ENTRY_VARIANTS[variant]
    assert [messages[0]["id"], messages[2]["id"]] == ["g1", "g2"]
    assert [m["id"] for m in app.received()] == ["in1"]  # the POST is recorded
    snap = app.snapshot()
    assert snap["raw"][-1]["fault"] == "bad_entry" and snap["raw"][-1]["bad_entry"] == variant
    assert snap["raw"][-1]["offered"] == ["g1", "g2"]
    assert [q["offered"] for q in snap["queued"]] == [1, 1]
    after = post(app, [], [])  # the next answer is normal again
    assert after.body == b"{}" if flavour == "php" else ids(after) == ["g1", "g2"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_bad_entry_default_and_with_nothing_queued(make: Make, flavour: str) -> None:
    app = make(flavour=flavour)
    app.set_fault("bad_entry")
    assert post(app, [], []).json() == {"messages": [BAD_ENTRY_VARIANTS["to_list"]]}


def test_bad_entry_variant_is_checked_and_settable_by_the_control_api(
        make: Make) -> None:
    app = make(flavour="php")
    with pytest.raises(ValueError):
        app.set_fault("bad_entry", variant="nope")
    request = urllib.request.Request(f"{app.base_url}/api/faults", method="POST",
                                     data=b'{"kind": "bad_entry", "variant": "not_object"}')
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.load(resp)["faults"] == [{"kind": "bad_entry", "variant": "not_object"}]
    app.queue("+15550100", "x\ty", id="g")
    body = post(app, [], []).body
    assert body == (b'{"messages": [{"id": "g", "to": "+15550100", "content": "x\ty"},'
                    b'"bad entry: not an object"]}')


# control API and serve() for every flavour -----------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_control_api_works_for_every_flavour(make: Make, flavour: str) -> None:
    app = make(flavour=flavour)

    def control(method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(f"{app.base_url}{path}", method=method, data=body)
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)

    assert control("POST", "/api/queue", b'{"to": "+15550100", "content": "hi", "id": "c"}') == {
        "id": "c"}
    assert ids(post(app, [], [])) == ["c"]
    state = control("GET", "/api/state")
    assert state["flavour"] == flavour
    extra = {"cht": "cht_state", "php": "php_file"}.get(flavour)
    if extra:
        assert state["queued"][0][extra] in ("forwarded-to-gateway", "c.PUSHED")
    control("POST", "/api/offer_again", b'{"id": "c"}')
    assert ids(post(app, [], [])) == ["c"]
    control("POST", "/api/reset")
    assert control("GET", "/api/state")["queued"] == []


@pytest.mark.parametrize("flavour", ["cht", "php"])
def test_serve_takes_the_flavour(flavour: str) -> None:
    out = io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=("127.0.0.1", 0),
                              kwargs={"out": out, "stop_event": stop, "flavour": flavour},
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while "Ctrl-C" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"Reference webapp ({flavour}) listening on http://127.0.0.1:")
    url = lines[0].rsplit(" ", 1)[-1]
    if flavour == "php":
        assert url.endswith("/smsgateway/?id=***&h=***")  # values hidden on the first line
        query = lines[1].split("?", 1)[1].split(" ", 1)[0]
        assert query == f"id=demo&h={php_auth_hash('demo')}"
        url = url.split("?")[0] + "?" + query
    else:
        assert url.endswith("/api/sms")
    with urllib.request.urlopen(urllib.request.Request(url, headers=HEADERS), timeout=10) as r:
        assert json.loads(r.read()) == {"medic-gateway": True}
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def test_php_hash_check_is_a_loose_comparison(make: Make) -> None:
    device = next(f"dev{n}" for n in range(10_000) if php_auth_hash(f"dev{n}").isdigit())
    app = make(flavour="php", query={"id": device})
    numeric = php_auth_hash(device)
    for h in (numeric, f"{int(numeric)}.0", f"%20{int(numeric)}", f"{int(numeric)}e0"):
        assert call(app, "GET", target=f"/smsgateway/?id={device}&h={h}").status == 200, h
    assert call(app, "GET", target=f"/smsgateway/?id={device}&h={int(numeric) + 1}").status == 401
