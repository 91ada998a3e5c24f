"""Multi-index hashing (Norouzi, Punjani & Fleet, "Fast Exact Search in Hamming Space with Multi-Index Hashing",
TPAMI 2014): exact k-NN for long codes (32/64/128 bits) through m bucket tables over disjoint substrings."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.index.base import HammingIndex, parallel
from mcmfh.index.flat import flat_range

MIN_SUB_BITS = 4
MAX_SUB_BITS = 24  # one table of 2^24 + 1 int64 offsets is 128 MiB
# A query switches to the bounded scan once its bucket walk has touched this fraction of N entries: a touched entry
# (bucket jumps + substring checks) costs about ten scanned ones. Measured at N = 1e6, k = 100, 1 thread: 0.01 keeps
# random 64-bit codes at 1.5x FAISS IndexBinaryFlat and clustered ones at 8x (0.003: 2.2x / 3.3x; 0.03: 1x / 9x).
DEFAULT_SCAN_FRACTION = 0.01
# Per (k, size) the index learns whether the walk pays on its data: the first PROBE_QUERIES queries of a batch run
# the walk; when at least SCAN_SHARE of them gave up for the scan (codes far from everything, e.g. random 64-bit),
# the rest go straight to the scan, skipping a walk that costs more than the scan itself (measured at N = 1e6,
# k = 100, 1 thread, random codes: walk-then-scan 1,450 q/s at 64 bits, plain scan 4,600 q/s; clustered codes keep
# the walk: 10,000 vs 4,400 q/s). Single queries reuse the last decision for their k.
PROBE_QUERIES = 16
SCAN_SHARE = 0.5
# Beyond this many bytes of codes the database no longer stays in the last-level cache between queries, and the
# scan reads it once per tile of queries instead (measured at 1e7 64-bit codes, 1 thread: 383 vs 305 q/s).
TILED_SCAN_MIN_BYTES = 32 * 2**20


def substring_layout(bits: int, sub_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split the code into near-equal substrings of <= sub_bits bits, none crossing a 64-bit word.

    Returns (word, shift, length) per substring."""
    word, shift, length = [], [], []
    for w in range(-(-bits // 64)):
        wb = min(64, bits - 64 * w)
        m_w = -(-wb // sub_bits)
        sizes = [wb // m_w + (1 if i < wb % m_w else 0) for i in range(m_w)]
        off = 0
        for s in sizes:
            word.append(w)
            shift.append(off)
            length.append(s)
            off += s
    return np.array(word, np.int64), np.array(shift, np.int64), np.array(length, np.int64)


def default_sub_bits(n: int, bits: int) -> int:
    """Norouzi et al.'s rule of thumb: substrings of about log2(N) bits, so buckets hold O(1) items each."""
    return int(min(max(round(math.log2(max(n, 2))), MIN_SUB_BITS), MAX_SUB_BITS, bits))


class MIHIndex(HammingIndex):
    """Exact multi-index hashing.

    ``sub_bits`` fixes the substring length (default: about log2 of the size); ``scan_fraction`` is when a query
    gives up the bucket walk for the bounded scan (0: always scan, large: never)."""

    kind = "mih"

    def __init__(self, bits: int, sub_bits: int | None = None, scan_fraction: float = DEFAULT_SCAN_FRACTION) -> None:
        super().__init__(bits)
        if scan_fraction < 0:
            raise MCMFHError(f"mih index: scan_fraction must be >= 0, got {scan_fraction}")
        self.scan_fraction = float(scan_fraction)
        if sub_bits is not None and not MIN_SUB_BITS <= sub_bits <= MAX_SUB_BITS:
            raise MCMFHError(f"mih index: sub_bits must be in [{MIN_SUB_BITS}, {MAX_SUB_BITS}], got {sub_bits}")
        self.sub_bits = sub_bits
        self._db = np.zeros((0, -(-bits // 64)), np.uint64)
        self._tables: tuple[np.ndarray, ...] | None = None  # built lazily: many adds, one rebuild
        self._scan_first: dict[int, bool] = {}  # k -> the walk did not pay on the last probe (reset by any change)

    def params(self) -> dict[str, Any]:
        return {"sub_bits": self.sub_bits, "scan_fraction": self.scan_fraction}

    def _append(self, words: np.ndarray) -> None:
        self._db = np.ascontiguousarray(np.concatenate([self._db, words]))
        self._tables = None
        self._scan_first.clear()

    def _keep(self, keep: np.ndarray) -> None:
        self._db = np.ascontiguousarray(self._db[keep])
        self._tables = None
        self._scan_first.clear()

    def _words(self) -> np.ndarray:
        return self._db

    def build(self) -> None:
        """Build the substring tables now (otherwise the first search does)."""
        from mcmfh.index import _kernels as K  # numba: loaded when first needed (see bucket.NUMPY_MAX_ITEMS)

        s = self.sub_bits or default_sub_bits(len(self._db), self.bits)
        word, shift, length = substring_layout(self.bits, s)
        offsets, positions, starts = [], [], [0]
        for w, sh, ln in zip(word, shift, length, strict=True):
            keys = ((self._db[:, w] >> np.uint64(sh)) & np.uint64((1 << int(ln)) - 1)).astype(np.int64)
            off, pos = K.csr_build(keys, 1 << int(ln))
            offsets.append(off)
            positions.append(pos)
            starts.append(starts[-1] + len(off))
        self._tables = (
            word,
            shift,
            length,
            np.array(starts[:-1], np.int64),
            np.concatenate(offsets),
            np.concatenate(positions),
            # each table's codes copied in bucket order: the walk then reads memory sequentially (measured 5-10x
            # faster on clustered codes than gathering db[position]) for 8 bytes per item per 64 bits per table
            np.ascontiguousarray(self._db[np.concatenate(positions)]),
        )

    def nbytes(self) -> int:
        if self._tables is None:
            self.build()
        assert self._tables is not None
        return super().nbytes() + int(self._db.nbytes + sum(a.nbytes for a in self._tables[4:]))

    def _knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The walk or the plain scan, whichever the probe says is faster here; both are exact and tie-stable."""
        if self._tables is None:
            self.build()
        out_d = np.full((q.shape[0], k), -1, np.int32)
        out_p = np.full((q.shape[0], k), -1, np.int64)
        scan_first = self._scan_first.get(k)
        probe = 0
        if scan_first is None or q.shape[0] >= 2 * PROBE_QUERIES:
            probe = min(q.shape[0], PROBE_QUERIES)
            scanned = self._walk(q[:probe], k, out_d[:probe], out_p[:probe])
            scan_first = self._scan_first[k] = bool(scanned.mean() >= SCAN_SHARE)
        rest = q[probe:]
        if len(rest) == 0:
            return out_d, out_p
        if scan_first:
            self._scan(rest, k, out_d[probe:], out_p[probe:])
        else:
            self._walk(rest, k, out_d[probe:], out_p[probe:])
        return out_d, out_p

    def _walk(self, q: np.ndarray, k: int, out_d: np.ndarray, out_p: np.ndarray) -> np.ndarray:
        from mcmfh.index import _kernels as K

        assert self._tables is not None
        scanned = np.zeros(q.shape[0], np.uint8)
        scan_after = int(self.scan_fraction * len(self._db))
        kernel = K.mih_knn if parallel(q) else K.mih_knn_serial
        kernel(self._db, *self._tables, q, k, scan_after, out_d, out_p, scanned)
        return scanned

    def _scan(self, q: np.ndarray, k: int, out_d: np.ndarray, out_p: np.ndarray) -> None:
        from mcmfh.index import _kernels as K

        if self._db.nbytes >= TILED_SCAN_MIN_BYTES and parallel(q):
            tau0 = np.full(q.shape[0], self._db.shape[1] * 64, np.int64)
            K.blocked_knn(self._db, q, np.arange(q.shape[0]), tau0, k, out_d, out_p)
        else:
            (K.flat_knn if parallel(q) else K.flat_knn_serial)(self._db, q, k, out_d, out_p)

    def _range(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Range queries use the exact scan: it is output-bound for the large radii where MIH stops paying.
        return flat_range(self._db, q, radius)
