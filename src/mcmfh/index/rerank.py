"""Two-stage search: Hamming candidates from any codes index, re-scored by a small per-item payload.

Stage 1 — candidates, exact and bounded. For a request of ``k`` results the budget is ``cap = max(floor,
ceil(oversample * k))`` items (``candidate_budget``; ``floor`` is ``RERANK_FLOOR`` by default). The candidates are
the first ``cap`` items of the exact Hamming order (distance, insertion order): every item nearer than the cap-th
one, and of the tie group at the cap-th distance those added first. The query is flagged ``truncated`` when that
last group was cut. One exact ``search(queries, max(cap, k) + 1)`` call decides this.

Stage 2 — re-scoring. The candidates' payload rows (``mcmfh.index.payload``) are scored against the query's own
real-valued vector (or longer code); results are ordered by (similarity descending, Hamming distance, insertion
order), so equal similarities fall back to the Hamming order and then to a fixed, label-independent order. Should
``k`` exceed the budget, the items after the candidates follow in Hamming order, not re-scored (similarity NaN).

The prefix property: the ranking is one total order fixed by the budget alone, so for one query on one index the
top k is the prefix of the top K whenever both requests have the same budget — for every k <= K <= floor /
oversample (100 with the defaults), and for any k and K given one ``budget``. The floor is what makes it hold:
a budget that grew with k (``oversample * k`` alone) re-scored more candidates for a larger k, and a small k then
showed other (worse) results than the first k of a larger request (issue 25).

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
# Fewest candidates re-scored per query, whatever k: DEFAULT_OVERSAMPLE x the service's largest page (max_k 100),
# so every request the page, the API and a CLI search up to --k 100 make shares one budget and one ranking (the
# prefix property above). Cost: 1000 payload rows (16 kB at int8) read in one SQL query per search.
RERANK_FLOOR = 1000


def candidate_budget(k: int, oversample: float = DEFAULT_OVERSAMPLE, floor: int = RERANK_FLOOR) -> int:
    """Most candidates re-scored per query: ``max(floor, ceil(oversample * k))`` (at least k)."""
    if k < 1:
        raise MCMFHError(f"two-stage search: k must be >= 1, got {k}")
    if not oversample >= 1.0 or not math.isfinite(oversample):
        raise MCMFHError(f"two-stage search: oversample must be a finite number >= 1, got {oversample}")
    if floor < 1:
        raise MCMFHError(f"two-stage search: the candidate floor must be >= 1, got {floor}")
    return max(int(k), int(floor), math.ceil(oversample * k))


@dataclass
class Candidates:
    """Stage-1 output: (Q, W) ids and Hamming distances in exact Hamming order, -1 padded. The first ``count[q]``
    are the candidates; valid entries after them (only when k > the budget) are the Hamming-order tail."""

    ids: np.ndarray
    distances: np.ndarray
    count: np.ndarray  # (Q,) int64
    truncated: np.ndarray  # (Q,) bool: the tie group at the budget's last distance was cut

    def mask(self) -> np.ndarray:
        """(Q, W) bool: which entries are candidates (re-scored)."""
        return (np.arange(self.ids.shape[1])[None, :] < self.count[:, None]) & (self.ids >= 0)


def select_candidates(distances: np.ndarray, ids: np.ndarray, k: int, cap: int) -> Candidates:
    """The candidate rule (module docstring) applied to an exact (Q, max(cap, k) + 1) k-NN result ordered by
    (distance, insertion order). Fewer valid results than that means the whole index was returned."""
    distances = np.asarray(distances)
    ids = np.asarray(ids)
    width = max(cap, k)
    if distances.shape != ids.shape or distances.ndim != 2 or distances.shape[1] != width + 1:
        raise MCMFHError(f"two-stage search: expected (Q, {width + 1}) distances and ids, got {distances.shape}")
    valid = ids >= 0
    count = np.minimum(valid.sum(axis=1), cap).astype(np.int64)
    truncated = valid[:, cap] & (distances[:, cap] == distances[:, cap - 1])
    keep = valid[:, :width]
    return Candidates(
        ids=np.where(keep, ids[:, :width], -1).astype(np.int64),
        distances=np.where(keep, distances[:, :width], -1).astype(np.int32),
        count=count,
        truncated=truncated,
    )


def candidates(index: NearestCodes, queries: np.ndarray, k: int, oversample: float = DEFAULT_OVERSAMPLE,
               floor: int = RERANK_FLOOR, budget: int | None = None) -> Candidates:  # fmt: skip
    """Stage 1 over any codes index (packed query codes, as the index takes them). ``budget``: a fixed number of
    candidates, whatever k (default ``candidate_budget(k, oversample, floor)``)."""
    cap = candidate_budget(k, oversample, floor) if budget is None else candidate_budget(1, 1.0, budget)
    dist, ids = index.search(queries, max(cap, k) + 1)
    return select_candidates(dist, ids, k, cap)


@dataclass
class TwoStageResult:
    """(Q, k) results ordered by re-scored similarity; -1 ids, -1 distances and -inf similarities pad."""

    ids: np.ndarray
    distances: np.ndarray  # Hamming distances of the binary index codes
    similarities: np.ndarray  # re-scored similarity (cosine, see mcmfh.index.payload); NaN: the Hamming tail
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
    scored = cands.mask()
    flat = np.where(valid, cands.ids, 0)
    rows = flat if rows_of is None else np.where(valid, rows_of(flat), 0)
    if payload.shape[0] == 0:
        sims = np.full(cands.ids.shape, -np.inf, np.float32)
    else:
        sims = np.where(valid, codec.score(q, payload[rows]), -np.inf).astype(np.float32)
    sims = np.where(scored | ~valid, sims, np.nan).astype(np.float32)  # the Hamming tail is not re-scored
    # Sort keys, last one primary: similarity descending (the tail after every candidate), then Hamming distance,
    # then stage-1 (insertion) order.
    slot = np.broadcast_to(np.arange(cands.ids.shape[1]), cands.ids.shape)
    primary = np.where(scored, -sims, np.inf)
    order = np.lexsort((slot, np.where(valid, cands.distances, np.iinfo(np.int32).max), primary), axis=1)[:, :k]
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
    floor: int = RERANK_FLOOR,
) -> TwoStageResult:
    """Both stages over any codes index: packed ``query_codes`` for stage 1, ``query_vectors`` for stage 2."""
    return rescore(candidates(index, query_codes, k, oversample, floor), payload, query_vectors, codec, k, rows_of)


def two_stage_arrays(
    db_codes: np.ndarray,
    payload: np.ndarray,
    query_codes: np.ndarray,
    query_vectors: np.ndarray,
    codec: PayloadCodec,
    k: int,
    oversample: float = DEFAULT_OVERSAMPLE,
    floor: int = RERANK_FLOOR,
) -> TwoStageResult:
    """Both stages on plain arrays: packed uint8 database and query codes; ids are row numbers."""
    db_codes = np.asarray(db_codes, dtype=np.uint8)
    index = FlatIndex(8 * db_codes.shape[1])
    index.add(db_codes)
    return two_stage_search(index, query_codes, query_vectors, payload, codec, k, oversample, floor=floor)


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
