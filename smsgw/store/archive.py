"""The archive: finished records, one append-only JSON-lines file a day, purged after
retention, and an index of the webapp ids it holds, for dedup.

Each id is in the archive once, in its latest form: a record brought back into the queue
by `smsgw retry` is marked so with a `revived` line, and a later line of the same id
replaces an earlier one. Readers only ever see the latest form.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import os
from array import array
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import fsync_dir, make_private_dir
from ..errors import StateError
from ..models import Ref, to_iso

logger = logging.getLogger(__name__)

REVIVED = "revived"


def _literal(prefix: str) -> bytes | None:
    """The bytes any archive line holding an id that starts with `prefix` holds, when
    JSON writes the prefix as it is (printable ASCII, no quote or backslash)."""
    if prefix.isascii() and prefix.isprintable() and '"' not in prefix and "\\" not in prefix:
        return prefix.encode("ascii")
    return None


def _kind_id_state(raw: bytes) -> tuple[str, str, str] | None:
    """The kind, id and state of an archive line as `append` writes it (its keys in that
    order; inside JSON strings a quote is escaped, so no text can fake them); a line of
    another shape is parsed whole."""
    kind_at = raw.find(b'"kind":"')
    rec_at = raw.find(b'"record":{"id":"')
    if kind_at >= 0 and rec_at >= 0:
        kind_end = raw.find(b'"', kind_at + 8)
        id_at = rec_at + 16
        id_end = raw.find(b'"', id_at)
        if b"\\" not in raw[id_at:id_end]:
            state_at = raw.find(b'"state":"', id_end)
            state = "?" if state_at < 0 else raw[state_at + 9:raw.find(b'"', state_at + 9)] \
                .decode("ascii", "replace")
            return (raw[kind_at + 8:kind_end].decode("ascii", "replace"),
                    raw[id_at:id_end].decode("utf-8", "replace"), state)
    try:
        entry = json.loads(raw)
        rec = entry["record"]
        return str(entry["kind"]), str(rec["id"]), str(rec.get("state", "?"))
    except (ValueError, KeyError, TypeError):
        return None


def _ref(rec: dict[str, Any]) -> Ref:
    return Ref(str(rec.get("id")), rec.get("local") is True)


class Archive:
    """Finished records, one append-only JSON-lines file a day, purged after retention.

    Every line carries a sequence number, so "latest" never depends on the clock or on file
    names. The index of the webapp ids holds, per day file, the 64-bit hashes of its ids
    sorted, with the sequence number and offset of each line (24 bytes an id: about 2.4 MB
    for 100,000): a dedup lookup is a bisection a file and one short read, whatever the
    size of the archive. It is read incrementally, only what was appended since.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._index: dict[str, _FileIndex] = {}  # day file name -> its ids
        self.next_seq = 1

    @staticmethod
    def _hash(msg_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(msg_id.encode("utf-8", "surrogatepass"),
                                              digest_size=8).digest(), "big")

    def _files(self) -> list[Path]:
        if not self.folder.exists():
            return []
        return sorted(self.folder.glob("*.jsonl"))

    def append(self, now: datetime, records: list[tuple[str, dict[str, Any]]]) -> str:
        """Append records to today's file (named by `now`); returns the file's name."""
        make_private_dir(self.folder)
        self.refresh()  # the sequence goes on from the last line of any process
        path = self.folder / f"{now.date().isoformat()}.jsonl"
        lines = []
        for kind, rec in records:
            lines.append(json.dumps({"kind": kind, "archived": to_iso(now), "seq": self.next_seq,
                                     "record": rec}, separators=(",", ":")) + "\n")
            self.next_seq += 1
        data = "".join(lines).encode("utf-8", "surrogatepass")
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StateError(f"cannot write the archive {path}: {exc.strerror}") from None
        size = 0
        try:
            # A crash mid-append leaves a cut last line: end it, so the cut costs only
            # itself and never glues onto (and hides) the first record written now.
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):  # leave no partial line behind
                os.ftruncate(fd, size)
            raise StateError(f"cannot write the archive {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        fsync_dir(self.folder)
        return path.name

    def _lines(self, path: Path, start: int = 0,
               holding: bytes | None = None) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(offset, end, entry) of the lines from `start`; a torn last line (a crash
        mid-append) is skipped, and so is a damaged one, with a warning. With `holding`,
        only the lines that hold those bytes are parsed."""
        with open(path, "rb") as fh:
            fh.seek(start)
            offset = start
            for raw in fh:
                end = offset + len(raw)
                if not raw.endswith(b"\n"):
                    return
                if holding is not None and holding not in raw:
                    offset = end
                    continue
                try:
                    entry = json.loads(raw)
                except ValueError:
                    entry = None
                if isinstance(entry, dict):
                    yield offset, end, entry
                elif raw.strip():
                    logger.warning("skipped a damaged line in %s", path)
                offset = end

    # the id index ----------------------------------------------------------------------
    def refresh(self) -> None:
        """Read what was appended since the last call into the id index."""
        files = self._files()
        names = {p.name for p in files}
        for name in [n for n in self._index if n not in names]:  # removed by another process
            del self._index[name]
        for path in files:
            index = self._index.get(path.name)
            start = index.read_to if index is not None else 0
            try:
                if path.stat().st_size == start:
                    continue
            except FileNotFoundError:
                continue
            if index is None:
                index = self._index[path.name] = _FileIndex()
            fresh: list[tuple[int, int, int]] = []
            for offset, end, entry in self._lines(path, start):
                index.read_to = end
                seq = entry.get("seq")
                seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else 0
                self.next_seq = max(self.next_seq, seq + 1)
                rec = entry.get("record")
                if (isinstance(rec, dict) and isinstance(rec.get("id"), str)
                        and rec.get("local") is not True  # dedup is of webapp ids
                        and entry.get("kind") in ("out", REVIVED)):
                    fresh.append((self._hash(rec["id"]), seq, offset))
            index.add(fresh)

    def status_of(self, msg_id: str, refresh: bool = True) -> tuple[str, str | None] | None:
        """The final status of an archived webapp message, or None if it is not archived
        (or was brought back into the queue): a bisection a day file and one short read.
        With `refresh=False` the caller has just refreshed the index."""
        if refresh:
            self.refresh()
        h = self._hash(msg_id)
        found = [(seq, name, offset) for name, index in self._index.items()
                 for seq, offset in index.lookup(h)]
        if not found:
            return None
        _, name, offset = max(found)
        entry = self._entry_at(name, offset)
        rec = (entry or {}).get("record") or {}
        if rec.get("id") != msg_id:  # a hash collision with another id: read the files
            rec = self.find("out", msg_id, local=False) or {}
            return (rec.get("state", "FAILED"), rec.get("reason")) if rec else None
        if (entry or {}).get("kind") == REVIVED:
            return None
        return rec.get("state", "FAILED"), rec.get("reason")

    def _entry_at(self, name: str, offset: int) -> dict[str, Any] | None:
        try:
            with open(self.folder / name, "rb") as fh:
                fh.seek(offset)
                entry = json.loads(fh.readline())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) else None

    def find(self, kind: str, msg_id: str, local: bool | None = None) -> dict[str, Any] | None:
        """The archived record of that kind and id (of that namespace, if given), in its
        latest form; None when it is not archived or was brought back into the queue.
        Reads every file: for the commands, not for the cycle."""
        found = [rec for rec in self.matching(kind, msg_id) if rec["id"] == msg_id and (
            local is None or (rec.get("local") is True) == local)]
        # a webapp id before a local one, as `smsgw retry ID` looks them up
        found.sort(key=lambda rec: rec.get("local") is True)
        return found[0] if found else None

    def matching(self, kind: str, prefix: str) -> list[dict[str, Any]]:
        """The archived records of that kind whose id starts with `prefix` (an exact id
        included), each in its latest form; none brought back into the queue. One pass over
        the files, as `find`: for the commands, not for the cycle."""
        found: dict[Ref, tuple[int, dict[str, Any] | None]] = {}
        for path in self._files():
            for _, _, entry in self._lines(path, holding=_literal(prefix)):
                rec = entry.get("record")
                if not (isinstance(rec, dict) and isinstance(rec.get("id"), str)
                        and rec["id"].startswith(prefix)):
                    continue
                seq = entry.get("seq") if isinstance(entry.get("seq"), int) else 0
                ref = _ref(rec)
                if ref in found and found[ref][0] > seq:
                    continue
                if entry.get("kind") == kind:
                    found[ref] = (seq, rec)
                elif entry.get("kind") == REVIVED and kind == "out":
                    found[ref] = (seq, None)
        return [rec for _, rec in found.values() if rec is not None]

    def id_states(self, prefix: str = "") -> dict[tuple[str, str], str]:
        """(kind, id) -> state of the archived records whose id starts with `prefix`, the
        newest line winning, read without parsing whole lines: quick enough for shell
        completion with 100,000 archived."""
        states: dict[tuple[str, str], str] = {}
        holding = _literal(prefix) if prefix else None
        for path in self._files():
            try:
                with open(path, "rb") as fh:
                    for raw in fh:
                        if holding is not None and holding not in raw:
                            continue
                        found = _kind_id_state(raw)
                        if found is None or not found[1].startswith(prefix):
                            continue
                        kind, msg_id, state = found
                        if kind == REVIVED:
                            states.pop(("out", msg_id), None)
                        else:
                            states[(kind, msg_id)] = state
            except OSError:
                continue
        return states

    def latest(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every archived record in its latest form, newest first."""
        entries = [(entry.get("seq") if isinstance(entry.get("seq"), int) else 0, n, offset,
                    entry) for n, path in enumerate(self._files())
                   for offset, _, entry in self._lines(path)]
        entries.sort(key=lambda t: t[:3], reverse=True)
        seen: set[tuple[str, Ref]] = set()
        for *_, entry in entries:
            kind, rec = entry.get("kind", "?"), entry.get("record")
            if not isinstance(rec, dict):
                continue
            key = ("out" if kind == REVIVED else kind, _ref(rec))
            if key in seen:
                continue
            seen.add(key)
            if kind != REVIVED:
                yield kind, rec

    def revive(self, now: datetime, ref: Ref) -> None:
        """Mark an archived outgoing message as back in the queue (`smsgw retry`)."""
        self.append(now, [(REVIVED, {"id": ref.id, "local": ref.local})])

    # retention -------------------------------------------------------------------------
    def file_names(self) -> list[str]:
        """The day files there are."""
        return [p.name for p in self._files()]

    def remove(self, names: list[str]) -> None:
        """Delete these day files (retention is decided by the Store) and forget their ids."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()
            self._index.pop(name, None)
            logger.info("archive %s removed (older than retention)", name)


class _FileIndex:
    """The webapp ids of one day file: 64-bit hashes, sorted, with the sequence number and
    offset of each line (24 bytes an entry; one file's entries are sorted at a time)."""

    def __init__(self) -> None:
        self.hashes = array("Q")
        self.seqs = array("Q")
        self.offsets = array("Q")
        self.read_to = 0

    def add(self, fresh: list[tuple[int, int, int]]) -> None:
        if len(fresh) <= 64:
            for h, seq, offset in fresh:
                i = bisect.bisect_right(self.hashes, h)
                self.hashes.insert(i, h)
                self.seqs.insert(i, seq)
                self.offsets.insert(i, offset)
            return
        rows = sorted([*zip(self.hashes, self.seqs, self.offsets, strict=True), *fresh])
        self.hashes = array("Q", (r[0] for r in rows))
        self.seqs = array("Q", (r[1] for r in rows))
        self.offsets = array("Q", (r[2] for r in rows))

    def lookup(self, h: int) -> list[tuple[int, int]]:
        """(seq, offset) of every line of that hash."""
        i = bisect.bisect_left(self.hashes, h)
        out = []
        while i < len(self.hashes) and self.hashes[i] == h:
            out.append((self.seqs[i], self.offsets[i]))
            i += 1
        return out
