"""GSM-7 / UCS-2 part counting and CDMA-compatibility splitting.

Character costs come from the `gsm0338` codec (GSM 03.38 default alphabet and its extension
table): a basic character is one septet, an extension character (such as the euro sign or
square brackets) is an escape plus a character, two septets. Text with any other character
goes out as UCS-2, counted in UTF-16 code units.
"""

from __future__ import annotations

import math
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from itertools import accumulate

import gsm0338  # noqa: F401  (importing registers the 'gsm03.38' codec)

GSM7_SINGLE = 160
GSM7_MULTI = 153
UCS2_SINGLE = 70
UCS2_MULTI = 67

_CODEC = "gsm03.38"
_ESC = 0x1B
_ZWJ = "\u200d"
_ZWNJ = "\u200c"
# Unicode spaces that mean "do not break here".
_NO_BREAK_SPACES = frozenset("\u00a0\u2007\u202f")
_PREFIX_RE = re.compile(r"([1-9][0-9]*)/([1-9][0-9]*) ")


def _build_septet_table() -> dict[str, int]:
    """Map every character of the codec's basic and extension tables to its septet count."""
    chars: set[str] = set()
    for code in range(0x80):
        if code == _ESC:
            continue
        for raw in (bytes([code]), bytes([_ESC, code])):
            try:
                decoded = raw.decode(_CODEC)
            except UnicodeDecodeError:
                continue
            if len(decoded) == 1:
                chars.add(decoded)
    # The codec also "encodes" U+001B as a bare escape byte, which the receiver would read as
    # the start of an extension pair; it is not a character of the alphabet (nor for Android).
    chars.discard(chr(_ESC))
    return {ch: len(ch.encode(_CODEC)) for ch in chars}


_SEPTETS: dict[str, int] = _build_septet_table()
_GSM_CHARS = frozenset(_SEPTETS)


def is_gsm7(text: str) -> bool:
    """Whether every character of `text` is in the GSM-7 default alphabet or its extension."""
    return _GSM_CHARS.issuperset(text)


def septets(text: str) -> int:
    """GSM-7 length of `text`: extension characters count 2. ValueError if not GSM-7."""
    try:
        return sum(map(_SEPTETS.__getitem__, text))
    except KeyError as exc:
        raise ValueError(f"not a GSM-7 character: {exc.args[0]!r}") from None


def utf16_units(text: str) -> int:
    """Length of `text` in UTF-16 code units (a character beyond the BMP counts 2)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def count_parts(text: str) -> int:
    """SMS parts of a normal concatenated send, as Android's length calculation reports it.

    GSM-7: 1 part up to 160 septets, else ceil(septets / 153); otherwise UCS-2: 1 part up to
    70 code units, else ceil(units / 67). Empty text is 1 part.
    """
    if is_gsm7(text):
        n = septets(text)
        return 1 if n <= GSM7_SINGLE else math.ceil(n / GSM7_MULTI)
    n = utf16_units(text)
    return 1 if n <= UCS2_SINGLE else math.ceil(n / UCS2_MULTI)


def fits_one_sms(part: str) -> bool:
    """Whether `part` fits one single SMS: <=160 septets if GSM-7, else <=70 UTF-16 units."""
    if is_gsm7(part):
        return septets(part) <= GSM7_SINGLE
    return utf16_units(part) <= UCS2_SINGLE


def strip_prefix(part: str) -> str:
    """Remove the leading "n/N " that split_cdma puts on each part of a multi-part split.

    Only a valid prefix (1 <= n <= N, N >= 2) is removed, and only one. A single-part result of
    split_cdma carries no prefix: do not pass it here, its text may itself start with "n/N ".
    """
    m = _PREFIX_RE.match(part)
    if m is None:
        return part
    n, total = int(m.group(1)), int(m.group(2))
    if total < 2 or n > total:
        return part
    return part[m.end():]


def split_cdma(text: str, prefix: bool = True) -> list[str]:
    """Split `text` into parts that are each sent as their own single SMS (CDMA mode).

    Text that fits one SMS is returned unchanged as the only part. Otherwise the encoding is
    chosen for the whole message (GSM-7 if possible, else UCS-2) and every part stays within
    one SMS of it: 160 septets or 70 UTF-16 code units, the "n/N " prefix included. A part
    never ends inside an extension character or a surrogate pair, and avoids ending inside a
    grapheme (combining marks, variation selectors, emoji modifiers, ZWJ sequences, flags).
    Parts break at whitespace where that keeps them reasonably full; the whitespace starts the
    next part, right after its prefix, because termux-sms-send trims each text it sends.

    With `prefix` the parts are "1/N ...", "2/N ..." and strip_prefix undoes that; without it
    the parts joined are exactly `text`, but Termux's trim then loses any whitespace at the
    start or end of a part.
    """
    if fits_one_sms(text):
        return [text]
    if is_gsm7(text):
        limit = GSM7_SINGLE
        costs = [_SEPTETS[ch] for ch in text]
    else:
        limit = UCS2_SINGLE
        costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    cum = [0, *accumulate(costs)]
    safe = _grapheme_breaks(text)

    if not prefix:
        return _split(text, cum, safe, lambda _n: limit)

    def capacity(total: int) -> Callable[[int], int]:
        # Prefix characters (digits, "/", space) are one septet or one code unit each.
        return lambda n: limit - len(f"{n}/{total} ")

    # Plan for `total` parts until a plan needs no more: more parts mean wider prefixes.
    total = 2
    while True:
        payloads = _split(text, cum, safe, capacity(total))
        got = len(payloads)
        if got <= total:
            # Each payload fits beside "n/total ", so also beside the no wider "n/got ".
            return [f"{n}/{got} {p}" for n, p in enumerate(payloads, 1)]
        total = got


def _split(text: str, cum: list[int], safe: list[bool],
           capacity: Callable[[int], int]) -> list[str]:
    """Cut `text` greedily into payloads; `capacity(n)` is the cost allowed for payload n."""
    n = len(text)
    parts: list[str] = []
    start = 0
    while start < n:
        cap = capacity(len(parts) + 1)
        if cap < 2:  # an extension character or a surrogate pair must fit in a part
            raise ValueError("text too long to split into single SMS parts")
        base = cum[start]
        if cum[n] - base <= cap:
            parts.append(text[start:])
            break
        end = bisect_right(cum, base + cap, start, n + 1) - 1  # longest payload that fits
        # Do not give up more than a third of the part to find a nicer place to cut.
        lowest = max(start + 1, bisect_left(cum, base + cap - cap // 3, start, end + 1))
        cut = _choose_cut(text, safe, lowest, end)
        parts.append(text[start:cut])
        start = cut
    return parts


def _choose_cut(text: str, safe: list[bool], lowest: int, end: int) -> int:
    """Best index in [lowest, end] to end a payload before, text[end] existing."""
    # 1. before the first of a run of whitespace, so the run starts the next part.
    for j in range(end, lowest - 1, -1):
        prev = text[j - 1]
        if (safe[j] and _is_break_space(text[j]) and not prev.isspace()
                and not _trimmed(prev)):
            return j
    # 2. a grapheme boundary whose part does not end in what Termux would trim.
    for j in range(end, lowest - 1, -1):
        if safe[j] and not _trimmed(text[j - 1]):
            return j
    # 3. at least keep the part's end from being trimmed.
    for j in range(end, lowest - 1, -1):
        if not _trimmed(text[j - 1]):
            return j
    return end


def _trimmed(ch: str) -> bool:
    """Whether Java's String.trim() (used by Termux:API on the text) strips `ch` at an edge."""
    return ch <= " "


def _is_break_space(ch: str) -> bool:
    """Whitespace that separates words (not no-break spaces, not the ASCII info separators)."""
    return ch.isspace() and ch not in _NO_BREAK_SPACES and not "\x1c" <= ch <= "\x1f"


def _is_extend(cp: int, ch: str) -> bool:
    """Whether `ch` attaches to the character before it (grapheme Extend / SpacingMark / ZWJ)."""
    if cp < 0x300:
        return False
    if ch in (_ZWJ, _ZWNJ) or 0x1F3FB <= cp <= 0x1F3FF or 0xE0020 <= cp <= 0xE007F:
        return True  # ZWJ/ZWNJ, emoji skin-tone modifiers, emoji tag characters
    return unicodedata.category(ch) in ("Mn", "Me", "Mc")


def _is_ri(cp: int) -> bool:
    return 0x1F1E6 <= cp <= 0x1F1FF


def _hangul_kind(cp: int) -> str:
    """L, V or T for conjoining Hangul jamo, S for a precomposed syllable, else ''."""
    if 0x1100 <= cp <= 0x115F or 0xA960 <= cp <= 0xA97C:
        return "L"
    if 0x1160 <= cp <= 0x11A7 or 0xD7B0 <= cp <= 0xD7C6:
        return "V"
    if 0x11A8 <= cp <= 0x11FF or 0xD7CB <= cp <= 0xD7FB:
        return "T"
    if 0xAC00 <= cp <= 0xD7A3:
        return "S"
    return ""


def _grapheme_breaks(text: str) -> list[bool]:
    """safe[j]: cutting before text[j] does not split a grapheme (a cheap subset of UAX #29)."""
    n = len(text)
    safe = [True] * (n + 1)
    ri_run = 0  # regional indicators just before this character: flags are pairs of them
    prev_ch, prev_hangul = "", ""
    for i, ch in enumerate(text):
        cp = ord(ch)
        ri = _is_ri(cp)
        hangul = _hangul_kind(cp) if 0x1100 <= cp <= 0xD7FB else ""
        if i and (
            _is_extend(cp, ch)
            or prev_ch == _ZWJ
            or (prev_ch == "\r" and ch == "\n")
            or (ri and ri_run % 2 == 1)
            or hangul in ("V", "T")
            or (prev_hangul == "L" and hangul in ("L", "S"))
        ):
            safe[i] = False
        ri_run = ri_run + 1 if ri else 0
        prev_ch, prev_hangul = ch, hangul
    return safe
