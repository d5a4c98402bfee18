"""A state folder written by the previous release loads, migrates, and keeps its queue."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from smsgw.models import OutState, Ref
from smsgw.store import STATE_VERSION, Store

DATA = Path(__file__).resolve().parent / "data" / "state-v1"
LOCAL_ID = "local-cd7f0e4c-677f-468b-9737-7982043aaafa"
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    shutil.copytree(DATA, folder)
    return folder


def test_format_1_state_migrates_and_keeps_its_queue(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    assert json.loads((folder / "state.json").read_text())["meta"]["1"]["version"] == 1
    store = Store(folder)
    data = json.loads((folder / "state.json").read_text())
    assert data["meta"]["1"]["version"] == STATE_VERSION
    with store.unit(NOW) as u:
        queued = u.get("w-queued")
        assert queued is not None and queued.state is OutState.UNSENT
        # Format 1 told local messages apart by their id prefix: now by the flag.
        assert u.get(LOCAL_ID) is None
        local = u.get(Ref(LOCAL_ID, local=True))
        assert local is not None and local.local and local.content == "local test"
        assert u.inbox_position["id"] == 42
    summary = store.summary(NOW)
    assert summary["outgoing"]["UNSENT"] == 2
    assert summary["incoming"]["WAITING"] == 1
    assert store.archive.status_of("w-failed") == ("FAILED", "radio off")
    assert store.next_batch(NOW).incoming[0].content == "second SMS"


def test_migration_happens_once_and_changes_nothing_else(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    before = json.loads((folder / "state.json").read_text())
    Store(folder)
    once = (folder / "state.json").read_bytes()
    Store(folder)
    assert (folder / "state.json").read_bytes() == once
    after = json.loads(once)
    for table in ("incoming", "updates"):
        assert after.get(table) == before.get(table)
    for key, doc in before["outgoing"].items():
        assert {k: v for k, v in after["outgoing"][key].items() if k != "local"} == doc
