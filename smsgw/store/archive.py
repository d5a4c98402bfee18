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
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import fsync_dir, make_private_dir
from ..errors import StateError
from ..models import Ref, to_iso

logger = logging.getLogger(__name__)

REVIVED = "revived"


def _ref(rec: dict[str, Any]) -> Ref:
    return Ref(str(rec.get("id")), rec.get("local") is True)


class Archive:
    """Finished records, one append-only JSON-lines file a day, purged after retention.

    The daemon keeps an index of the archived outgoing ids, read incrementally, so the
    dedup check of a new webapp message never rereads the whole archive. It holds a sorted
    array of 64-bit hashes (under 1 MB for 100,000 ids) plus the statuses of the most
    recent ones; an older id's status is read from the files when it is asked for.
    """

    RECENT = 5000

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._hashes = array("Q")
        self._recent: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._offsets: dict[str, int] = {}

    @staticmethod
    def _hash(msg_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(msg_id.encode("utf-8"), digest_size=8).digest(),
                              "big")

    def _files(self) -> list[Path]:
        if not self.folder.exists():
            return []
        return sorted(self.folder.glob("*.jsonl"))

    def append(self, now: datetime, records: list[tuple[str, dict[str, Any]]]) -> None:
        make_private_dir(self.folder)
        path = self.folder / f"{now.date().isoformat()}.jsonl"
        lines = "".join(
            json.dumps({"kind": kind, "archived": to_iso(now), "record": rec},
                       separators=(",", ":")) + "\n"
            for kind, rec in records
        )
        data = lines.encode("utf-8")
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
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

    def _lines(self, path: Path, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """Parsed lines from `start`; a torn last line (a crash mid-append) is skipped."""
        with open(path, "rb") as fh:
            fh.seek(start)
            for raw in fh:
                end = fh.tell()
                if not raw.endswith(b"\n"):
                    return
                try:
                    yield end, json.loads(raw)
                except ValueError:
                    logger.warning("skipped a damaged line in %s", path)

    def refresh(self) -> None:
        """Read what was appended since the last call into the id index."""
        files = self._files()
        names = {p.name for p in files}
        if any(name not in names for name in self._offsets):  # purged: start again
            self._hashes = array("Q")
            self._recent.clear()
            self._offsets.clear()
        fresh: list[int] = []
        for path in files:
            start = self._offsets.get(path.name, 0)
            if path.stat().st_size == start:
                continue
            for end, entry in self._lines(path, start):
                rec = entry.get("record") or {}
                webapp_id = "id" in rec and rec.get("local") is not True  # dedup: webapp ids
                if entry.get("kind") == "out" and webapp_id:
                    fresh.append(self._hash(rec["id"]))
                    self._remember(rec["id"], (rec.get("state", "FAILED"), rec.get("reason")))
                elif entry.get("kind") == REVIVED and webapp_id:
                    self._recent.pop(rec["id"], None)  # back in the queue; see find()
                self._offsets[path.name] = end
        if len(fresh) > 64:
            self._hashes = array("Q", sorted([*self._hashes, *fresh]))
        else:
            for h in fresh:
                bisect.insort(self._hashes, h)

    def _remember(self, msg_id: str, status: tuple[str, str | None]) -> None:
        self._recent[msg_id] = status
        self._recent.move_to_end(msg_id)
        if len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)

    def status_of(self, msg_id: str) -> tuple[str, str | None] | None:
        """The final status of an archived outgoing message, or None if it is not archived."""
        self.refresh()
        if msg_id in self._recent:
            return self._recent[msg_id]
        h = self._hash(msg_id)
        i = bisect.bisect_left(self._hashes, h)
        if i == len(self._hashes) or self._hashes[i] != h:
            return None
        rec = self.find("out", msg_id, local=False)  # an old id again: rare, read the files
        if rec is None:
            return None  # a hash collision with another id
        status = (rec.get("state", "FAILED"), rec.get("reason"))
        self._remember(msg_id, status)
        return status

    def find(self, kind: str, msg_id: str, local: bool | None = None) -> dict[str, Any] | None:
        """The archived record of that kind and id (of that namespace, if given), in its
        latest form; None when it is not archived or was brought back into the queue."""
        found: dict[Ref, dict[str, Any] | None] = {}
        for path in self._files():
            for _, entry in self._lines(path):
                rec = entry.get("record") or {}
                if rec.get("id") != msg_id or (
                        local is not None and (rec.get("local") is True) != local):
                    continue
                if entry.get("kind") == kind:
                    found[_ref(rec)] = rec
                elif entry.get("kind") == REVIVED and kind == "out":
                    found[_ref(rec)] = None
        # a webapp id before a local one, as `smsgw retry ID` looks them up
        for ref in sorted(found, key=lambda r: r.local):
            if found[ref] is not None:
                return found[ref]
        return None

    def latest(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every archived record in its latest form, newest first."""
        seen: set[tuple[str, Ref]] = set()
        for path in reversed(self._files()):
            for _, entry in reversed(list(self._lines(path))):
                kind, rec = entry.get("kind", "?"), entry.get("record") or {}
                key = ("out" if kind == REVIVED else kind, _ref(rec))
                if key in seen:
                    continue
                seen.add(key)
                if kind != REVIVED:
                    yield kind, rec

    def revive(self, now: datetime, ref: Ref) -> None:
        """Mark an archived outgoing message as back in the queue (`smsgw retry`)."""
        self.append(now, [(REVIVED, {"id": ref.id, "local": ref.local})])

    def purge(self, older_than: datetime) -> None:
        """Delete day files older than the retention period."""
        cutoff = older_than.date().isoformat()
        for path in self._files():
            if path.stem < cutoff:
                path.unlink()
                logger.info("archive %s removed (older than retention)", path.name)

