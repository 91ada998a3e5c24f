"""Bucket index for short codes: items grouped by their code, searched by walking codes in Hamming order.

With b <= 16 bits there are at most 65,536 distinct codes, so a query never scans items: it visits buckets at
distance 0, 1, 2, ... (precomputed XOR masks ordered by popcount) and stops as soon as k items are collected.
Memory is one int32 position per item plus 2^b + 1 offsets; codes are implied by the bucket an item sits in.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.index.base import HammingIndex, parallel

MAX_BUCKET_BITS = 24  # 2^24 offsets = 128 MiB: beyond this the table costs more than it saves
# An index of at most this many items builds its table and answers a single query (fewer than PARALLEL_MIN_QUERIES)
# in numpy, so a process that only opens a small archive and asks once never loads numba: importing it and making
# the first kernel call took 1.1-1.4 s of a 2.6 s `mcmfh search` (2 cores, load average 8-12). The price is per
# query: at 4,096 items 0.55 ms against the walk's 0.03 ms (0.18 / 0.06 ms at 480 items; search() included, same
# load), small beside a query's encoding. Larger indexes and batches take the numba walk.
NUMPY_MAX_ITEMS = 4096


@lru_cache(maxsize=4)
def _masks(bits: int) -> tuple[np.ndarray, np.ndarray]:
    from mcmfh.index import _kernels as K

    return K.masks_by_popcount(bits)


class BucketIndex(HammingIndex):
    kind = "bucket"

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        if bits > MAX_BUCKET_BITS:
            raise MCMFHError(f"bucket index: at most {MAX_BUCKET_BITS} bits (2^bits buckets), got {bits}")
        self._offsets = np.zeros((1 << bits) + 1, np.int32)
        self._positions = np.zeros(0, np.int32)
        self._small_keys: np.ndarray | None = np.zeros(0, np.int64)  # each position's code, kept while small

    def _keys(self) -> np.ndarray:
        if self._small_keys is not None:
            return self._small_keys
        from mcmfh.index import _kernels as K

        return K.csr_keys(self._offsets, self._positions)

    def _set_keys(self, keys: np.ndarray) -> None:
        keys = keys.astype(np.int64, copy=False)
        if len(keys) <= NUMPY_MAX_ITEMS:  # the same counting sort: positions stable within a bucket
            self._offsets = np.zeros((1 << self.bits) + 1, np.int32)
            np.cumsum(np.bincount(keys, minlength=1 << self.bits), out=self._offsets[1:])
            self._positions = np.argsort(keys, kind="stable").astype(np.int32)
            self._small_keys = keys.copy()
            self._small_keys.flags.writeable = False
            return
        from mcmfh.index import _kernels as K

        self._offsets, self._positions = K.csr_build(keys, 1 << self.bits)
        self._small_keys = None

    def _append(self, words: np.ndarray) -> None:
        self._set_keys(np.concatenate([self._keys(), words[:, 0].astype(np.int64)]))

    def _keep(self, keep: np.ndarray) -> None:
        self._set_keys(self._keys()[keep])

    def _words(self) -> np.ndarray:
        return self._keys().astype(np.uint64).reshape(-1, 1)

    def nbytes(self) -> int:
        small = 0 if self._small_keys is None else self._small_keys.nbytes
        return super().nbytes() + int(self._offsets.nbytes + self._positions.nbytes + small)

    def _knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._n <= NUMPY_MAX_ITEMS and not parallel(q):
            return self._scan_knn(q, k)
        from mcmfh.index import _bucket_walk as W

        masks, level_start = _masks(self.bits)
        # The walk always finds min(k, N) items: only the columns beyond N need the -1 padding.
        out_d = np.empty((q.shape[0], k), np.int32)
        out_p = np.empty((q.shape[0], k), np.int64)
        out_d[:, self._n :] = -1
        out_p[:, self._n :] = -1
        (W.bucket_knn if parallel(q) else W.bucket_knn_serial)(
            self._offsets, self._positions, masks, level_start, q[:, 0].astype(np.int64), k, out_d, out_p
        )
        return out_d, out_p

    def _scan_knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The walk's answer by a numpy scan: (distance, position) order, -1 padding (see NUMPY_MAX_ITEMS)."""
        out_d = np.full((q.shape[0], k), -1, np.int32)
        out_p = np.full((q.shape[0], k), -1, np.int64)
        if self._n:
            dist = np.bitwise_count(self._keys()[None, :] ^ q[:, :1].astype(np.int64)).astype(np.int32)
            top = np.argsort(dist, axis=1, kind="stable")[:, :k]
            out_d[:, : top.shape[1]] = np.take_along_axis(dist, top, axis=1)
            out_p[:, : top.shape[1]] = top
        return out_d, out_p

    def _range(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from mcmfh.index import _kernels as K

        masks, level_start = _masks(self.bits)
        keys = q[:, 0].astype(np.int64)
        counts = np.zeros(q.shape[0], np.int64)
        K.bucket_range_count(self._offsets, masks, level_start, keys, radius, counts)
        lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        out_d = np.empty(lims[-1], np.int32)
        out_p = np.empty(lims[-1], np.int64)
        K.bucket_range_fill(self._offsets, self._positions, masks, level_start, keys, radius, lims, out_d, out_p)
        return lims, out_d, out_p
