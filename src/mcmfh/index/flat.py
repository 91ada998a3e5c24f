"""Brute-force popcount scan: the reference every other index is tested against, and the fallback."""

from __future__ import annotations

import numpy as np

from mcmfh.index.base import HammingIndex, parallel


class FlatIndex(HammingIndex):
    """Scans every code per query (O(N) each), like FAISS ``IndexBinaryFlat`` but with an O(N) top-k selection."""

    kind = "flat"

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self._db = np.zeros((0, -(-bits // 64)), np.uint64)

    def _append(self, words: np.ndarray) -> None:
        self._db = np.ascontiguousarray(np.concatenate([self._db, words]))

    def _keep(self, keep: np.ndarray) -> None:
        self._db = np.ascontiguousarray(self._db[keep])

    def _words(self) -> np.ndarray:
        return self._db

    def nbytes(self) -> int:
        return super().nbytes() + int(self._db.nbytes)

    def _knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return flat_knn(self._db, q, k)

    def _range(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return flat_range(self._db, q, radius)


def flat_knn(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from mcmfh.index import _kernels as K  # numba: loaded on first search (see bucket.NUMPY_MAX_ITEMS)

    out_d = np.full((q.shape[0], k), -1, np.int32)
    out_p = np.full((q.shape[0], k), -1, np.int64)
    (K.flat_knn if parallel(q) else K.flat_knn_serial)(db, q, k, out_d, out_p)
    return out_d, out_p


def flat_range(db: np.ndarray, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from mcmfh.index import _kernels as K

    counts = np.zeros(q.shape[0], np.int64)
    K.flat_range_count(db, q, radius, counts)
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    out_d = np.empty(lims[-1], np.int32)
    out_p = np.empty(lims[-1], np.int64)
    K.flat_range_fill(db, q, radius, lims, out_d, out_p)
    return lims, out_d, out_p
