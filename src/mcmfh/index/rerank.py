"""Two-stage search: Hamming candidates from any codes index, re-scored by a small per-item payload.

Stage 1 — candidates, exact and bounded. For a request of ``k`` results with oversampling factor ``oversample``,
the budget is ``cap = max(k, ceil(oversample * k))`` items. The candidates are every item in the *whole* Hamming
tie groups (equal distance) that fit in the budget, nearest first, and always at least the whole group at the k-th
distance. Only when that group alone overflows the budget is it cut: the candidates are then the first ``cap``
items in (distance, insertion order), and the query is flagged ``truncated``. One exact ``search(queries, cap + 1)``
call decides this: every item nearer than the (cap + 1)-th result's distance is among the first cap results.

Stage 2 — re-scoring. The candidates' payload rows (``mcmfh.index.payload``) are scored against the query's own
real-valued vector (or longer code); results are ordered by (similarity descending, Hamming distance, insertion
order), so equal similarities fall back to the Hamming order and then to a fixed, label-independent order.

Works on plain arrays (``two_stage_arrays``) and over anything with exact k-NN (``mcmfh.index.base.NearestCodes``):
every ``mcmfh.index.HammingIndex``, and the archive's stores (``mcmfh.index.store.search_store``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.index.base import NearestCodes
from mcmfh.index.flat import FlatIndex
from mcmfh.index.payload import PayloadCodec

DEFAULT_OVERSAMPLE = 10.0  # budget = 10 k: vector databases' usual rescoring oversampling (4-10x)


def candidate_budget(k: int, oversample: float = DEFAULT_OVERSAMPLE) -> int:
    """Most candidates re-scored per query: ``max(k, ceil(oversample * k))``."""
    if k < 1:
        raise MCMFHError(f"two-stage search: k must be >= 1, got {k}")
    if not oversample >= 1.0 or not math.isfinite(oversample):
        raise MCMFHError(f"two-stage search: oversample must be a finite number >= 1, got {oversample}")
    return max(int(k), math.ceil(oversample * k))


@dataclass
class Candidates:
    """Stage-1 output: (Q, cap) ids and Hamming distances, -1 padded after ``count[q]`` valid entries."""

    ids: np.ndarray
    distances: np.ndarray
    count: np.ndarray  # (Q,) int64
    truncated: np.ndarray  # (Q,) bool: the tie group at the k-th distance did not fit in the budget


def select_candidates(distances: np.ndarray, ids: np.ndarray, k: int, cap: int) -> Candidates:
    """The candidate rule (module docstring) applied to an exact (Q, cap + 1) k-NN result ordered by (distance,
    insertion order). Fewer than cap + 1 valid results means the whole index was returned: all are candidates."""
    distances = np.asarray(distances)
    ids = np.asarray(ids)
    if distances.shape != ids.shape or distances.ndim != 2 or distances.shape[1] != cap + 1:
        raise MCMFHError(f"two-stage search: expected (Q, {cap + 1}) distances and ids, got {distances.shape}")
    valid = ids >= 0
    n_valid = valid.sum(axis=1)
    last = distances[:, cap]
    # Whole groups: items strictly nearer than the (cap + 1)-th result (all of them are in the first cap).
    whole = (distances[:, :cap] < last[:, None]) & valid[:, :cap]
    n_whole = whole.sum(axis=1)
    everything = n_valid <= cap
    truncated = ~everything & (n_whole < min(k, cap))
    count = np.where(everything, n_valid, np.where(truncated, cap, n_whole)).astype(np.int64)
    keep = np.arange(cap)[None, :] < count[:, None]
    return Candidates(
        ids=np.where(keep, ids[:, :cap], -1).astype(np.int64),
        distances=np.where(keep, distances[:, :cap], -1).astype(np.int32),
        count=count,
        truncated=truncated,
    )


def candidates(index: NearestCodes, queries: np.ndarray, k: int, oversample: float = DEFAULT_OVERSAMPLE) -> Candidates:
    """Stage 1 over any codes index (packed query codes, as the index takes them)."""
    cap = candidate_budget(k, oversample)
    dist, ids = index.search(queries, cap + 1)
    return select_candidates(dist, ids, k, cap)


@dataclass
class TwoStageResult:
    """(Q, k) results ordered by re-scored similarity; -1 ids, -1 distances and -inf similarities pad."""

    ids: np.ndarray
    distances: np.ndarray  # Hamming distances of the binary index codes
    similarities: np.ndarray  # re-scored similarity (cosine, see mcmfh.index.payload)
    candidates: np.ndarray  # (Q,) how many were re-scored
    truncated: np.ndarray  # (Q,) bool


def rescore(
    cands: Candidates,
    payload: np.ndarray,
    query_vectors: np.ndarray,
    codec: PayloadCodec,
    k: int,
    rows_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TwoStageResult:
    """Stage 2: score every candidate with ``codec`` and keep the best k.

    ``payload``: (N, codec.bytes_per_item) uint8 rows; ``rows_of`` maps ids to row numbers (default: an id is its
    row, as for an index built from position 0 without explicit ids). ``query_vectors``: (Q, codec.dim) real-valued
    query vectors (bool / ±1 codes for a code payload)."""
    payload = np.asarray(payload, dtype=np.uint8)
    if payload.ndim != 2 or payload.shape[1] != codec.bytes_per_item:
        raise MCMFHError(
            f"two-stage search: payload must be (N, {codec.bytes_per_item}) uint8 for {codec.name}, got {payload.shape}"
        )
    q = codec.prepare_queries(query_vectors)
    if q.shape[0] != cands.ids.shape[0]:
        raise MCMFHError(f"two-stage search: {q.shape[0]} query vectors for {cands.ids.shape[0]} queries")
    valid = cands.ids >= 0
    flat = np.where(valid, cands.ids, 0)
    rows = flat if rows_of is None else np.where(valid, rows_of(flat), 0)
    if payload.shape[0] == 0:
        sims = np.full(cands.ids.shape, -np.inf, np.float32)
    else:
        sims = np.where(valid, codec.score(q, payload[rows]), -np.inf).astype(np.float32)
    # Sort keys, last one primary: similarity descending, then Hamming distance, then stage-1 (insertion) order.
    slot = np.broadcast_to(np.arange(cands.ids.shape[1]), cands.ids.shape)
    order = np.lexsort((slot, np.where(valid, cands.distances, np.iinfo(np.int32).max), -sims), axis=1)[:, :k]
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    ids, dist, sim = take(cands.ids), take(cands.distances), take(sims)
    if ids.shape[1] < k:  # fewer candidates than k (a small index): pad to the requested width
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=-1)
        sim = np.pad(sim, ((0, 0), (0, pad)), constant_values=-np.inf)
    return TwoStageResult(ids, dist, sim, cands.count, cands.truncated)


def two_stage_search(
    index: NearestCodes,
    query_codes: np.ndarray,
    query_vectors: np.ndarray,
    payload: np.ndarray,
    codec: PayloadCodec,
    k: int,
    oversample: float = DEFAULT_OVERSAMPLE,
    rows_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TwoStageResult:
    """Both stages over any codes index: packed ``query_codes`` for stage 1, ``query_vectors`` for stage 2."""
    return rescore(candidates(index, query_codes, k, oversample), payload, query_vectors, codec, k, rows_of)


def two_stage_arrays(
    db_codes: np.ndarray,
    payload: np.ndarray,
    query_codes: np.ndarray,
    query_vectors: np.ndarray,
    codec: PayloadCodec,
    k: int,
    oversample: float = DEFAULT_OVERSAMPLE,
) -> TwoStageResult:
    """Both stages on plain arrays: packed uint8 database and query codes; ids are row numbers."""
    db_codes = np.asarray(db_codes, dtype=np.uint8)
    index = FlatIndex(8 * db_codes.shape[1])
    index.add(db_codes)
    return two_stage_search(index, query_codes, query_vectors, payload, codec, k, oversample)


def rescored_ranking(hamming: np.ndarray, sims: np.ndarray, cand_mask: np.ndarray) -> np.ndarray:
    """A whole-database ranking of what a two-stage search shows, as (Q, N) int64 rank keys (lower is better).

    Candidates come first, by (similarity descending, Hamming distance); the other items follow in Hamming order.
    Two items share a key only if both their similarity and Hamming distance are equal (candidates) or their
    Hamming distance is (the rest), so tie-aware metrics see ties only where the scores truly are equal."""
    hamming = np.asarray(hamming, dtype=np.int64)
    sims = np.asarray(sims, dtype=np.float64)
    q, n = hamming.shape
    inf = np.float64(np.inf)
    primary = np.where(cand_mask, -sims, inf)  # non-candidates after every candidate
    order = np.lexsort((hamming, primary), axis=1)
    ps, hs = np.take_along_axis(primary, order, axis=1), np.take_along_axis(hamming, order, axis=1)
    new = np.ones((q, n), bool)
    new[:, 1:] = (ps[:, 1:] != ps[:, :-1]) | (hs[:, 1:] != hs[:, :-1])
    dense = np.cumsum(new, axis=1) - 1
    keys = np.empty((q, n), np.int64)
    np.put_along_axis(keys, order, dense, axis=1)
    return keys
