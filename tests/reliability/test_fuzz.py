"""Fuzzing with hypothesis, 5,000 examples per target: the webapp's answers, the webapp URL
(validation, redaction, credentials, scrubbing), and CDMA splitting.

Complements tests/test_webapp.py (parse_response over JSON-ish bytes never crashes nor
invents) and tests/test_segment.py (split_cdma properties over arbitrary text).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smsgw.config import (
    FORBIDDEN_PASSWORD_CHARS,
    redact_url,
    scrub,
    split_credentials,
    validate_url,
)
from smsgw.errors import UserError
from smsgw.models import Offered
from smsgw.segment import fits_one_sms, split_cdma, strip_prefix
from smsgw.webapp import parse_response

FUZZ = settings(max_examples=5000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# --- the webapp's answer: valid messages round-trip ---------------------------------------------

json_scalar = (st.none() | st.booleans() | st.integers() | st.text(max_size=6)
               | st.floats(allow_nan=False, allow_infinity=False))
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=2),
    max_leaves=3,
)
field_name = st.sampled_from(["", "x", "status", "ID", "To", "from", "priority"]) | st.text(
    max_size=4)
top_extras = st.dictionaries(
    (st.sampled_from(["error", "meta", "Messages", "updates"]) | st.text(max_size=4)).filter(
        lambda k: k != "messages"), json_value, max_size=2)


@FUZZ
@given(strings=st.lists(st.text(max_size=20), max_size=9),
       extra=st.lists(st.tuples(field_name, json_scalar), max_size=3), extras=top_extras,
       extras_first=st.booleans(), ascii_only=st.booleans(),
       indent=st.sampled_from([None, 0, 2, "\t"]), bom=st.booleans(),
       pad=st.sampled_from(["", " ", "\n", "\r\n\t "]))
def test_valid_messages_round_trip(strings: list[str], extra: list[tuple[str, Any]],
                                   extras: dict[str, Any], extras_first: bool,
                                   ascii_only: bool, indent: Any, bom: bool, pad: str) -> None:
    """Any list of {id, to, content} strings, with extra fields anywhere, in any key order and
    any JSON spelling, parses to exactly those messages, in order."""
    messages = [{"id": strings[i] or "0", "to": strings[i + 1], "content": strings[i + 2]}
                for i in range(0, len(strings) - 2, 3)]
    items: list[dict[str, Any]] = []
    for n, msg in enumerate(messages):
        mine = {k: v for j, (k, v) in enumerate(extra)
                if j % len(messages) == n and k not in ("id", "to", "content")}
        before = extras_first == (n % 2 == 0)
        items.append({**mine, **msg} if before else {**msg, **mine})
    answer = ({**extras, "messages": items} if extras_first
              else {"messages": items, **extras})
    body = (pad + json.dumps(answer, ensure_ascii=ascii_only, indent=indent) + pad).encode()
    if bom:
        body = b"\xef\xbb\xbf" + body.lstrip()
    assert parse_response(body) == [Offered(m["id"], m["to"], m["content"]) for m in messages]


# --- the webapp URL ------------------------------------------------------------------------------

MARK = "Zq9"  # every secret starts with it, and nothing else contains it
no_mark = st.text(max_size=8).filter(lambda s: MARK not in s)
ENCODINGS = [lambda s: s, lambda s: quote(s, safe=""), lambda s: quote(s, safe=":;=+$,"),
             lambda s: quote(s)]
PREFIXES = ["http://", "https://", "HTTPS://", "ftp://", "://", "http:/", "http:", "mailto:",
            "h ttp://", "http:///"]
USERS = ["gw", "smsgw", "a.b-c", "user name", "", "ü$er", "%41"]
HOSTS = ["example.org", "127.0.0.1", "[::1]", "[fe80::1%25eth0]", "", "EXAMPLE.org",
         "xn--bcher-kva.example", "[::1", "a@b", "ex ample", "host:name", "example.org:8080",
         "example.org:0", "example.org:65536", "example.org:-1", "example.org:http",
         "example.org:"]
PATHS = ["", "/", "/smsgateway/", "/a b/c", "/%2F", "/a?b", "/#x", "/;p=1"]


@st.composite
def urls(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A URL (often odd) whose password and query values carry MARK; and those secrets raw.

    User names never hold / ? # @ (they cut the authority short: see the dedicated test).
    """
    secrets: list[str] = []
    encode = draw(st.sampled_from(ENCODINGS))
    shape = draw(st.sampled_from(["none", "user", "user:pw", ":pw", "user:pw", "user:"]))
    userinfo = ""
    if shape != "none":
        userinfo = "" if shape == ":pw" else encode(draw(st.sampled_from(USERS)))
        if "pw" in shape:
            raw = encode(MARK + draw(no_mark))
            secrets.append(raw)
            userinfo += ":" + raw
        elif shape == "user:":
            userinfo += ":"
        userinfo += "@"
    host = draw(st.sampled_from(HOSTS) | no_mark)
    path = draw(st.sampled_from(PATHS) | no_mark)
    query = ""
    tails = draw(st.lists(no_mark, max_size=2))
    if tails:
        raws = [encode(MARK + tail) for tail in tails]
        secrets += raws
        query = "?" + "&".join(f"k{n}={raw}" for n, raw in enumerate(raws))
    fragment = draw(st.sampled_from(["", "#", "#top", "#a=b"]))
    prefix = draw(st.sampled_from(PREFIXES))
    return f"{prefix}{userinfo}{host}{path}{query}{fragment}", secrets


@FUZZ
@given(case=urls())
@example(case=("http://gw:Zq9pass@example.org/?key=Zq9key", ["Zq9pass", "Zq9key"]))
@example(case=("http://gw:Zq9p/ss@example.org/", ["Zq9p/ss"]))
@example(case=("http://gw:Zq9p#ss@example.org/?k=Zq9v", ["Zq9p#ss", "Zq9v"]))
def test_url_functions_on_generated_urls(case: tuple[str, list[str]]) -> None:
    url = case[0]
    try:
        accepted = validate_url(url)
    except UserError as exc:
        assert str(exc)
        accepted = None
    shown = redact_url(url)
    assert isinstance(shown, str)
    if accepted is None:
        # Never stored, only ever shown in an error: whatever the parser takes for the
        # password and the query values is masked.
        if shown != "<invalid URL>":
            masked = urlsplit(shown)
            assert masked.password in (None, "***"), (url, shown)
            values = [p.split("=", 1)[1] for p in masked.query.split("&") if "=" in p]
            assert all(v == "***" for v in values), (url, shown)
        return
    # A URL that is accepted is stored and displayed: no secret, in any spelling.
    assert MARK not in shown, (url, shown)
    # Every spelling of every secret it carries (as the URL parser, and so requests, sees
    # them: a MARK that landed in the fragment is never sent) is scrubbed from texts.
    parts = urlsplit(accepted)
    carried = [parts.password or ""] + [
        pair.split("=", 1)[1] for pair in parts.query.split("&") if "=" in pair]
    spellings = [s for raw in carried for s in (raw, unquote(raw)) if MARK in s]
    cleaned = scrub("webapp said: " + " | ".join(spellings), accepted)
    assert MARK not in cleaned, (url, cleaned)
    # The bare URL that requests gets carries no credentials.
    bare, credentials = split_credentials(accepted)
    assert "@" not in urlsplit(bare).netloc
    if parts.password is not None:
        assert credentials is not None and credentials[1] == unquote(parts.password)
        assert MARK not in bare.split("?")[0]


@FUZZ
@given(text=st.text(max_size=40), url=st.text(max_size=30) | urls().map(lambda c: c[0]))
def test_redact_and_scrub_never_raise(text: str, url: str) -> None:
    assert isinstance(scrub(text, url), str)
    assert isinstance(redact_url(url), str)
    with contextlib.suppress(UserError):
        validate_url(url)


credential_text = st.text(st.characters(max_codepoint=0x17F), max_size=12)


@FUZZ
@given(user=credential_text, password=credential_text | st.text(max_size=6),
       host=st.sampled_from(["example.org", "Example.ORG", "127.0.0.1", "[::1]",
                             "[2001:db8::7]", "sms.example.co.ke"]),
       port=st.none() | st.integers(0, 65535),
       path=st.sampled_from(["", "/", "/smsgateway/", "/api/v1/sms/gateway"]),
       query=st.sampled_from(["", "?key=abc", "?a=1&b=%20x"]), with_password=st.booleans())
def test_split_credentials_round_trips(user: str, password: str, host: str, port: int | None,
                                       path: str, query: str, with_password: bool) -> None:
    """Percent-encoded user info comes back exactly; the password rules are exactly the
    protocol's (none of # / ? @, ISO-8859-1 only)."""
    userinfo = quote(user, safe="") + (":" + quote(password, safe="") if with_password else "")
    netloc = f"{userinfo}@{host}" + (f":{port}" if port is not None else "")
    url = f"https://{netloc}{path}{query}"
    allowed = not with_password or (
        not any(ch in FORBIDDEN_PASSWORD_CHARS for ch in password)
        and all(ord(ch) <= 0xFF for ch in password))
    try:
        accepted = validate_url(url)
    except UserError:
        assert not allowed, url
        return
    assert allowed, url
    bare, credentials = split_credentials(accepted)
    assert credentials == (user, password if with_password else "")
    assert bare == f"https://{host.lower()}" + (f":{port}" if port is not None else "") \
        + path + query
    assert split_credentials(bare) == (bare, None)
    assert validate_url(bare) == bare


@pytest.mark.parametrize("url", [
    "https://org/unit:Zq9secret@example.org/sms/",
    "https://gw?1:Zq9secret@example.org/sms/",
    "https://gw#1:Zq9secret@example.org/sms/",
])
def test_user_name_that_cuts_the_authority_short(url: str) -> None:
    """A '/', '?' or '#' in the user name ends the host early: 'user:password@host' becomes
    path, query or fragment. Such a URL would send the password to another host, in the
    request line, and show it unmasked: it must be refused like such a password is."""
    try:
        accepted = validate_url(url)
    except UserError:
        return
    problems = [f"accepted as host {urlsplit(accepted).hostname!r}"]
    if MARK in (redact_url(accepted) or ""):
        problems.append(f"shown as {redact_url(accepted)}")
    requested = split_credentials(accepted)[0].split("#")[0]  # requests sends no fragment
    if MARK in requested:
        problems.append(f"requested as {requested}")
    raise AssertionError("; ".join(problems))


def test_scrub_removes_a_query_value_as_the_webapp_decodes_it() -> None:
    """A '+' in a query value is a space to the webapp (form decoding): when it echoes the key
    back in an error message (as tests/test_cli.py's webapp does), that spelling must be
    scrubbed too, or it reaches `smsgw status` and the log."""
    url = "https://gw:pw-Zq9@example.org/sms/?key=Zq9+secret+key"
    webapp_words = "invalid key " + unquote_plus(urlsplit(url).query.split("=", 1)[1])
    assert webapp_words == "invalid key Zq9 secret key"
    assert MARK not in scrub(webapp_words, url)


# --- CDMA splitting ------------------------------------------------------------------------------

GSM_BASIC = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"@£$¥èéùìò"
             "ÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤%&()*+-/<=>¡ÄÖÑÜ§¿äöñüà\n\r")
GSM_EXTENSION = "€[]{}|~^\\\x0c"
EMOJI = ["😀", "👍🏽", "🇰🇪", "👨\u200d👩\u200d👧", "❤️", "🧑🏿\u200d⚕️", "🙏"]
gsm_run = st.text(GSM_BASIC, min_size=1, max_size=25)
pieces = st.one_of(gsm_run, gsm_run, st.sampled_from(list(GSM_EXTENSION)),
                   st.sampled_from(list(GSM_EXTENSION)).map(lambda c: c * 7),
                   st.sampled_from(EMOJI))
gsm_only = st.one_of(gsm_run, st.sampled_from(list(GSM_EXTENSION)))
mixed_texts = st.one_of(st.lists(pieces, max_size=60).map("".join),
                        st.lists(gsm_only, max_size=80).map("".join))


@FUZZ
@given(text=mixed_texts, prefix=st.booleans())
def test_cdma_split_of_extension_characters_and_emoji(text: str, prefix: bool) -> None:
    parts = split_cdma(text, prefix=prefix)
    if fits_one_sms(text):
        assert parts == [text]
        return
    assert len(parts) >= 2
    joined = "".join(strip_prefix(p) for p in parts) if prefix else "".join(parts)
    assert joined == text
    for n, part in enumerate(parts, 1):
        assert part and fits_one_sms(part), (n, part)
        if prefix:
            assert part.startswith(f"{n}/{len(parts)} ")
            assert strip_prefix(part)


@pytest.mark.parametrize("text", [
    "€" * 80 + "x",  # 161 septets of extension characters
    "€" * 79 + "😀",
    "[" + "😀" * 40 + "]",
    ("{x} " * 60) + "🙏",
])
def test_cdma_examples_at_the_boundaries(text: str) -> None:
    for prefix in (True, False):
        parts = split_cdma(text, prefix=prefix)
        joined = "".join(strip_prefix(p) for p in parts) if prefix and len(parts) > 1 \
            else "".join(parts)
        assert joined == text
        assert all(fits_one_sms(p) for p in parts)

