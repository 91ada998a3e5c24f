"""An index made of append-only segments, so adding k items costs O(k) instead of rebuilding one big index.

Each segment is an ordinary local index (``make_index``) holding a contiguous run of insertions; segments are kept
in insertion order. A search asks every segment for its k nearest and merges them with a *stable* sort on distance: each
segment's answer is ordered by (distance, insertion order) and the segments themselves are in insertion order, so
the merged top k is exactly what one big index over all items would return, ties included.

Small segments are merged like a binary counter (``merge_plan``): while the last segment is at least as large as
the one before it, the two become one. The first, large segment is only touched once the tail has grown to its
size, so a stream of single-item adds keeps at most about log2(tail) + 2 segments and each item is copied
O(log tail) times in all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.index.base import CodesIndex

IndexMaker = Callable[[], CodesIndex]


def merge_plan(counts: Sequence[int]) -> int:
    """How many trailing segments to merge into one after an append (0 or 1: nothing to do)."""
    sizes = list(counts)
    n = 1
    while n < len(sizes) and sizes[-n - 1] <= sum(sizes[-n:]):
        n += 1
    return n if n > 1 else 0


class SegmentedIndex:
    """Exact Hamming search over a list of segments; ``make`` builds an empty segment of the configured kind."""

    def __init__(self, bits: int, make: IndexMaker) -> None:
        self.bits = int(bits)
        self._make = make
        self.segments: list[CodesIndex] = []
        self._maxes: list[int] = []  # largest id per segment: ids above all of them are new without a scan

    # ------------------------------------------------------------------------------------------ building
    def add_segment(self, codes: np.ndarray, ids: np.ndarray) -> CodesIndex:
        """Append one segment holding ``codes`` with ``ids`` (which must be new); returns it."""
        ids = np.asarray(ids, np.int64)
        if len(ids) and ids.min() <= self._max_id() and np.isin(ids, self.ids).any():
            raise MCMFHError("index: ids must be unique (some are already in the index)")
        seg = self._make()
        seg.add(codes, ids)  # checks the codes' width and that the batch's ids do not repeat
        self.segments.append(seg)
        self._maxes.append(int(ids.max()) if len(ids) else -1)
        return seg

    def _max_id(self) -> int:
        return max(self._maxes, default=-1)

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` segments."""
        del self.segments[n:], self._maxes[n:]

    def merge_tail(self, n: int) -> CodesIndex:
        """Replace the last ``n`` segments by one holding their items in the same order."""
        if n < 2 or n > len(self.segments):
            raise MCMFHError(f"index: cannot merge the last {n} of {len(self.segments)} segments")
        tail = self.segments[-n:]
        merged = self._make()
        merged.add(np.concatenate([s.codes for s in tail]), np.concatenate([s.ids for s in tail]))
        self.segments[-n:] = [merged]
        self._maxes[-n:] = [max(self._maxes[-n:])]
        return merged

    def remove_ids(self, ids: np.ndarray) -> int:
        ids = np.asarray(ids, np.int64)
        return sum(seg.remove_ids(ids) for seg in self.segments)

    # ------------------------------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return sum(len(s) for s in self.segments)

    @property
    def ntotal(self) -> int:
        return len(self)

    @property
    def ids(self) -> np.ndarray:
        return np.concatenate([s.ids for s in self.segments]) if self.segments else np.zeros(0, np.int64)

    @property
    def codes(self) -> np.ndarray:
        if not self.segments:
            return np.zeros((0, self.bits // 8), np.uint8)
        return np.concatenate([s.codes for s in self.segments])

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.segments)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest per query as ``CodesIndex.search``: (distances, ids), -1 where fewer than k."""
        live = [s for s in self.segments if len(s)]
        if len(live) <= 1:
            return (live[0] if live else self._make()).search(queries, k)
        parts = [s.search(queries, k) for s in live]
        dist = np.concatenate([d for d, _ in parts], axis=1)
        ids = np.concatenate([i for _, i in parts], axis=1)
        key = np.where(dist < 0, np.iinfo(np.int32).max, dist)  # padding sorts last
        order = np.argsort(key, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)
