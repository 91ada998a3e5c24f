"""The FAISS-style contract every codes index meets (``CodesIndex``), and the in-memory base the local ones share
(``HammingIndex``: ids, validation, files). A remote index (``mcmfh.index.milvus.MilvusIndex``) meets the contract
without inheriting the in-memory storage.

Codes are packed uint8 (N, bits // 8) as made by ``mcmfh.index.codes.pack_codes``. Results are exact and ordered by
(distance, insertion order); ``search`` pads with distance -1 and id -1 when the index holds fewer than k items.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.index import _files

INDEX_META = "index.json"
MAX_ITEMS = 2**31 - 1  # positions are stored as int32
# Batches smaller than this run on the calling thread: waking the thread pool for a parallel loop costs more than a
# few short queries (measured on 2 cores: a 1-query parallel call had a 16 ms p50 latency on a loaded machine,
# serial 0.02 ms at 16 bits).
PARALLEL_MIN_QUERIES = 8


def parallel(queries: np.ndarray) -> bool:
    return queries.shape[0] >= PARALLEL_MIN_QUERIES


def to_words(packed: np.ndarray, bits: int, what: str = "codes") -> np.ndarray:
    """Packed uint8 (N, bits // 8) → uint64 words (N, ceil(bits / 64)), code bit i = bit i % 64 of word i // 64."""
    packed = np.asarray(packed)
    if packed.ndim == 1 and packed.size == 0:
        packed = packed.reshape(0, bits // 8)
    if packed.ndim != 2 or packed.shape[1] * 8 != bits:
        raise MCMFHError(
            f"{what}: expected packed uint8 codes of shape (N, {bits // 8}) for {bits} bits, got {packed.shape}"
        )
    if packed.dtype != np.uint8:
        raise MCMFHError(f"{what}: expected dtype uint8 (use mcmfh.index.codes.pack_codes), got {packed.dtype}")
    n_words = -(-bits // 64)
    padded = np.zeros((packed.shape[0], n_words * 8), np.uint8)
    padded[:, : packed.shape[1]] = packed
    return np.ascontiguousarray(padded).view("<u8").astype(np.uint64, copy=False).reshape(packed.shape[0], n_words)


def from_words(words: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of ``to_words``."""
    return np.ascontiguousarray(words.astype("<u8", copy=False)).view(np.uint8)[:, : bits // 8].copy()


class NearestCodes(Protocol):
    """The one operation two-stage search and the archive's stores need of a codes index: exact k nearest,
    ``search(queries, k) -> (distances int (Q, k), ids int64 (Q, k))``, ordered by (distance, insertion order) and
    padded with -1. Every ``CodesIndex`` has it, and so has a segmented index (``mcmfh.index.segments``)."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class CodesIndex(NearestCodes, Protocol):
    """Exact Hamming search over packed codes with int64 ids: what the archive, benchmarks and tools rely on."""

    bits: int

    def __len__(self) -> int: ...
    @property
    def ntotal(self) -> int: ...
    @property
    def ids(self) -> np.ndarray: ...
    @property
    def codes(self) -> np.ndarray: ...
    def add(self, codes: np.ndarray, ids: np.ndarray | None = None) -> None: ...
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def range_search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def remove_ids(self, ids: np.ndarray) -> int: ...
    def nbytes(self) -> int: ...
    def params(self) -> dict[str, Any]: ...
    def write(self, path: str | Path) -> None: ...


class HammingIndex(ABC):
    """Exact Hamming k-NN and range search over packed binary codes with int64 ids."""

    kind: ClassVar[str]

    def __init__(self, bits: int) -> None:
        if bits <= 0 or bits % 8:
            raise MCMFHError(f"index: bits must be a positive multiple of 8, got {bits}")
        self.bits = int(bits)
        self._ids: np.ndarray | None = None  # None: ids are positions 0..n-1 (saves 8 bytes per item)
        self._n = 0

    # ---------------------------------------------------------------- what implementations provide
    @abstractmethod
    def _append(self, words: np.ndarray) -> None:
        """Store new codes after the existing ones (positions continue)."""

    @abstractmethod
    def _keep(self, keep: np.ndarray) -> None:
        """Drop the positions where ``keep`` is False, preserving the order of the rest."""

    @abstractmethod
    def _words(self) -> np.ndarray:
        """All stored codes as uint64 words in position order."""

    @abstractmethod
    def _knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k-NN of uint64 query words: distances int32 and positions int64, (Q, k), padded with -1."""

    @abstractmethod
    def _range(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items within ``radius``: lims (Q+1,), distances, positions; each query ordered by (distance, position)."""

    def nbytes(self) -> int:
        """Memory held by the index's arrays (codes, search structures, ids)."""
        return 0 if self._ids is None else int(self._ids.nbytes)

    def params(self) -> dict[str, Any]:
        """Constructor options, stored by ``write`` so ``read`` rebuilds the same index."""
        return {}

    # ---------------------------------------------------------------- FAISS-style API
    def __len__(self) -> int:
        return self._n

    @property
    def ntotal(self) -> int:
        return self._n

    @property
    def ids(self) -> np.ndarray:
        return np.arange(self._n, dtype=np.int64) if self._ids is None else self._ids

    @property
    def codes(self) -> np.ndarray:
        """Stored codes, packed uint8 (N, bits // 8), in insertion order."""
        return from_words(self._words(), self.bits)

    def add(self, codes: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Append codes; ``ids`` default to consecutive integers after the largest id so far. Ids must be unique."""
        words = to_words(codes, self.bits)
        n_new = words.shape[0]
        if self._n + n_new > MAX_ITEMS:
            raise MCMFHError(f"index: at most {MAX_ITEMS} items, got {self._n + n_new}")
        if ids is None:
            start = 0 if self._n == 0 else int(self.ids.max()) + 1
            new_ids = np.arange(start, start + n_new, dtype=np.int64)
        else:
            new_ids = np.asarray(ids)
            if new_ids.shape != (n_new,) or not np.issubdtype(new_ids.dtype, np.integer):
                raise MCMFHError(f"index: ids must be {n_new} integers, got shape {new_ids.shape} {new_ids.dtype}")
            new_ids = new_ids.astype(np.int64)
            if len(np.unique(new_ids)) != n_new or np.isin(new_ids, self.ids).any():
                raise MCMFHError("index: ids must be unique (some are repeated or already in the index)")
        if n_new == 0:
            return
        if self._ids is None and np.array_equal(new_ids, np.arange(self._n, self._n + n_new)):
            pass  # still the identity mapping
        else:
            self._ids = np.concatenate([self.ids, new_ids])
        self._append(words)
        self._n += n_new

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest codes per query: distances int32 (Q, k) and ids int64 (Q, k), -1 where fewer than k."""
        if k < 1:
            raise MCMFHError(f"search: k must be >= 1, got {k}")
        q = to_words(queries, self.bits, "queries")
        dist, pos = self._knn(q, int(k))
        return dist, self._pos_to_ids(pos)

    def range_search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All items within Hamming ``radius``: (lims (Q+1,), distances, ids); query i owns [lims[i], lims[i+1])."""
        if radius < 0:
            raise MCMFHError(f"range_search: radius must be >= 0, got {radius}")
        q = to_words(queries, self.bits, "queries")
        lims, dist, pos = self._range(q, min(int(radius), self.bits))
        return lims, dist, self._pos_to_ids(pos)

    def remove_ids(self, ids: np.ndarray) -> int:
        """Remove the items with these ids (unknown ids are ignored); returns how many were removed."""
        drop = np.isin(self.ids, np.asarray(ids, dtype=np.int64))
        n_drop = int(drop.sum())
        if n_drop:
            keep = ~drop
            self._ids = self.ids[keep]
            self._keep(keep)
            self._n -= n_drop
        return n_drop

    def _pos_to_ids(self, pos: np.ndarray) -> np.ndarray:
        if self._ids is None:
            return pos
        out = np.where(pos >= 0, self._ids[np.maximum(pos, 0)] if self._n else -1, -1)
        return out.astype(np.int64, copy=False)

    # ---------------------------------------------------------------- files
    def write(self, path: str | Path) -> None:
        """Write the index as a folder (codes.npy, ids.npy, index.json with checksums), atomically; read it back
        with ``mcmfh.index.read_index``."""
        from mcmfh.io import atomic_dir

        with atomic_dir(path) as tmp:
            meta = _files.write_arrays(tmp, {"codes": self.codes, "ids": self.ids})
            meta.update(kind=self.kind, bits=self.bits, count=self._n, params=self.params())
            (tmp / INDEX_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
