"""smsgw.config: settings validated at the door (bounds defined once, in SPECS), secrets
scrubbed in every spelling, the URL read without argv, and private folders and files."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import re
import stat
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsgw import config
from smsgw.config import (
    SPECS,
    Paths,
    Settings,
    change_settings,
    check_private_dir,
    load_settings,
    make_private_dir,
    open_private,
    parse_setting,
    read_url_argument,
    read_url_file,
    scrub,
    url_secrets,
    validate_setting,
)
from smsgw.errors import InternalError, UserError

DAY = 86400


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return Paths(config_dir=home, data_dir=home)


def write_config(paths: Paths, data: Any) -> bytes:
    raw = (data if isinstance(data, str) else json.dumps(data)).encode()
    paths.config_file.write_bytes(raw)
    return raw


def one_line(exc: pytest.ExceptionInfo[UserError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text and text
    return text


# --- the table ----------------------------------------------------------------------------------
def test_specs_cover_exactly_the_settings() -> None:
    assert set(SPECS) == {f.name for f in fields(Settings)}
    assert "forward_since" not in SPECS  # it lives in the state, not in the settings


def test_defaults_are_valid() -> None:
    for name, value in Settings().to_dict().items():
        assert validate_setting(name, value, "/x/config.json") == value


def test_bounds_are_the_documented_ones() -> None:
    expected = {
        "interval": (1, 86400), "max_parts_per_minute": (1, 10000), "sim_slot": (0, 7),
        "message_ttl": (60, 30 * DAY), "confirm_timeout": (5, 7 * DAY),
        "send_timeout": (1, 600), "list_timeout": (1, 600), "connect_timeout": (1, 600),
        "read_timeout": (1, 600), "retention_days": (1, 3650), "max_parts": (1, 100),
        "exchange_deadline": (5, 3600), "ping_every": (10, DAY), "alert_after": (60, 7 * DAY),
        "alert_every": (60, 30 * DAY),
    }
    for name, (low, high) in expected.items():
        assert (SPECS[name].minimum, SPECS[name].maximum) == (low, high), name
    assert {n for n, s in SPECS.items() if s.nullable} == {"url", "sim_slot", "message_ttl",
                                                          "ca_bundle", "allow_redirects_to",
                                                          "ping_url", "alert_to"}
    assert {n for n, s in SPECS.items() if s.kind is bool} == {
        "cdma_mode", "cdma_prefix", "compress_requests", "notification_watch",
        "report_health"}


# --- load_settings refuses a bad file, without touching it ---------------------------------------
BAD_VALUES = [
    ("url", 5), ("url", ["https://example.org/"]), ("url", "ftp://example.org/sms/"),
    ("url", "https://u:p#x@example.org/"),
    ("interval", "abc"), ("interval", "60"), ("interval", 0), ("interval", -5),
    ("interval", 86401), ("interval", True), ("interval", 60.5), ("interval", None),
    ("interval", {"seconds": 60}),
    ("max_parts_per_minute", 0), ("max_parts_per_minute", 10001), ("max_parts_per_minute", False),
    ("sim_slot", 8), ("sim_slot", -1), ("sim_slot", "1"), ("sim_slot", True),
    ("message_ttl", 59), ("message_ttl", 30 * DAY + 1), ("message_ttl", "24h"),
    ("confirm_timeout", 4), ("confirm_timeout", 7 * DAY + 1), ("confirm_timeout", None),
    ("send_timeout", 0.5), ("send_timeout", 601), ("list_timeout", "30"),
    ("connect_timeout", 0), ("read_timeout", True), ("read_timeout", 10**400),
    ("retention_days", 0), ("retention_days", 3651), ("retention_days", 1.5),
    ("cdma_mode", 1), ("cdma_mode", "yes"), ("cdma_prefix", None), ("compress_requests", 0),
    ("notification_watch", "false"),
    ("ca_bundle", 5), ("ca_bundle", True),
    ("ping_url", 5), ("ping_url", "ftp://example.org/ping"), ("ping_url", "example.org/ping"),
    ("ping_every", 9), ("ping_every", DAY + 1), ("report_health", "yes"),
]


@pytest.mark.parametrize("name, value", BAD_VALUES)
def test_bad_value_in_the_file_is_refused(paths: Paths, name: str, value: Any) -> None:
    raw = write_config(paths, {"interval": 60, name: value})
    paths.config_file.chmod(0o640)
    before = paths.config_file.stat()
    with pytest.raises(UserError) as exc:
        load_settings(paths, env={})
    line = one_line(exc)
    assert line.startswith(f"the settings in {paths.config_file} are invalid: \"{name}\" ")
    assert line.endswith("; fix or remove that file")
    after = paths.config_file.stat()
    assert paths.config_file.read_bytes() == raw
    assert (after.st_mtime_ns, after.st_mode, after.st_ino) == (
        before.st_mtime_ns, before.st_mode, before.st_ino)


@pytest.mark.parametrize("text", ['{"interval": NaN}', '{"send_timeout": Infinity}',
                                  '{"retention_days": -Infinity}'])
def test_json_oddities_are_refused(paths: Paths, text: str) -> None:
    write_config(paths, text)
    with pytest.raises(UserError) as exc:
        load_settings(paths, env={})
    assert str(paths.config_file) in one_line(exc)


def test_exact_message_for_a_bad_interval(paths: Paths) -> None:
    write_config(paths, {"interval": "abc"})
    with pytest.raises(UserError) as exc:
        load_settings(paths, env={})
    assert str(exc.value) == (
        f'the settings in {paths.config_file} are invalid: "interval" must be a whole number '
        'from 1 to 86400 (got "abc"); fix or remove that file')


def test_messages_say_what_is_allowed(paths: Paths) -> None:
    cases = {
        "sim_slot": (9, '"sim_slot" must be a whole number from 0 to 7, or null (got 9)'),
        "message_ttl": (1, '"message_ttl" must be a whole number of seconds from 60 (1 min) '
                           'to 2592000 (30 days), or null (got 1)'),
        "confirm_timeout": (1, '"confirm_timeout" must be a whole number of seconds from 5 '
                               'to 604800 (7 days) (got 1)'),
        "send_timeout": (0, '"send_timeout" must be a number of seconds from 1 to 600 '
                            '(10 min) (got 0)'),
        "retention_days": (True, '"retention_days" must be a whole number of days from 1 to '
                                 '3650 (got true)'),
        "cdma_mode": ("yes", '"cdma_mode" must be true or false (got "yes")'),
        "ca_bundle": (5, '"ca_bundle" must be a file path (text), or null (got 5)'),
        "url": (5, '"url" must be a webapp URL (text), or null;'),
    }
    for name, (value, words) in cases.items():
        write_config(paths, {name: value})
        with pytest.raises(UserError) as exc:
            load_settings(paths, env={})
        assert words in str(exc.value), str(exc.value)


def test_the_url_is_checked_and_never_shown(paths: Paths) -> None:
    write_config(paths, {"url": "https://gw:Zq9secret#x@example.org/sms/"})
    with pytest.raises(UserError) as exc:
        load_settings(paths, env={})
    line = one_line(exc)
    assert '"url" is not a usable webapp URL: the password must not contain \'#\'' in line
    assert "Zq9secret" not in line
    write_config(paths, {"url": {"password": "Zq9secret"}})
    with pytest.raises(UserError) as exc:
        load_settings(paths, env={})
    assert "Zq9secret" not in one_line(exc)


def test_good_values_and_bounds_are_accepted(paths: Paths) -> None:
    good = {"url": "  https://gw:pw@example.org/sms/ ", "interval": 5,
            "max_parts_per_minute": 10000, "sim_slot": 7, "message_ttl": 30 * DAY,
            "confirm_timeout": 60, "send_timeout": 600, "list_timeout": 1,
            "connect_timeout": 2.5, "read_timeout": 30.0, "retention_days": 3650,
            "cdma_mode": True, "cdma_prefix": False, "compress_requests": True,
            "notification_watch": True, "ca_bundle": "/etc/ssl/ca.pem"}
    write_config(paths, good)
    s = load_settings(paths, env={})
    assert s.url == "https://gw:pw@example.org/sms/"
    assert (s.interval, s.max_parts_per_minute, s.sim_slot, s.message_ttl) == (
        5, 10000, 7, 30 * DAY)
    assert (s.confirm_timeout, s.send_timeout, s.list_timeout, s.connect_timeout) == (
        60, 600.0, 1.0, 2.5)
    assert isinstance(s.send_timeout, float) and isinstance(s.list_timeout, float)
    assert (s.retention_days, s.cdma_mode, s.cdma_prefix, s.compress_requests,
            s.notification_watch, s.ca_bundle) == (3650, True, False, True, True,
                                                   "/etc/ssl/ca.pem")
    write_config(paths, {"interval": 86400, "sim_slot": 0, "message_ttl": 60,
                         "confirm_timeout": 7 * DAY, "retention_days": 1, "url": None,
                         "sim_slot2": "x", "ca_bundle": None})
    s = load_settings(paths, env={})
    assert (s.interval, s.sim_slot, s.message_ttl, s.confirm_timeout, s.retention_days) == (
        86400, 0, 60, 7 * DAY, 1)
    assert s.url is None and s.ca_bundle is None


def test_integral_float_is_a_whole_number(paths: Paths) -> None:
    write_config(paths, {"interval": 60.0})
    s = load_settings(paths, env={})
    assert s.interval == 60 and type(s.interval) is int


def test_unknown_keys_are_ignored(paths: Paths) -> None:
    write_config(paths, {"interval": 30, "forward_since": "2026-01-01T00:00:00+00:00",
                         "from_a_newer_version": {"x": [1, 2]}})
    assert load_settings(paths, env={}) == Settings(interval=30)


def test_absent_file_gives_defaults(paths: Paths) -> None:
    assert load_settings(paths, env={}) == Settings()
    assert not paths.config_file.exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"text"', "\xff\xfe", "[" * 100000])
def test_unreadable_file_is_one_line_naming_it(paths: Paths, text: str) -> None:
    paths.config_file.write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError) as exc:
        load_settings(paths, env={})
    assert str(paths.config_file) in one_line(exc)
    assert "fix or remove that file" in str(exc.value)


# --- SMSGW_URL ----------------------------------------------------------------------------------
def test_smsgw_url_is_validated_naming_the_variable(paths: Paths) -> None:
    with pytest.raises(UserError) as exc:
        load_settings(paths, env={"SMSGW_URL": "ftp://example.org/sms/"})
    assert str(exc.value) == ("SMSGW_URL is not a usable webapp URL: the URL must start with "
                              "http:// or https://")
    with pytest.raises(UserError) as exc:
        load_settings(paths, env={"SMSGW_URL": "https://gw:Zq9pw#1@example.org/"})
    line = one_line(exc)
    assert line.startswith("SMSGW_URL is not a usable webapp URL: the password must not "
                           "contain '#'")
    assert "Zq9pw" not in line


def test_smsgw_url_overrides_the_file(paths: Paths) -> None:
    write_config(paths, {"url": "https://example.org/saved/", "interval": 30})
    s = load_settings(paths, env={"SMSGW_URL": " https://example.org/env/ "})
    assert (s.url, s.interval) == ("https://example.org/env/", 30)
    assert load_settings(paths, env={"SMSGW_URL": ""}).url == "https://example.org/saved/"


# --- validate_setting / change_settings / parse_setting ------------------------------------------
def test_validate_setting_names_an_option() -> None:
    with pytest.raises(UserError) as exc:
        validate_setting("interval", 0, "--interval")
    assert str(exc.value) == "--interval must be a whole number from 1 to 86400 (got 0)"
    with pytest.raises(UserError) as exc:
        validate_setting("sim_slot", 8, "--sim-slot")
    assert str(exc.value) == "--sim-slot must be a whole number from 0 to 7, or 'none' (got 8)"
    with pytest.raises(UserError) as exc:
        validate_setting("url", "example.org/sms/", "--url")
    assert str(exc.value) == ("--url is not a usable webapp URL: the URL must start with "
                              "http:// or https://")


@pytest.mark.parametrize("name", ["interval", "max_parts_per_minute", "sim_slot",
                                  "message_ttl", "confirm_timeout", "send_timeout",
                                  "retention_days"])
def test_a_bool_is_not_a_number(name: str) -> None:
    for value in (True, False):
        with pytest.raises(UserError):
            validate_setting(name, value, "--x")


def test_unknown_setting_is_a_bug() -> None:
    with pytest.raises(InternalError):
        validate_setting("forward_since", "now", "--forward-since")
    with pytest.raises(InternalError):
        change_settings(Settings(), {"nope": 1}, lambda n: "--nope")


def test_change_settings_returns_a_new_validated_settings() -> None:
    old = Settings(interval=60)
    new = change_settings(old, {"interval": 30, "sim_slot": 1, "message_ttl": None,
                                "url": " https://example.org/sms/ "},
                          lambda name: SPECS[name].option or name)
    assert (new.interval, new.sim_slot, new.message_ttl, new.url) == (
        30, 1, None, "https://example.org/sms/")
    assert old == Settings(interval=60)
    with pytest.raises(UserError) as exc:
        change_settings(old, {"interval": 30, "max_parts_per_minute": 0},
                        lambda name: SPECS[name].option or name)
    assert str(exc.value) == "--max-per-minute must be a whole number from 1 to 10000 (got 0)"
    assert old == Settings(interval=60)
    assert change_settings(old, {}, str) == old


def test_parse_setting_reads_command_line_text() -> None:
    assert parse_setting("message_ttl", "24h", "--ttl") == DAY
    assert parse_setting("message_ttl", "off", "--ttl") is None
    assert parse_setting("message_ttl", "0", "--ttl") is None
    assert parse_setting("confirm_timeout", "15m", "--confirm-timeout") == 900
    assert parse_setting("sim_slot", "none", "--sim-slot") is None
    assert parse_setting("sim_slot", "0", "--sim-slot") == 0
    assert parse_setting("interval", " 30 ", "--interval") == 30
    assert parse_setting("send_timeout", "2.5", "--send-timeout") == 2.5
    assert parse_setting("ca_bundle", "", "--ca-bundle") is None
    assert parse_setting("cdma_mode", "yes", "--cdma") is True
    with pytest.raises(UserError) as exc:
        parse_setting("message_ttl", "soon", "--ttl")
    assert str(exc.value) == ('--ttl must be a duration (e.g. 90s, 15m, 24h, 7d) from 1 min '
                              'to 30 days, or \'off\' (got "soon")')
    for name, text, option in [("sim_slot", "two", "--sim-slot"), ("sim_slot", "8", "--sim-slot"),
                               ("interval", "0", "--interval"), ("interval", "1e3", "--interval"),
                               ("confirm_timeout", "4s", "--confirm-timeout"),
                               ("max_parts_per_minute", "0", "--max-per-minute")]:
        with pytest.raises(UserError) as exc:
            parse_setting(name, text, option)
        assert one_line(exc).startswith(f"{option} must be "), str(exc.value)


# --- scrub: every spelling ------------------------------------------------------------------------
UNICODE_PW = 'p\u00e4ss"w&rd'
ASCII_PW = "Zq9Secret-PW_77"
QUERY_VALUE = 'k\u00e9y "s&cret\\/v'


def percent(text: str, lower: bool = False, encoding: str = "utf-8") -> str:
    out = quote(text, safe="", encoding=encoding)
    return re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), out) if lower else out


def json_all_u(text: str, upper: bool = False) -> str:
    out = "".join(f"\\u{ord(c):04x}" for c in text)
    return out.upper().replace("\\U", "\\u") if upper else out


def html_named(text: str) -> str:
    from html.entities import codepoint2name

    return "".join(f"&{codepoint2name[ord(c)]};" if ord(c) in codepoint2name else c
                   for c in text)


def spellings(secret: str, user: str | None = None) -> dict[str, str]:
    """Every way a server or library may write `secret` (and the Basic auth it is part of)."""
    out = {
        "raw": secret,
        "percent": percent(secret),
        "percent-lower": percent(secret, lower=True),
        "percent-latin1": percent(secret, encoding="latin-1"),
        "percent-twice": quote(percent(secret), safe=""),
        "percent-some": quote(secret, safe='"&\\'),
        "plus-for-space": quote_plus(secret),
        "json-ascii": json.dumps(secret)[1:-1],
        "json-utf8": json.dumps(secret, ensure_ascii=False)[1:-1],
        "json-all-u": json_all_u(secret),
        "json-all-u-upper": json_all_u(secret, upper=True),
        "json-slash": json.dumps(secret)[1:-1].replace("/", "\\/"),
        "json-in-json": json.dumps(json.dumps(secret)[1:-1])[1:-1],
        "python-ascii": ascii(secret)[1:-1],
        "python-bytes": repr(secret.encode())[2:-1],
        "html": html.escape(secret),
        "html-named": html_named(secret),
        "html-decimal": "".join(f"&#{ord(c)};" for c in secret),
        "html-hex": "".join(f"&#x{ord(c):x};" for c in secret),
        "html-hex-upper": "".join(f"&#X{ord(c):X};" for c in secret),
        "html-twice": html.escape(html.escape(secret)),
        "mixed": "".join([html.escape(c), percent(c), json.dumps(c)[1:-1]][i % 3]
                         for i, c in enumerate(secret)),
    }
    for encoding in ("latin-1", "utf-8"):
        try:
            raw = secret.encode(encoding)
        except UnicodeEncodeError:
            continue
        out[f"base64-{encoding}"] = base64.b64encode(raw).decode()
        if user is not None:
            pair = f"{user}:{secret}".encode(encoding)
            out[f"basic-{encoding}"] = base64.b64encode(pair).decode()
            out[f"basic-urlsafe-{encoding}"] = base64.urlsafe_b64encode(pair).decode()
    return out


def assert_clean(spelled: str, url: str) -> None:
    text = f"webapp said: <{spelled}> (Authorization: Basic {spelled}) end"
    assert scrub(text, url) == "webapp said: <***> (Authorization: Basic ***) end", spelled


@pytest.mark.parametrize("password", [UNICODE_PW, ASCII_PW])
@pytest.mark.parametrize("in_url", ["raw", "percent"])
def test_password_is_scrubbed_in_every_spelling(password: str, in_url: str) -> None:
    userinfo = f"gw:{password if in_url == 'raw' else percent(password)}"
    url = config.validate_url(f"https://{userinfo}@example.org/sms/")
    for how, spelled in spellings(password, user="gw").items():
        assert_clean(spelled, url), how


def test_query_value_is_scrubbed_in_every_spelling() -> None:
    url = config.validate_url("https://gw:pw@example.org/sms/?key=" + quote_plus(QUERY_VALUE))
    for how, spelled in spellings(QUERY_VALUE).items():
        if how.startswith("base64"):
            continue  # a query value never travels in base64
        assert_clean(spelled, url), how


def test_user_name_alone_is_a_token() -> None:
    url = "https://Zq9TokenValue@example.org/sms/"
    for spelled in spellings("Zq9TokenValue", user=None).values():
        assert_clean(spelled, url)
    assert_clean(base64.b64encode(b"Zq9TokenValue:").decode(), url)


def test_user_name_beside_a_password_is_not_scrubbed() -> None:
    url = "https://smsgw:Zq9pw@example.org/sms/"
    text = "smsgw config --url: see smsgw.log"
    assert scrub(text, url) == text
    assert scrub("smsgw:Zq9pw", url) == "smsgw:***"


def test_scrub_leaves_other_text_alone() -> None:
    url = f"https://gw:{percent(UNICODE_PW)}@example.org/sms/?key=Zq9key"
    text = 'päss "w" &amp; rd, 200 OK, {"messages": []}, %C3%A4, \\u00e4 p\\u00e4ss'
    assert scrub(text, url) == text
    assert scrub("", url) == ""
    assert scrub("abc", None) == "abc"


def test_overlapping_secrets_leave_no_fragment() -> None:
    url = "https://gw:Zq9abc123@example.org/?k=123xyzQ"
    assert scrub("<Zq9abc123xyzQ>", url) == "<***>"


def test_url_secrets_include_every_basic_auth_form() -> None:
    found = url_secrets(f"https://gw:{percent(UNICODE_PW)}@example.org/")
    assert base64.b64encode(f"gw:{UNICODE_PW}".encode("latin-1")).decode().rstrip("=") in found
    assert base64.b64encode(f"gw:{UNICODE_PW}".encode()).decode().rstrip("=") in found
    assert base64.b64encode(UNICODE_PW.encode("latin-1")).decode().rstrip("=") in found
    assert UNICODE_PW in found


password_chars = st.characters(min_codepoint=0x21, max_codepoint=0xFF,
                               blacklist_characters="#/?@%", blacklist_categories=("Cc",))
SPELLERS = [
    lambda c: c, lambda c: percent(c), lambda c: percent(c, lower=True),
    lambda c: json.dumps(c)[1:-1], lambda c: f"\\u{ord(c):04X}", lambda c: html.escape(c),
    lambda c: f"&#{ord(c)};", lambda c: f"&#x{ord(c):x};", lambda c: html_named(c),
]


@settings(max_examples=300, deadline=None)
@given(password=st.text(password_chars, min_size=3, max_size=16),
       choice=st.lists(st.integers(0, len(SPELLERS) - 1), min_size=16, max_size=16))
def test_any_mix_of_spellings_is_scrubbed(password: str, choice: list[int]) -> None:
    url = f"https://gw:{percent(password)}@example.org/sms/"
    config.validate_url(url)
    spelled = "".join(SPELLERS[choice[i]](c) for i, c in enumerate(password))
    assert scrub(f"[{spelled}]", url) == "[***]", spelled


# --- reading the URL without argv -----------------------------------------------------------------
URL = "https://gw:Zq9pw@example.org/sms/"


def no_prompt(text: str) -> str:
    raise AssertionError("prompted")


def test_url_argument_other_than_dash_is_returned_as_is() -> None:
    assert read_url_argument(URL, io.StringIO("x"), tty=False, prompt=no_prompt) == URL


def test_url_from_stdin_reads_one_line() -> None:
    stdin = io.StringIO(f"  {URL}  \nsecond line\n")
    assert read_url_argument("-", stdin, tty=False, prompt=no_prompt) == URL
    assert stdin.read() == "second line\n"


def test_url_from_a_terminal_is_prompted_for() -> None:
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return f" {URL}\n"

    stdin = io.StringIO("not read")
    assert read_url_argument("-", stdin, tty=True, prompt=prompt) == URL
    assert len(asked) == 1 and "hidden" in asked[0]
    assert stdin.read() == "not read"


@pytest.mark.parametrize("given_text", ["", "\n", "   \n"])
def test_empty_stdin_is_refused(given_text: str) -> None:
    with pytest.raises(UserError) as exc:
        read_url_argument("-", io.StringIO(given_text), tty=False, prompt=no_prompt)
    assert "standard input" in one_line(exc)


def test_url_file_first_non_empty_line(tmp_path: Path) -> None:
    path = tmp_path / "url"
    path.write_text(f"\n  \n {URL} \nignored\n", encoding="utf-8")
    path.chmod(0o600)
    assert read_url_file(str(path)) == URL
    path.write_text(f"\ufeff{URL}", encoding="utf-8")  # a BOM from a Windows editor
    assert read_url_file(str(path)) == URL
    link = tmp_path / "link"
    link.symlink_to(path)  # the mode checked is the target's
    assert read_url_file(str(link)) == URL


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o666])
def test_url_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "url"
    path.write_text(URL + "\n", encoding="utf-8")
    path.chmod(mode)
    with pytest.raises(UserError) as exc:
        read_url_file(str(path))
    assert str(exc.value) == (f"the URL file {path} can be read or changed by other users "
                              f"(mode {mode:04o}): run `chmod 600 {path}` first")
    assert "Zq9pw" not in str(exc.value)


def test_url_file_missing_or_unreadable_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(UserError) as exc:
        read_url_file(str(missing))
    assert one_line(exc) == f"cannot read the URL file {missing}: No such file or directory"
    with pytest.raises(UserError) as exc:
        read_url_file(str(tmp_path))
    assert one_line(exc) == f"cannot read the URL file {tmp_path}: it is a folder"
    empty = tmp_path / "empty"
    empty.write_text("\n \n", encoding="utf-8")
    empty.chmod(0o600)
    with pytest.raises(UserError) as exc:
        read_url_file(str(empty))
    assert str(empty) in one_line(exc) and "empty" in str(exc.value)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    binary.chmod(0o600)
    with pytest.raises(UserError) as exc:
        read_url_file(str(binary))
    assert one_line(exc) == f"the URL file {binary} is not UTF-8 text"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_url_file_without_read_permission(tmp_path: Path) -> None:
    path = tmp_path / "url"
    path.write_text(URL, encoding="utf-8")
    path.chmod(0o200)
    with pytest.raises(UserError) as exc:
        read_url_file(str(path))
    assert one_line(exc) == f"cannot read the URL file {path}: Permission denied"


def test_url_file_from_a_pipe(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, f"{URL}\n".encode())
    os.close(write_end)
    try:
        assert read_url_file(f"/proc/self/fd/{read_end}") == URL
    finally:
        os.close(read_end)


# --- private folders and files --------------------------------------------------------------------
def test_check_private_dir_makes_an_own_folder_private(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir(mode=0o755)
    folder.chmod(0o777)
    check_private_dir(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    check_private_dir(tmp_path / "absent")  # nothing to check


def test_make_private_dir_creates_0700(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    old = os.umask(0)
    try:
        make_private_dir(folder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_folder_others_can_write_is_refused_when_chmod_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)

    def refuse(path: Any, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(config.os, "chmod", refuse)
    with pytest.raises(UserError) as exc:
        make_private_dir(folder)
    assert one_line(exc) == (
        f"the folder {folder} can be changed by other users (mode 0777) and cannot be made "
        f"private (Operation not permitted): run `chmod 700 {folder}`, or use a folder of "
        "your own (e.g. set SMSGW_HOME)")


def test_folder_only_readable_by_others_is_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o755)

    def refuse(path: Any, mode: int) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(config.os, "chmod", refuse)
    with caplog.at_level(logging.WARNING, logger="smsgw.config"):
        check_private_dir(folder)
    assert f"cannot make {folder} private: Read-only file system" in caplog.text


def foreign_message(folder: Path, uid: int, me: int) -> str:
    return (f"the folder {folder} belongs to another user (uid {uid}; you are uid {me}): "
            "smsgw keeps the webapp password there, so use a folder of your own (e.g. set "
            "SMSGW_HOME to a folder in your home)")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a folder away")
def test_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o755)
    os.chown(folder, 65534, 65534)
    for check in (check_private_dir, make_private_dir):
        with pytest.raises(UserError) as exc:
            check(folder)
        assert one_line(exc) == foreign_message(folder, 65534, 0)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # not chmod-ed: not ours


def test_folder_of_another_user_is_refused_any_user(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    me = os.geteuid() + 1
    monkeypatch.setattr(config.os, "geteuid", lambda: me)
    with pytest.raises(UserError) as exc:
        Paths(config_dir=folder, data_dir=tmp_path / "data").ensure()
    assert one_line(exc) == foreign_message(folder, os.stat(folder).st_uid, me)


def test_a_file_where_the_folder_should_be(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(UserError) as exc:
        check_private_dir(path)
    assert one_line(exc).startswith(f"{path} is not a folder")


def test_open_private_creates_0600_close_on_exec(tmp_path: Path) -> None:
    path = tmp_path / "state.lock"
    old = os.umask(0)
    try:
        fd = open_private(path, os.O_WRONLY | os.O_CREAT)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)
    fd = open_private(path, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(FileNotFoundError):
        open_private(tmp_path / "absent", os.O_RDONLY)


def test_open_private_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious", encoding="utf-8")
    link = tmp_path / "smsgw.log"
    link.symlink_to(target)
    message = (f"{link} is a symbolic link: smsgw does not follow links for its private "
               f"files; remove it (rm {link}) and try again")
    with pytest.raises(UserError) as exc:
        open_private(link, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert one_line(exc) == message
    assert target.read_text(encoding="utf-8") == "precious"
    dangling = tmp_path / "daemon.pid"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(UserError) as exc:
        open_private(dangling, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    assert str(dangling) in one_line(exc)
    assert not (tmp_path / "would-be-created").exists()


def test_backslashes_in_a_secret_in_every_spelling() -> None:
    secret = 'a\\\\b\\"c'  # a, two backslashes, b, backslash, quote, c
    url = "https://gw:pw@example.org/sms/?key=" + quote(secret, safe="")
    for how, spelled in spellings(secret).items():
        if not how.startswith("base64"):
            assert_clean(spelled, url), how


@pytest.mark.timeout(20)
def test_scrub_is_fast_on_hostile_text() -> None:
    """Long runs of what spellings are made of must not make the search explode."""
    url = ("https://gw:" + "%5C" * 12 + "x@example.org/?k=" + "a%5C" * 12 + "y&j="
           + "%5C%22" * 8 + "&q=" + quote(UNICODE_PW, safe=""))
    for text in ["\\" * 50000, "\\\\\\\\x" * 10000, "a\\" * 25000, "&amp;" * 20000,
                 "%25" * 30000, "&#" * 30000, "\\u00" * 20000]:
        assert scrub(text, url) == text
