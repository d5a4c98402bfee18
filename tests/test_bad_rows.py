"""One unreadable inbox row never takes the gateway down (TermuxPhone over tests/fakes).

termux-sms-list can print a body with a lone surrogate (half an emoji, as a \\udXXX escape),
dates in the phone's locale digits (SimpleDateFormat with the default locale), and, on a
broken or unknown app, entries that are not readable rows at all. A readable row is
returned whatever its text; an unreadable one is set aside for take_bad_rows() once, and
the read window moves past it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
from fakes import script

from smsgw.phone import termux
from smsgw.phone.base import INBOX, SENT, BadRow, SmsRow, number_digits
from smsgw.phone.termux import TermuxPhone, ascii_digits

pytest_plugins = ["fakes.fixtures"]

T0 = datetime(2026, 12, 1, 9, 15, 42, 250000, tzinfo=timezone.utc)
S = timedelta(seconds=1)
HALF_EMOJI = "half \ud83d emoji"  # a lone high surrogate, as Java strings can hold

# Termux:API package (script) and app versions, as a phone can pair them.
MODES = {
    "selection": {},  # script 0.59 + app 0.53: read by `_id` with --message-selection
    "app_0.50": {"script_version": "0.59", "app_version": "0.50"},  # `_id`, selection ignored
    "old_app": {"script_version": "0.59", "app_version": "0.49"},  # no `_id`: by date
    "old_version": {"old_version": 1},  # script 0.58 + app 0.49: the option is refused
}


@pytest.fixture
def fake(fake_termux):
    fake_termux.set_clock(T0)
    return fake_termux


@pytest.fixture(params=list(MODES))
def mode(request, fake):
    fake.set_mode(**MODES[request.param])
    # An app that ignores the selection is told apart from a new one on a phone with rows.
    fake.add_row("sent", "+254799999999", "setup", at=T0 - timedelta(days=1))
    return request.param



def bodies(rows):
    return [r.body for r in rows]



# the row key and BadRow ------------------------------------------------------------------
@pytest.mark.parametrize("body", ["hello", "", "émoji 😀", "٢٠٢٦ عربي", "a\nb\x00c"])
def test_row_key_is_unchanged_for_every_body_valid_in_utf8(body):
    row = SmsRow(INBOX, "+254 700 000 001", body, T0.replace(microsecond=0), 7)
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
    assert row.key == f"7|254700000001|{int(row.date.timestamp())}|{digest}"


def test_row_key_of_a_lone_surrogate_body_does_not_raise():
    one = SmsRow(INBOX, "+254700000001", HALF_EMOJI, T0, 1)
    two = SmsRow(INBOX, "+254700000001", "half \ud83e emoji", T0, 1)
    assert one.key != two.key
    assert one.key == SmsRow(INBOX, "+254700000001", HALF_EMOJI, T0, 1).key


def test_bad_row_is_short_valid_utf8_and_keyed_on_what_identifies_it():
    entry = {"threadid": 3, "type": "inbox", "read": False, "address": "+254700000001",
             "body": "x" * 2000 + "\ud83d", "_id": 12}
    bad = BadRow.of(entry, "no `received` date " + "!" * 500)
    assert len(bad.raw) <= 500 and bad.raw.endswith("...")
    bad.raw.encode("utf-8")
    assert json.loads(BadRow.of({"body": HALF_EMOJI}, "r").raw) == {"body": HALF_EMOJI}
    assert len(bad.reason) <= 200
    assert bad.key.startswith("bad|") and len(bad.key) == 20
    # Read on the phone, a contact added, another thread: still the same row.
    assert BadRow.of({**entry, "read": True, "sender": "Alice", "threadid": 9}, "r").key == \
        bad.key
    assert BadRow.of({**entry, "_id": 13}, "r").key != bad.key
    assert BadRow.of("garbage", "r").key != BadRow.of(None, "r").key


@pytest.mark.parametrize(("text", "expected"), [
    ("٢٠٢٦-١٢-٠١ ٠٩:١٥:٤٢", "2026-12-01 09:15:42"),  # Arabic-Indic
    ("۲۰۲۶-۱۲-۰۱ ۰۹:۱۵:۴۲", "2026-12-01 09:15:42"),  # Persian
    ("२०२६-१२-०१ ०९:१५:४२", "2026-12-01 09:15:42"),  # Devanagari (Nepali, Marathi)
    ("২০২৬-১২-০১ ০৯:১৫:৪২", "2026-12-01 09:15:42"),  # Bengali
    ("\u200f2026-12-01\u061c 09:15:42", "2026-12-01 09:15:42"),  # invisible marks
    ("2026-12-01 09:15:42", "2026-12-01 09:15:42"),
])
def test_received_digits_of_any_locale(text, expected):
    assert ascii_digits(text) == expected
    assert termux._to_utc(text)[0] == termux._to_utc(expected)[0]


# one bad row among good ones -------------------------------------------------------------
@pytest.mark.parametrize("page_size", [500, 3])
def test_surrogate_body_is_a_row_and_a_dateless_row_is_set_aside_once(fake, mode, page_size,
                                                                       caplog):
    caplog.set_level(logging.DEBUG, logger="smsgw")
    phone = TermuxPhone(page_size=page_size)
    fake.receive("+254700000009", "before", at=T0 - 60 * S)
    _, pos = phone.read_inbox(None)
    for i in range(10):
        fake.receive(f"+2547000001{i:02d}", f"good {i}", at=T0 + i * S)
        if i == 3:
            fake.receive("+254700000001", HALF_EMOJI, at=T0 + i * S + timedelta(milliseconds=100))
        if i == 6:
            bad_id = fake.add_raw_row("+254700000002", "secret code 4321",
                                      at=T0 + i * S + timedelta(milliseconds=100),
                                      drop=["received"])
    rows, pos = phone.read_inbox(pos)
    expected = [f"good {i}" for i in range(4)] + [HALF_EMOJI] + [f"good {i}" for i in range(4, 10)]
    assert bodies(rows) == expected
    assert all(r.kind == INBOX for r in rows)
    (odd,) = [r for r in rows if r.body == HALF_EMOJI]
    assert odd.address == "+254700000001" and odd.key
    json.dumps(pos)

    (bad,) = phone.take_bad_rows()
    assert bad.reason == "no `received` date"
    raw = json.loads(bad.raw)
    assert (raw["body"], raw.get("_id", bad_id)) == ("secret code 4321", bad_id)
    assert phone.take_bad_rows() == []
    # Logged once, as a warning, without the body.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and bad.key in
                r.getMessage()]
    assert len(warnings) == 1 and "no `received` date" in warnings[0].getMessage()
    assert "4321" not in caplog.text

    rows, pos = phone.read_inbox(pos)
    assert (rows, phone.take_bad_rows()) == ([], [])
    fake.receive("+254700000003", "later", at=T0 + 20 * S)
    rows, pos = phone.read_inbox(pos)
    assert (bodies(rows), phone.take_bad_rows()) == (["later"], [])
    assert phone.read_inbox(pos)[0] == []
    assert phone.take_bad_rows() == []


@pytest.mark.parametrize("digits", ["arabic", "persian", "devanagari", "bengali"])
def test_a_whole_inbox_dated_in_locale_digits_is_read_normally(fake, mode, digits, local_tz):
    local_tz("IST-5:30")
    fake.set_mode(locale_digits=digits)
    fake.receive("+254700000009", "old", at=T0 - timedelta(days=2))
    fake.receive("+254700000008", "since", at=T0)
    phone = TermuxPhone(page_size=4)
    rows, pos = phone.read_inbox(None, since=T0)
    assert bodies(rows) == ["since"]
    assert rows[0].date == T0.replace(microsecond=0)
    for i in range(9):
        fake.receive("+254700000001", f"m{i}", at=T0 + (i + 1) * S)
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == [f"m{i}" for i in range(9)]
    assert [r.date for r in rows] == [T0.replace(microsecond=0) + (i + 1) * S for i in range(9)]
    assert phone.read_inbox(pos)[0] == []
    assert phone.take_bad_rows() == []
    phone.send("0700111222", "reply")
    assert bodies(phone.read_outgoing(T0)) == ["reply"]


@pytest.mark.parametrize(("how", "reason"), [
    ({"drop": ["received"]}, "no `received` date"),
    ({"fields": {"received": "yesterday"}}, "unreadable `received` date 'yesterday'"),
    ({"fields": {"received": "٢٠٢٦-١٣-٤٠ ٠٩:١٥:٤٢"}}, "unreadable `received` date"),
    ({"fields": {"received": 1764580542000}}, "`received` is a number, not a text"),
    ({"fields": {"received": None}}, "`received` is null, not a text"),
    ({"fields": {"body": None}}, "`body` is null, not a text"),
    ({"fields": {"body": ["secret"]}}, "`body` is an array, not a text"),
    ({"drop": ["body"]}, "no `body`"),
    ({"entry": "secret garbage"}, "the entry is a string, not an object"),
    ({"entry": None}, "the entry is null, not an object"),
    ({"entry": [1, "secret"]}, "the entry is an array, not an object"),
])
def test_every_kind_of_unreadable_entry_is_set_aside(fake, mode, how, reason, caplog):
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    fake.receive("+254700000001", "one", at=T0)
    fake.add_raw_row("+254700000002", "secret", at=T0 + S, **how)
    fake.receive("+254700000003", "two", at=T0 + 2 * S)
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["one", "two"]
    (bad,) = phone.take_bad_rows()
    assert bad.reason.startswith(reason)
    assert "secret" not in bad.reason and "secret" not in caplog.text
    rows, pos = phone.read_inbox(pos)
    assert (rows, phone.take_bad_rows()) == ([], [])


def test_a_bad_entry_printed_by_some_script_does_not_fail_the_read(tmp_path, monkeypatch):
    script(tmp_path, monkeypatch, "termux-sms-list",
           """printf '%s' '[{"received": "yesterday", "body": "x"}, 7]'""")
    phone = TermuxPhone()
    phone._selection = True  # skip the probe
    rows, pos = phone.read_inbox({"v": 1, "id": 1, "since": None, "seen": {}})
    assert rows == []
    assert pos["id"] == 1
    assert [b.reason for b in phone.take_bad_rows()] == [
        "unreadable `received` date 'yesterday'", "the entry is a number, not an object"]


# the read window moves past bad rows -----------------------------------------------------
def test_bad_row_id_counts_for_the_id_position(fake):
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    fake.receive("+254700000001", "good", at=T0)
    bad_id = fake.add_raw_row("+254700000002", "bad", at=T0 + S, drop=["received"])
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["good"] and len(phone.take_bad_rows()) == 1
    assert pos["id"] == bad_id
    assert pos["since"] == int(T0.timestamp()) + 1  # from the readable rows only
    fake.reset_calls()
    assert phone.read_inbox(pos)[0] == []
    (call,) = fake.calls("termux-sms-list")
    assert f"_id >= {bad_id}" in " ".join(call["argv"])
    assert phone.take_bad_rows() == []


@pytest.mark.parametrize("modes", [{"old_version": 1}, MODES["app_0.50"]])
def test_dateless_newest_row_does_not_pin_since(fake, modes):
    fake.set_mode(**modes)
    phone = TermuxPhone()
    fake.receive("+254700000009", "old", at=T0 - 60 * S)
    _, pos = phone.read_inbox(None)
    fake.receive("+254700000001", "good", at=T0)
    fake.add_raw_row("+254700000002", "bad", at=T0 + 5 * S, drop=["received"])
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["good"]
    (bad,) = phone.take_bad_rows()
    assert pos["since"] == int(T0.timestamp())
    assert pos["bad"] == [bad.key]  # it may be listed again: remembered
    for i in range(3):
        fake.receive("+254700000001", f"next {i}", at=T0 + (10 + i) * S)
        rows, pos = phone.read_inbox(pos)
        assert bodies(rows) == [f"next {i}"]
        assert phone.take_bad_rows() == []
    assert "bad" not in pos  # behind the window now: forgotten
    assert pos["since"] == int(T0.timestamp()) + 12


def test_pages_full_of_bad_rows_are_paged_through(fake, mode):
    phone = TermuxPhone(page_size=3)
    _, pos = phone.read_inbox(None)
    fake.receive("+254700000001", "first", at=T0)
    for i in range(7):
        fake.add_raw_row(f"+25470000010{i}", f"bad {i}", at=T0 + S,
                         **({"drop": ["received"]} if i % 2 else {"entry": f"junk {i}"}))
    fake.receive("+254700000001", "last", at=T0 + 2 * S)
    rows, pos = phone.read_inbox(pos)
    assert bodies(rows) == ["first", "last"]
    assert len(phone.take_bad_rows()) == 7
    rows, pos = phone.read_inbox(pos)
    assert (rows, phone.take_bad_rows()) == ([], [])
    fake.receive("+254700000001", "after", at=T0 + 3 * S)
    assert bodies(phone.read_inbox(pos)[0]) == ["after"]
    assert phone.take_bad_rows() == []


def test_an_inbox_of_only_bad_rows(fake, mode):
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    fake.add_raw_row("+254700000002", "bad", at=T0, drop=["received"])
    rows, pos = phone.read_inbox(pos)
    assert rows == [] and len(phone.take_bad_rows()) == 1
    assert phone.read_inbox(pos)[0] == [] and phone.take_bad_rows() == []
    fake.receive("+254700000001", "good", at=T0 + S)
    assert bodies(phone.read_inbox(pos)[0]) == ["good"]
    assert phone.take_bad_rows() == []


def test_first_read_skips_old_bad_rows_and_since_sets_aside_new_ones(fake, mode):
    fake.add_raw_row("+254700000002", "old bad", at=T0 - 60 * S, drop=["received"])
    fake.receive("+254700000001", "old", at=T0 - 30 * S)
    fake.receive("+254700000001", "new", at=T0 + S)
    fake.add_raw_row("+254700000002", "new bad", at=T0 + 2 * S, fields={"body": None})
    fake.receive("+254700000001", "newest", at=T0 + 3 * S)

    phone = TermuxPhone()
    rows, pos = phone.read_inbox(None)  # the old inbox is not forwarded, bad rows neither
    assert rows == [] and phone.take_bad_rows() == []
    assert phone.read_inbox(pos)[0] == [] and phone.take_bad_rows() == []

    phone = TermuxPhone()
    rows, pos = phone.read_inbox(None, since=T0)
    assert bodies(rows) == ["new", "newest"]
    (bad,) = phone.take_bad_rows()
    assert json.loads(bad.raw)["body"] is None
    assert phone.read_inbox(pos)[0] == [] and phone.take_bad_rows() == []


def test_same_bad_row_is_not_set_aside_again_when_its_sender_appears(fake, mode):
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    fake.receive("+254700000001", "good", at=T0)
    fake.add_raw_row("+254700000002", "bad", at=T0, drop=["received"])  # newest: listed again
    rows, pos = phone.read_inbox(pos)
    assert len(phone.take_bad_rows()) == 1
    fake.add_contact("0700000002", "Bob")  # the listing now shows `sender`
    assert phone.read_inbox(pos)[0] == []
    assert phone.take_bad_rows() == []


def test_reading_again_from_an_old_position_gives_the_bad_row_again_logged_once(fake, mode,
                                                                                 caplog):
    phone = TermuxPhone()
    _, start = phone.read_inbox(None)
    fake.receive("+254700000001", "good", at=T0)
    fake.add_raw_row("+254700000002", "bad", at=T0 + S, drop=["received"])
    rows, _ = phone.read_inbox(start)
    first = phone.take_bad_rows()
    rows, _ = phone.read_inbox(start)  # the position was lost: the rows come again
    assert bodies(rows) == ["good"]
    assert phone.take_bad_rows() == first
    assert len([r for r in caplog.records if r.levelno == logging.WARNING
                and first[0].key in r.getMessage()]) == 1


def test_waiting_bad_rows_are_bounded(fake, monkeypatch):
    monkeypatch.setattr(termux, "MAX_BAD_ROWS", 3)
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    for i in range(5):
        fake.add_raw_row("+254700000002", f"bad {i}", at=T0 + i * S, drop=["received"])
        _, pos = phone.read_inbox(pos)
    assert [json.loads(b.raw)["body"] for b in phone.take_bad_rows()] == [
        "bad 2", "bad 3", "bad 4"]


def test_position_of_an_older_smsgw_still_loads(fake):
    fake.receive("+254700000001", "old", at=T0)
    phone = TermuxPhone()
    _, pos = phone.read_inbox(None)
    assert "bad" not in pos
    fake.add_raw_row("+254700000002", "bad", at=T0 + S, drop=["received"])
    fake.receive("+254700000001", "new", at=T0 + 2 * S)
    rows, pos = phone.read_inbox({k: pos[k] for k in ("v", "id", "since", "seen")})
    assert bodies(rows) == ["new"] and len(phone.take_bad_rows()) == 1


# sent and failed rows --------------------------------------------------------------------
def test_read_outgoing_skips_bad_rows(fake, mode, caplog):
    caplog.set_level(logging.DEBUG, logger="smsgw")
    phone = TermuxPhone(page_size=3)
    fake.add_row("sent", "+254700000001", "s0", at=T0)
    fake.add_raw_row("+254700000001", "secret", at=T0 + S, kind="sent", drop=["received"])
    fake.add_raw_row("+254700000001", "secret", at=T0 + S, kind="failed",
                     fields={"body": 12})
    fake.add_raw_row("+254700000001", "secret", at=T0 + S, kind="sent", entry="junk")
    fake.add_row("failed", "+254700000001", "s1", at=T0 + 2 * S)
    fake.add_row("sent", "+254700000001", "s2", at=T0 + 3 * S)
    rows = phone.read_outgoing(T0)
    assert [(r.kind, r.body) for r in rows] == [(SENT, "s0"), ("failed", "s1"), (SENT, "s2")]
    assert phone.take_bad_rows() == []
    assert "cannot be read (no `received` date): skipped" in caplog.text
    assert not [r for r in caplog.records
                if r.levelno >= logging.WARNING and "cannot be read" in r.getMessage()]
    assert "secret" not in caplog.text
    assert number_digits(rows[0].address) == "254700000001"
