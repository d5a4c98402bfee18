"""Tests for smsgw.segment: GSM-7 / UCS-2 counting and CDMA-mode splitting."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsgw.segment import (
    GSM7_MULTI,
    GSM7_SINGLE,
    UCS2_MULTI,
    UCS2_SINGLE,
    count_parts,
    fits_one_sms,
    is_gsm7,
    septets,
    split_cdma,
    strip_prefix,
    utf16_units,
)

CYR = "я"  # not GSM-7, one UTF-16 unit
EMOJI = "😀"  # outside the BMP: a surrogate pair, two UTF-16 units
EXT = "€[]{}^~|\\\x0c"  # the GSM-7 extension characters: two septets each
FAMILY = "👨\u200d👩\u200d👧"  # ZWJ sequence, 8 UTF-16 units
PREFIX = re.compile(r"([0-9]+)/([0-9]+) ")


def java_trim(s: str) -> str:
    """What Java's String.trim() (Termux:API) leaves of `s`."""
    start, end = 0, len(s)
    while start < end and s[start] <= " ":
        start += 1
    while end > start and s[end - 1] <= " ":
        end -= 1
    return s[start:end]


# --- counting -----------------------------------------------------------------------------

def test_constants():
    assert (GSM7_SINGLE, GSM7_MULTI, UCS2_SINGLE, UCS2_MULTI) == (160, 153, 70, 67)


def test_is_gsm7():
    assert is_gsm7("")
    assert is_gsm7("Hello @£$¥ èéùìò ÇØøÅå ΔΦΓΛΩΠΨΣΘΞ ÆæßÉ ¤ ¡¿ ÄÖÑÜ§ äöñüà\n\r")
    assert is_gsm7(EXT)
    assert not is_gsm7("é" + CYR)
    assert not is_gsm7(EMOJI)
    assert not is_gsm7("`")  # the backtick is not in the GSM alphabet
    assert not is_gsm7("ç")  # only the capital Ç is in the default table
    # The codec maps U+001B to a bare escape byte; it is no character of the alphabet.
    assert not is_gsm7("\x1b")


def test_septets_counts_extension_characters_twice():
    assert septets("") == 0
    assert septets("abc") == 3
    assert septets("€") == 2
    assert septets("a" + EXT) == 1 + 2 * len(EXT)
    assert septets("a\x0cb") == 4  # form feed lives in the extension table
    with pytest.raises(ValueError):
        septets("ab" + CYR)
    with pytest.raises(ValueError):
        septets("\x1b")


def test_septets_agree_with_the_codec():
    text = "".join(chr(c) for c in range(0x3000) if is_gsm7(chr(c)))
    assert len(text) == 137  # 128 basic characters less the escape, plus 10 extension ones
    assert septets(text) == len(text.encode("gsm03.38"))


def test_utf16_units():
    assert utf16_units("") == 0
    assert utf16_units("abc") == 3
    assert utf16_units(CYR * 5) == 5
    assert utf16_units(EMOJI) == 2
    assert utf16_units(FAMILY) == 8
    assert utf16_units("\ud800") == 1  # a lone surrogate is one unit


@pytest.mark.parametrize(("text", "parts"), [
    ("", 1),
    ("a", 1),
    ("a" * 160, 1),
    ("a" * 161, 2),
    ("a" * 306, 2),  # 2 x 153
    ("a" * 307, 3),
    ("a" * 459, 3),
    ("a" * 460, 4),
    ("€" * 80, 1),  # 160 septets
    ("€" * 81, 2),  # 162 septets
    ("€" * 153, 2),  # 306 septets
    ("€" * 154, 3),
    (CYR * 70, 1),
    (CYR * 71, 2),
    (CYR * 134, 2),  # 2 x 67
    (CYR * 135, 3),
    (EMOJI * 35, 1),  # 70 units
    (EMOJI * 36, 2),
    ("a" * 160 + CYR, 3),  # one non-GSM character turns the whole text into UCS-2: 161 units
])
def test_count_parts(text, parts):
    assert count_parts(text) == parts


def test_fits_one_sms():
    assert fits_one_sms("")
    assert fits_one_sms("a" * 160)
    assert not fits_one_sms("a" * 161)
    assert fits_one_sms("a" * 158 + "€")
    assert not fits_one_sms("a" * 159 + "€")
    assert fits_one_sms(CYR * 70)
    assert not fits_one_sms(CYR * 71)
    assert fits_one_sms(CYR * 68 + EMOJI)
    assert not fits_one_sms(CYR * 69 + EMOJI)
    assert not fits_one_sms("a" * 70 + CYR)  # 71 UCS-2 units, though only 71 characters


# --- strip_prefix -------------------------------------------------------------------------

@pytest.mark.parametrize(("part", "payload"), [
    ("1/2 hello", "hello"),
    ("2/2  hello", " hello"),  # only the prefix's own space goes
    ("10/12 x", "x"),
    ("1/2 1/2 x", "1/2 x"),  # only one prefix
    ("1/2 ", ""),
    ("hello", "hello"),
    ("1/2x", "1/2x"),
    ("3/2 x", "3/2 x"),  # n > N: not ours
    ("0/2 x", "0/2 x"),
    ("1/1 x", "1/1 x"),  # split_cdma never numbers a single part
    ("١/٢ x", "١/٢ x"),  # only ASCII digits
])
def test_strip_prefix(part, payload):
    assert strip_prefix(part) == payload


# --- split_cdma: exact cases --------------------------------------------------------------

def test_text_that_fits_is_returned_unchanged():
    assert split_cdma("") == [""]
    assert split_cdma("a" * 160) == ["a" * 160]
    assert split_cdma("a" * 160, prefix=False) == ["a" * 160]
    assert split_cdma("  hi  ") == ["  hi  "]
    assert split_cdma("3/4 cup flour") == ["3/4 cup flour"]
    assert split_cdma(CYR * 70) == [CYR * 70]
    assert split_cdma("a" * 158 + "€") == ["a" * 158 + "€"]


def test_161_gsm_characters():
    assert split_cdma("a" * 161) == ["1/2 " + "a" * 156, "2/2 " + "a" * 5]
    assert split_cdma("a" * 161, prefix=False) == ["a" * 160, "a"]


def test_reference_gateway_tail_bug_is_absent():
    # The reference gateway sends len // 136 parts of 136 characters: 300 characters would
    # lose the last 28. Every character must arrive.
    text = "".join(chr(ord("a") + i % 26) for i in range(300))
    parts = split_cdma(text)
    assert parts == ["1/2 " + text[:156], "2/2 " + text[156:]]


def test_extension_character_at_the_boundary_moves_whole():
    assert split_cdma("a" * 159 + "€", prefix=False) == ["a" * 159, "€"]
    text = "a" * 155 + "€" + "a" * 10
    assert split_cdma(text) == ["1/2 " + "a" * 155, "2/2 €" + "a" * 10]
    # One septet earlier it still fits: 154 + 2 = 156.
    text = "a" * 154 + "€" + "a" * 10
    assert split_cdma(text) == ["1/2 " + "a" * 154 + "€", "2/2 " + "a" * 10]


def test_70_and_71_ucs2_characters():
    assert split_cdma(CYR * 71) == ["1/2 " + CYR * 66, "2/2 " + CYR * 5]
    assert split_cdma(CYR * 71, prefix=False) == [CYR * 70, CYR]


def test_one_non_gsm_character_makes_the_whole_message_ucs2():
    text = "a" * 100 + CYR
    assert split_cdma(text, prefix=False) == ["a" * 70, "a" * 30 + CYR]


def test_surrogate_pair_at_the_boundary_moves_whole():
    assert split_cdma(CYR * 69 + EMOJI, prefix=False) == [CYR * 69, EMOJI]
    text = CYR * 65 + EMOJI + CYR * 5
    assert split_cdma(text) == ["1/2 " + CYR * 65, "2/2 " + EMOJI + CYR * 5]


def test_combining_mark_stays_with_its_base():
    text = CYR * 69 + "e\u0301" + CYR * 3
    assert split_cdma(text, prefix=False) == [CYR * 69, "e\u0301" + CYR * 3]


def test_zwj_sequence_stays_whole():
    text = CYR * 66 + FAMILY + CYR * 3
    assert split_cdma(text, prefix=False) == [CYR * 66, FAMILY + CYR * 3]


def test_flags_stay_whole():
    flags = "🇫🇷🇩🇪"
    assert split_cdma(CYR * 67 + flags, prefix=False) == [CYR * 67, flags]
    assert split_cdma(CYR * 65 + flags, prefix=False) == [CYR * 65 + "🇫🇷", "🇩🇪"]


def test_skin_tone_modifier_stays_with_its_emoji():
    text = CYR * 67 + "👍🏽" + CYR
    assert split_cdma(text, prefix=False) == [CYR * 67, "👍🏽" + CYR]


def test_hard_limit_wins_over_a_huge_grapheme():
    text = "e" + "\u0301" * 100
    assert split_cdma(text, prefix=False) == [text[:70], text[70:]]


def test_prefix_width_grows_at_10_parts():
    # 9 parts: "n/9 " leaves 156 septets each.
    parts = split_cdma("a" * 1404)
    assert parts == [f"{n}/9 " + "a" * 156 for n in range(1, 10)]
    # One more character needs 10 parts: "n/10 " leaves 155, "10/10 " leaves 154.
    parts = split_cdma("a" * 1405)
    assert parts == [f"{n}/10 " + "a" * 155 for n in range(1, 10)] + ["10/10 " + "a" * 10]
    assert all(len(p) == 160 for p in parts[:9])


def test_prefix_width_in_ucs2():
    parts = split_cdma(CYR * (9 * 66 + 1))
    assert parts == [f"{n}/10 " + CYR * 65 for n in range(1, 10)] + ["10/10 " + CYR * 10]


def test_splits_at_whitespace_and_moves_it_to_the_next_part():
    text = " ".join(["word"] * 40)  # 199 characters
    parts = split_cdma(text)
    assert parts == ["1/2 " + " ".join(["word"] * 31), "2/2  " + " ".join(["word"] * 9)]
    # Termux trims each text: the space survives after the prefix, nothing ends in one.
    assert [java_trim(p) for p in parts] == parts


def test_whitespace_split_without_prefix():
    text = " ".join(["word"] * 40)
    assert split_cdma(text, prefix=False) == [
        " ".join(["word"] * 32),  # 159 characters, the next space would be the 160th
        " " + " ".join(["word"] * 8),
    ]


def test_whole_whitespace_run_moves_to_the_next_part():
    text = "x" * 150 + "\n\n" + "y" * 20
    assert split_cdma(text) == ["1/2 " + "x" * 150, "2/2 \n\n" + "y" * 20]


def test_line_breaks_and_unicode_spaces_are_split_points():
    text = "x" * 140 + "\r\n" + "y" * 30
    assert split_cdma(text) == ["1/2 " + "x" * 140, "2/2 \r\n" + "y" * 30]
    text = CYR * 60 + "\u3000" + CYR * 20  # ideographic space
    assert split_cdma(text) == ["1/2 " + CYR * 60, "2/2 \u3000" + CYR * 20]


def test_no_break_space_is_not_a_split_point():
    text = CYR * 60 + "\u00a0" + CYR * 20
    assert split_cdma(text) == ["1/2 " + CYR * 60 + "\u00a0" + CYR * 5, "2/2 " + CYR * 15]


def test_whitespace_too_early_is_ignored():
    # A space in the first third of the part would waste too much: cut the word instead.
    text = "ab " + "x" * 200
    assert split_cdma(text) == ["1/2 ab " + "x" * 153, "2/2 " + "x" * 47]


def test_whitespace_window_is_the_last_third_of_the_part():
    # 156 septets beside "n/2 ": a space 104 septets in is taken, one at 103 is not.
    text = "x" * 104 + " " + "y" * 100
    assert split_cdma(text) == ["1/2 " + "x" * 104, "2/2  " + "y" * 100]
    text = "x" * 103 + " " + "y" * 100
    assert split_cdma(text) == ["1/2 " + "x" * 103 + " " + "y" * 52, "2/2 " + "y" * 48]


def test_part_does_not_end_in_trimmed_whitespace_when_cutting_a_long_word():
    # No word break in reach and a tab right at the limit: cut before it, not after.
    text = "x" * 155 + "\t" + "y" * 200
    parts = split_cdma(text)
    assert "".join(strip_prefix(p) for p in parts) == text
    assert all(java_trim(p) == p for p in parts)


def test_part_end_kept_from_trim_even_inside_a_grapheme():
    # Every grapheme boundary here follows a control character that Termux would trim.
    text = "a" + "x\u200d\x01" * 30
    parts = split_cdma(text, prefix=False)
    assert parts == [text[:69], text[69:]]
    assert parts[0].endswith("\u200d")


def test_text_full_of_brackets():
    text = "[]" * 100  # 400 septets
    parts = split_cdma(text)
    assert parts == ["1/3 " + "[]" * 39, "2/3 " + "[]" * 39, "3/3 " + "[]" * 22]
    assert all(septets(p) <= 160 for p in parts)


@pytest.mark.timeout(60)
def test_long_message_splits_quickly():
    # A quadratic splitter would take minutes here; the bound only proves it did not hang.
    words = ["lorem", "ipsum€", "dolor", "sit", "amet,", "[x]", "\n"]
    gsm = " ".join(words[i % len(words)] for i in range(20_000))
    ucs = gsm.replace("sit", "sït😀")
    for text in (gsm[:10_000], ucs[:10_000], gsm, ucs, "a" * 200_000):
        for prefix in (True, False):
            parts = split_cdma(text, prefix=prefix)
            joined = "".join(strip_prefix(p) for p in parts) if prefix else "".join(parts)
            assert joined == text
            assert all(fits_one_sms(p) for p in parts)


# --- split_cdma: properties ---------------------------------------------------------------

GSM_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"@£$¥èéΔ_ÆØ"
WORD = st.text(alphabet=GSM_LETTERS, min_size=1, max_size=12)
GSM_SPACES = [" ", "  ", "\n", "\r\n", " \n ", "\x0c"]
SPACES = st.sampled_from([*GSM_SPACES, "\t", "\u3000", "\u00a0", "\u2003"])
EXT_CHAR = st.sampled_from(list(EXT))
CLUSTERS = st.sampled_from([
    EMOJI, "👍🏽", FAMILY, "🇫🇷", "🇩🇪", "🇺", "❤️", "e\u0301", "a\u0308\u0301", CYR, "中",
    "\u200d", "\ufe0f", "한", "\u1100\u1161\u11a8", "ç", "`", "\x1b", "\x00",
])


def _run(chars, max_len):
    return st.builds(lambda c, k: c * k, chars, st.integers(1, max_len))


GSM_TOKEN = st.one_of(WORD, WORD, WORD, st.sampled_from(GSM_SPACES), EXT_CHAR,
                      _run(st.sampled_from(["a", "€", " ", "x "]), 400))
ANY_TOKEN = st.one_of(GSM_TOKEN, SPACES, CLUSTERS, CLUSTERS,
                      _run(st.sampled_from([CYR, EMOJI, "e\u0301", FAMILY, "\u0301"]), 120))
# Word-like texts, GSM-only or mixed, from a few characters to a few thousand.
BIASED = st.one_of(
    st.lists(GSM_TOKEN, max_size=80).map("".join),
    st.lists(ANY_TOKEN, max_size=80).map("".join),
)
# Arbitrary characters at lengths that need several parts, drawn cheaply as repeats.
LONG = st.builds(lambda s, k, tail: s * k + tail,
                 st.text(min_size=1, max_size=50), st.integers(1, 60), st.text(max_size=30))

PROPERTY = settings(max_examples=5000, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_split(text: str) -> None:
    """Every property split_cdma promises, with and without prefix."""
    with_prefix = split_cdma(text)
    without = split_cdma(text, prefix=False)

    if fits_one_sms(text):
        assert with_prefix == [text]
        assert without == [text]
        return

    assert "".join(without) == text
    assert "".join(strip_prefix(p) for p in with_prefix) == text
    assert len(without) >= 2
    assert len(with_prefix) >= 2

    for parts in (with_prefix, without):
        for part in parts:
            assert part
            assert fits_one_sms(part)
            # The encoding is chosen for the whole message.
            if is_gsm7(text):
                assert septets(part) <= GSM7_SINGLE
            else:
                assert utf16_units(part) <= UCS2_SINGLE

    total = len(with_prefix)
    for n, part in enumerate(with_prefix, 1):
        m = PREFIX.match(part)
        assert m is not None
        assert (int(m.group(1)), int(m.group(2))) == (n, total)
        assert strip_prefix(part)  # no empty payload

    # Short runs of what Java's trim() strips never end a part, so Termux keeps every part whole.
    # Only the message's own trailing whitespace may be lost, as for a message sent whole.
    if _longest_trimmed_run(text) <= 10:
        for n, part in enumerate(with_prefix, 1):
            assert java_trim(part) == part or (n == total and text[-1] <= " ")


def _longest_trimmed_run(text: str) -> int:
    longest = run = 0
    for ch in text:
        run = run + 1 if ch <= " " else 0
        longest = max(longest, run)
    return longest


@PROPERTY
@given(st.text())
def test_split_properties_any_text(text):
    check_split(text)


@PROPERTY
@given(BIASED)
def test_split_properties_biased_text(text):
    check_split(text)


@PROPERTY
@given(LONG)
def test_split_properties_long_text(text):
    check_split(text)


@PROPERTY
@given(st.text())
def test_count_parts_properties(text):
    parts = count_parts(text)
    assert parts >= 1
    assert (parts == 1) == fits_one_sms(text)
    if is_gsm7(text):
        assert septets(text) == len(text.encode("gsm03.38"))
        assert parts == 1 or (parts - 1) * GSM7_MULTI < septets(text) <= parts * GSM7_MULTI
    else:
        assert parts == 1 or (parts - 1) * UCS2_MULTI < utf16_units(text) <= parts * UCS2_MULTI
