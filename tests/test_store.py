"""The store: atomic writes, refusal of damaged state, dedup, units, archive, locking."""

import errno
import json
import multiprocessing
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from smsgw.errors import StateError
from smsgw.models import Offered, OutState
from smsgw.phone.base import SmsRow
from smsgw.store import Store

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


def offered(i, to="+254700000001"):
    return (Offered(f"m{i}", to, f"text {i}"), None)


def walk(u, msg_id, *states):
    """Move a message along legal transitions, e.g. SENDING, PENDING, SENT."""
    msg = u.get(msg_id)
    for state in states:
        u.transition(msg, state)


def test_new_store_files_are_private(tmp_path):
    store = Store(tmp_path / "state")
    assert stat.S_IMODE(os.stat(store.folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    with store.unit(T0) as u:
        u.watcher = "x"  # any change makes the unit write
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b'{"meta": {"1": {"ver'])
def test_damaged_state_is_refused_and_kept(tmp_path, content):
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / "state.json").write_bytes(content)
    with pytest.raises(StateError) as err:
        Store(folder)
    assert "state.json" in str(err.value) and "untouched" in str(err.value)
    assert (folder / "state.json").read_bytes() == content


def test_state_from_a_newer_version_is_refused(tmp_path):
    folder = tmp_path / "state"
    folder.mkdir()
    data = {"meta": {"1": {"version": 99}}}
    (folder / "state.json").write_text(json.dumps(data))
    with pytest.raises(StateError, match="newer smsgw"):
        Store(folder)
    assert json.loads((folder / "state.json").read_text()) == data


def test_failed_write_leaves_old_state_intact(tmp_path, monkeypatch):
    store = Store(tmp_path / "state")
    store.complete_exchange(store.next_batch(T0), [offered(1)], T0)
    before = store.path.read_bytes()

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("smsgw.config.os.replace", full)
    with pytest.raises(StateError, match="No space left"):
        store.complete_exchange(store.next_batch(T0), [offered(2)], T0)
    monkeypatch.undo()
    assert store.path.read_bytes() == before
    assert [p.name for p in store.folder.iterdir() if p.name.endswith(".tmp")] == []
    with store.unit(T0) as u:
        assert [m.id for m in u.outgoing()] == ["m1"]


def test_a_unit_that_raises_writes_nothing(tmp_path):
    store = Store(tmp_path / "state")
    before = store.path.read_bytes()
    with pytest.raises(RuntimeError), store.unit(T0) as u:
        u.watcher = "x"  # any change makes the unit write
        raise RuntimeError("boom")
    assert store.path.read_bytes() == before


def test_accept_dedups_by_id_and_requeues_status(tmp_path):
    store = Store(tmp_path / "state")
    r1 = store.complete_exchange(store.next_batch(T0), [offered(1), offered(1)], T0)
    assert r1.new == ["m1"] and r1.known == ["m1"]
    batch = store.next_batch(T0)
    # The status is queued once, however often the id is offered before it is posted.
    assert [(u.id, u.status) for u in batch.updates] == [("m1", "UNSENT")]
    r2 = store.complete_exchange(batch, [offered(1)], T0)
    assert r2.new == [] and r2.known == ["m1"]
    # Offered again after its status was posted: the status is re-queued.
    assert [(u.id, u.status) for u in store.next_batch(T0).updates] == [("m1", "UNSENT")]
    with store.unit(T0) as u:
        assert len(u.outgoing()) == 1


def test_invalid_messages_fail_with_reason_and_no_id_is_ignored(tmp_path):
    store = Store(tmp_path / "state")
    res = store.complete_exchange(
        store.next_batch(T0),
        [(Offered("bad", "x", "t"), "invalid phone number: 'x'"),
         (Offered(None, "+1555", "t"), "missing id")], T0)
    assert res.invalid == [("bad", "invalid phone number: 'x'"), (None, "missing id")]
    ups = store.next_batch(T0).updates
    assert [(u.id, u.status, u.reason) for u in ups] == [
        ("bad", "FAILED", "invalid phone number: 'x'")]


def test_archived_ids_stay_known(tmp_path):
    store = Store(tmp_path / "state")
    store.complete_exchange(store.next_batch(T0), [offered(1)], T0)
    with store.unit(T0) as u:
        walk(u, "m1", OutState.SENDING, OutState.PENDING, OutState.SENT)
    assert store.archive_finished(T0) == 1
    with store.unit(T0) as u:
        assert u.get("m1") is None
    res = store.complete_exchange(store.next_batch(T0), [offered(1)], T0)
    assert res.known == ["m1"]
    assert ("m1", "SENT") in [(u.id, u.status) for u in store.next_batch(T0).updates]
    # A second Store (another process) sees the archive too.
    other = Store(tmp_path / "state")
    assert other.archive.status_of("m1") == ("SENT", None)


def test_archive_retention_purges_old_days(tmp_path):
    store = Store(tmp_path / "state", retention_days=30)
    store.complete_exchange(store.next_batch(T0), [offered(1)], T0)
    with store.unit(T0) as u:
        walk(u, "m1", OutState.SENDING, OutState.PENDING, OutState.SENT)
    store.archive_finished(T0)
    for day in range(1, 31):  # the gateway runs every day: retention counts days it saw
        store.archive_finished(T0 + timedelta(days=day))
    assert store.archive.status_of("m1") == ("SENT", None)
    later = T0 + timedelta(days=31)
    store.complete_exchange(store.next_batch(later), [offered(2)], later)
    with store.unit(later) as u:
        walk(u, "m2", OutState.SENDING, OutState.PENDING, OutState.SENT)
    store.archive_finished(later)
    fresh = Store(tmp_path / "state")
    assert fresh.archive.status_of("m1") is None
    assert fresh.archive.status_of("m2") == ("SENT", None)


def test_archive_skips_a_torn_last_line(tmp_path):
    store = Store(tmp_path / "state")
    store.complete_exchange(store.next_batch(T0), [offered(1)], T0)
    with store.unit(T0) as u:
        u.transition(u.get("m1"), OutState.FAILED, "why")
    store.archive_finished(T0)
    day = next((store.folder / "archive").glob("*.jsonl"))
    with open(day, "a") as fh:
        fh.write('{"kind": "out", "record": {"id": "m9"')
    fresh = Store(tmp_path / "state")
    assert fresh.archive.status_of("m1") == ("FAILED", "why")
    assert fresh.archive.status_of("m9") is None


def row(i, body="hi", when=T0):
    return SmsRow(kind="inbox", address="+254711", body=f"{body} {i}", date=when, row_id=i)


def test_inbox_rows_stored_once_with_uuid_and_position_in_one_write(tmp_path):
    store = Store(tmp_path / "state")
    first = store.save_inbox([row(1), row(2)], {"id": 2}, T0)
    again = store.save_inbox([row(2)], {"id": 2}, T0)
    assert len(first) == 2 and again == []
    assert len({m.id for m in first}) == 2 and all(len(m.id) == 36 for m in first)
    with store.unit(T0) as u:
        assert u.inbox_position == {"id": 2}
    data = json.loads(store.path.read_text())
    assert len(data["incoming"]) == 2 and data["meta"]["1"]["inbox_position"] == {"id": 2}


def test_batch_limits_and_ack(tmp_path):
    store = Store(tmp_path / "state")
    store.save_inbox([row(i) for i in range(120)], {"id": 120}, T0)
    b1 = store.next_batch(T0)
    assert len(b1.incoming) == 50
    res = store.complete_exchange(b1, [], T0)
    assert res.remaining == 70
    b2 = store.next_batch(T0)
    assert {m.id for m in b2.incoming}.isdisjoint({m.id for m in b1.incoming})


def _adder(folder, start):
    store = Store(folder)
    for i in range(start, start + 40):
        store.add_local("+254700000001", f"t{i}", T0)


def test_two_processes_never_lose_each_others_writes(tmp_path):
    folder = tmp_path / "state"
    Store(folder)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_adder, args=(folder, n * 100)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Store(folder).unit(T0) as u:
        assert len(u.outgoing()) == 120
        assert len({m.seq for m in u.outgoing()}) == 120


def test_retry_restarts_failed_and_refuses_others(tmp_path):
    store = Store(tmp_path / "state")
    store.complete_exchange(store.next_batch(T0), [offered(1), offered(2)], T0)
    with store.unit(T0) as u:
        m = u.get("m1")
        m.retries = 20
        u.transition(m, OutState.FAILED, "radio off")
    store.archive_finished(T0)  # FAILED m1 goes to the archive
    res = store.retry(["m1", "m2", "nope"], False, T0)
    assert res.retried == ["m1"]
    assert res.not_found == ["nope"]
    assert res.wrong_state == [("m2", "UNSENT")]
    with store.unit(T0) as u:
        m = u.get("m1")
        assert m.state is OutState.UNSENT and m.retries == 0 and m.due == T0


def test_a_newer_status_replaces_a_queued_older_one(tmp_path):
    store = Store(tmp_path / "state")
    store.complete_exchange(store.next_batch(T0), [offered(1), offered(2)], T0)
    with store.unit(T0) as u:
        walk(u, "m1", OutState.SENDING, OutState.PENDING)
    assert [(x.id, x.status) for x in store.next_batch(T0).updates] == [
        ("m2", "UNSENT"), ("m1", "PENDING")]


def test_a_status_queued_while_a_post_is_in_flight_is_kept(tmp_path):
    """The POST carried PENDING; SENT, queued meanwhile, may reuse the freed doc id."""
    store = Store(tmp_path / "state")
    store.complete_exchange(store.next_batch(T0), [offered(1)], T0)
    store.complete_exchange(store.next_batch(T0), [], T0)  # UNSENT posted
    with store.unit(T0) as u:
        walk(u, "m1", OutState.SENDING, OutState.PENDING)
    in_flight = store.next_batch(T0)
    assert [(x.id, x.status) for x in in_flight.updates] == [("m1", "PENDING")]
    with store.unit(T0) as u:
        walk(u, "m1", OutState.SENT)
    store.complete_exchange(in_flight, [], T0)
    assert [(x.id, x.status) for x in store.next_batch(T0).updates] == [("m1", "SENT")]


def test_a_status_older_than_the_last_reported_is_not_queued(tmp_path):
    store = Store(tmp_path / "state")
    store.complete_exchange(store.next_batch(T0), [offered(1)], T0)
    with store.unit(T0) as u:
        walk(u, "m1", OutState.SENDING, OutState.PENDING)
    store.complete_exchange(store.next_batch(T0), [], T0)
    with store.unit(T0) as u:
        u.transition(u.get("m1"), OutState.UNSENT, "a failed try")  # retried automatically
    assert store.next_batch(T0).updates == []
    # ... and a re-offer of the id is answered with what the webapp last heard.
    store.complete_exchange(store.next_batch(T0), [offered(1)], T0)
    assert [(x.id, x.status) for x in store.next_batch(T0).updates] == [("m1", "PENDING")]


def _sent(store, msg_id_number, at):
    store.complete_exchange(store.next_batch(at), [offered(msg_id_number)], at)
    with store.unit(at) as u:
        walk(u, f"m{msg_id_number}", OutState.SENDING, OutState.PENDING, OutState.SENT)
    store.archive_finished(at)


def test_a_clock_60_days_ahead_for_a_cycle_forgets_no_id(tmp_path):
    store = Store(tmp_path / "state", retention_days=30)
    for day in range(10):
        _sent(store, day, T0 + timedelta(days=day))
    store.archive_finished(T0 + timedelta(days=70))  # one cycle with the clock far ahead
    store.archive_finished(T0 + timedelta(days=10))  # corrected
    fresh = Store(tmp_path / "state")
    assert all(fresh.archive.status_of(f"m{day}") == ("SENT", None) for day in range(10))


def test_sends_made_while_the_clock_was_behind_survive_its_correction(tmp_path):
    store = Store(tmp_path / "state", retention_days=30)
    behind = T0 - timedelta(days=400)
    _sent(store, 1, behind)  # archived into a file named a year ago
    store.archive_finished(T0)  # the clock is right again
    store.archive_finished(T0 + timedelta(days=1))
    assert Store(tmp_path / "state").archive.status_of("m1") == ("SENT", None)


def test_re_offering_12000_finished_ids_never_rereads_the_archive(tmp_path, monkeypatch):
    """Each dedup lookup is a bisection and one read: no full scan under the state lock."""
    from smsgw.models import Outgoing
    from smsgw.store import Archive

    store = Store(tmp_path / "state")
    for start in range(0, 12_000, 1000):
        store.archive.append(T0, [("out", Outgoing(
            id=f"old-{i}", to="+254700000001", content="x", state=OutState.SENT,
            created=T0, last_activity=T0).to_dict()) for i in range(start, start + 1000)])
    scans = []
    real_find = Archive.find
    monkeypatch.setattr(Archive, "find", lambda self, *a, **k: scans.append(a) or
                        real_find(self, *a, **k))
    fresh = Store(tmp_path / "state")
    offer = [(Offered(f"old-{i}", "+254700000001", "x"), None) for i in range(12_000)]
    result = fresh.complete_exchange(fresh.next_batch(T0), offer, T0)
    assert len(result.known) == 12_000 and result.new == []
    assert scans == []
    assert fresh.summary(T0)["updates_queued"] == 12_000
