"""The life cycle as data: every (from, to) pair of the transition tables, tried.

A legal move changes the state; an illegal one raises InternalError and changes nothing,
neither the record nor what is queued for the webapp nor the state file.
"""

from __future__ import annotations

import itertools
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from smsgw.errors import InternalError
from smsgw.models import OUT_MOVES, PART_MOVES, Outgoing, OutState, Part, PartState
from smsgw.store import Store

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
DOC = Path(__file__).resolve().parent.parent / "docs" / "STATES.md"


def _stored(tmp_path: Path, state: OutState) -> Store:
    store = Store(tmp_path / "state")
    with store.unit(T0) as u:
        u.add(Outgoing(id="m1", to="+254700000001", content="hi", state=state,
                       created=T0, last_activity=T0))
    return store


@pytest.mark.parametrize("old, new", list(itertools.product(OutState, OutState)))
def test_every_message_move_against_the_table(tmp_path: Path, old: OutState,
                                              new: OutState) -> None:
    store = _stored(tmp_path, old)
    before = store.path.read_bytes()
    if new in OUT_MOVES[old]:
        with store.unit(T0) as u:
            u.transition(u.get("m1"), new, "why" if new is OutState.FAILED else None)
        with store.unit(T0) as u:
            assert u.get("m1").state is new
        return
    with pytest.raises(InternalError, match=f"from {old.value} to {new.value}"), \
            store.unit(T0) as u:
        msg = u.get("m1")
        u.transition(msg, new)
    assert msg.state is old and msg.history == []
    assert store.path.read_bytes() == before
    assert store.next_batch(T0).updates == []


@pytest.mark.parametrize("old, new", list(itertools.product(PartState, PartState)))
def test_every_part_move_against_the_table(old: PartState, new: PartState) -> None:
    part = Part("hi", old)
    if new is old or new in PART_MOVES[old]:
        part.move(new)
        assert part.state is new
    else:
        with pytest.raises(InternalError):
            part.move(new)
        assert part.state is old


def _documented(title: str) -> dict[str, set[str]]:
    """`from -> to, to` lines under a `## title` heading of docs/STATES.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    moves: dict[str, set[str]] = {}
    for old, targets in re.findall(r"^\| `(\w+)` \| (.*) \|$", section, re.M):
        moves[old] = set(re.findall(r"`(\w+)`", targets))
    return moves


def test_the_documented_tables_are_the_code() -> None:
    assert _documented("Messages") == {
        s.value: {t.value for t in OUT_MOVES[s]} for s in OutState}
    assert _documented("Parts") == {
        s.value: {t.value for t in PART_MOVES[s]} for s in PartState}
