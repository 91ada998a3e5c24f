"""The reference every exact Hamming index is checked against (test_index_search, test_bucket_walk,
test_scan_paths)."""

from __future__ import annotations

import numpy as np

from mcmfh.index.codes import hamming_matrix


def brute_force(queries: np.ndarray, db: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by a stable sort of the numpy distance matrix: ties keep insertion order; -1 padding beyond n."""
    dist = np.full((len(queries), k), -1, np.int32)
    out = np.full((len(queries), k), -1, np.int64)
    if len(db):
        h = hamming_matrix(queries, db)
        order = np.argsort(h, axis=1, kind="stable")[:, :k]
        dist[:, : order.shape[1]] = np.take_along_axis(h, order, 1)
        out[:, : order.shape[1]] = ids[order]
    return dist, out
