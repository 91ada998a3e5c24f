"""An archive's commit protocol: its sub-indexes held at one committed state, and changes that commit all or nothing.

A change runs under the archive's writer lock (``mcmfh.locking``: one writer at a time, others wait up to
``lock_timeout``; a killed writer's lock is released by the kernel), after catching up with what other writers
committed. It commits the sub-indexes one after the other and then ``commit.json``, the archive's commit record: a
snapshot of every sub-index that has snapshots (``Capabilities.snapshots``: the local ones), replaced by one
rename. Readers open the sub-indexes at the record's snapshots, never at a newer sub-index state, so they see a
change in every sub-index or in none. A writer killed between the sub-indexes and the record left one sub-index
ahead; the next writer rolls it back to the record (``ItemStore.roll_back_to``), and rerunning an add completes it
(ids already present are skipped). With no record (lost, or an archive made before records), sub-indexes that
disagree are refused until ``repair`` (``mcmfh.archive.agreement``). Server stores (Milvus) are not pinned: their
codes and metadata keep their own invariant (``mcmfh.index.server_store``), and their own writer lock serialises
writers on other machines. Readers never lock. A long-lived reader (the service) polls ``state_token()`` and calls
``refresh()`` (or reopens) when it changes.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mcmfh.archive.agreement import check_agreement, require_agreement
from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.index.store import ItemStore
from mcmfh.io import atomic_write_json
from mcmfh.locking import lock_timeout, writer_lock

RECORD_NAME = "commit.json"  # {"generation": n, <sub-index>: its manifest snapshot, ...}
OPEN_RETRIES = 5  # an open or refresh that races two commits re-reads the record this many times


def read_record(folder: Path) -> dict[str, Any]:
    """The archive's commit record; empty for an archive made before records existed (its sub-indexes' newest
    states count as committed until its first change writes one)."""
    path = Path(folder) / RECORD_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{path}: unreadable commit record ({e})") from e
    if not isinstance(record, dict) or not isinstance(record.get("generation"), int):
        raise ArtefactError(f"{path}: not an archive commit record (expected a 'generation' and sub-index states)")
    return record


class CommittedIndexes:
    """The sub-indexes ``parts`` of the archive at ``folder``, opened by ``open_part(name, snapshot or None)`` at
    the commit record's state. ``lock`` guards the stores' handles (the service calls from several threads)."""

    def __init__(self, folder: Path, parts: Sequence[str], open_part: Callable[[str, Any], ItemStore],
                 writable: bool, lock_timeout: float | None, check_parts: bool) -> None:  # fmt: skip
        self.folder, self.parts, self.writable, self.lock_timeout = folder, tuple(parts), writable, lock_timeout
        self.indexes: dict[str, ItemStore] = {}
        self.lock = threading.Lock()
        self._changing = threading.Lock()  # held for a whole change (every sub-index and the record)
        for attempt in range(OPEN_RETRIES + 1):
            self.record = read_record(folder)
            try:
                for m in self.parts:
                    self.indexes[m] = open_part(m, self.record.get(m))
                if check_parts and not self.record:  # nothing pins the sub-indexes: they must agree
                    require_agreement(folder, check_agreement(self.indexes, has_record=False))
                return
            except ArtefactError:
                self.close()
                # Two commits while opening removed the snapshot's files: that is not damage, retry on the new one.
                if attempt == OPEN_RETRIES or read_record(folder) == self.record:
                    raise
            except BaseException:
                self.close()
                raise

    def state_token(self) -> tuple[Any, ...]:
        """A cheap value that changes whenever a change is committed: the record's, and unpinned stores' own."""
        try:
            st = (self.folder / RECORD_NAME).stat()
            record: tuple[int, ...] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            record = ()
        return record, *(self.indexes[m].state_token() for m in self.parts if m not in self.record)

    def refresh(self) -> bool:
        """Catch up with changes other processes committed; returns whether anything changed."""
        # Not during this process's own change: refreshing to the record mid-change would undo its first half.
        with self._changing, self.lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> bool:
        for attempt in range(OPEN_RETRIES + 1):
            record = read_record(self.folder)
            try:
                changed = [self.indexes[m].refresh(at=record.get(m)) for m in self.parts]
                self.record = record
                return any(changed)
            except ArtefactError:
                if attempt == OPEN_RETRIES or read_record(self.folder) == record:
                    raise
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def change(self, repair: bool = False) -> Iterator[None]:
        """One change: locked, caught up and rolled back to the record first; committed by a new record after, or
        rolled back to the record if it fails half-way (disk full, ^C). ``repair``: allowed over sub-indexes that
        disagree (``mcmfh.archive.agreement``)."""
        if not self.writable:
            raise MCMFHError(f"archive {self.folder}: opened read-only (use Archive.open(..., writable=True))")
        what = f"archive {self.folder}"
        with writer_lock(self.folder, self.lock_timeout, what=what), self._changing, contextlib.ExitStack() as held:
            for index in self.indexes.values():
                held.enter_context(index.writer_lock(lock_timeout(self.lock_timeout), what))
            with self.lock:
                self._refresh_locked()
                self.roll_back()
                if not repair and not self.record:  # a change would write a record over the disagreement
                    require_agreement(self.folder, check_agreement(self.indexes, has_record=False))
            try:
                yield
            except BaseException:
                with self.lock:
                    self.roll_back()
                raise
            self.commit()

    def roll_back(self) -> None:
        """Undo a sub-index commit that the record does not name (a writer died between sub-index and record)."""
        for m in self.parts:
            if m in self.record:
                self.indexes[m].roll_back_to(self.record[m])

    def commit(self) -> None:
        """Write the commit record naming every pinned sub-index's committed state (the archive's commit point)."""
        pinned = {m: ix.snapshot() for m, ix in self.indexes.items() if ix.capabilities.snapshots}
        if not pinned or all(self.record.get(m) == state for m, state in pinned.items()):
            return  # nothing changed (e.g. an add of ids already present): readers have nothing to reload
        record = {"generation": int(self.record.get("generation", 0)) + 1, **pinned}
        atomic_write_json(self.folder / RECORD_NAME, record)
        self.record = record

    def close(self) -> None:
        for index in self.indexes.values():
            index.close()
        self.indexes = {}
