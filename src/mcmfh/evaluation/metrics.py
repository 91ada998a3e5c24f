"""Retrieval metrics for cross-modal hashing, with ties handled explicitly (see reference/evaluation.md).

Conventions, used everywhere in this module:
- Relevance: a database item is relevant to a query when they share at least one label.
- Ranking: ascending distance (Hamming distance for codes, 1 - cosine for continuous embeddings).
- Ties: every headline figure (``map``, ``map_all_tie_aware``, ``map_at_k_ucmfh_tie_aware``, ``p_at_k``,
  ``pr_curve``) is the exact expectation over uniformly random orders inside each group of tied distances, so it does
  not depend on the database order. The ``stable`` figures (``map_all``, ``map_at_k_ucmfh``, ``p_at_k_stable``) break
  ties by database order; they are kept as secondary numbers because they reward collapsed codes whenever the
  database happens to be sorted by label.
- A query with no relevant item scores 0 in every AP-type metric and is counted in the mean (never dropped).
- The tie-aware AP (McSherry & Najork, ECIR 2008) is the exact expectation of AP over uniformly random orders inside
  each group of tied distances: the honest number for short codes, where most of the ranking is ties.

Everything is vectorised over blocks of queries; a (Q, N) problem is processed ``block`` queries at a time so that
1,000 x 10,000 stays within a few hundred MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.index.codes import hamming_matrix, pack_codes

# Queries per block when ranking; (block x N) float64 temporaries stay near 64 MB at N = 10,000.
DEFAULT_BLOCK_ELEMENTS = 2_000_000


def as_packed(codes: np.ndarray) -> np.ndarray:
    """Bool (N, bits) codes are packed; uint8 arrays are taken as already packed (see ``mcmfh.index.codes``)."""
    codes = np.asarray(codes)
    if codes.dtype == bool:
        return pack_codes(codes)
    if codes.dtype == np.uint8:
        return codes
    raise MCMFHError(f"codes: expected bool (N, bits) or packed uint8 (N, bytes), got dtype {codes.dtype}")


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """(Q, N) int32 Hamming distances from bool or packed codes."""
    return hamming_matrix(as_packed(query_codes), as_packed(db_codes))


def cosine_distances(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """(Q, N) float64 ``1 - cos`` between real-valued embeddings (zero rows get distance 1 to everything)."""
    q = np.asarray(query, dtype=np.float64)
    d = np.asarray(database, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return 1.0 - q @ d.T


def relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """(Q, N) bool: True where query and database item share at least one label (multi-hot dot product > 0)."""
    ql = np.asarray(query_labels, dtype=np.float32)
    dl = np.asarray(db_labels, dtype=np.float32)
    if ql.ndim != 2 or dl.ndim != 2 or ql.shape[1] != dl.shape[1]:
        raise MCMFHError(f"labels: query {ql.shape} and database {dl.shape} must be multi-hot with equal columns")
    return (ql @ dl.T) > 0


def expected_random_ap(n_relevant: np.ndarray | int, n_db: int) -> np.ndarray:
    """Exact expected AP of a uniformly random ranking of ``n_db`` items of which ``n_relevant`` are relevant.

    A relevant item at rank j has on average (j-1)(R-1)/(N-1) relevant items above it, so
    E[AP] = (1/N) sum_j (1 + (j-1)a)/j with a = (R-1)/(N-1), i.e. a + (H_N / N)(1 - a); 0 when R = 0.
    """
    r = np.asarray(n_relevant, dtype=np.float64)
    n = int(n_db)
    if n <= 0:
        return np.zeros_like(r)
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    a = (r - 1.0) / (n - 1) if n > 1 else np.zeros_like(r)
    out = a + (harmonic / n) * (1.0 - a)
    return np.where(r > 0, out, 0.0)


def chance_map(query_labels: np.ndarray, db_labels: np.ndarray) -> float:
    """Exact expected mAP@all of a random ranking (the ``chance`` row), from the labels alone."""
    rel = relevance(query_labels, db_labels)
    return float(expected_random_ap(rel.sum(1), rel.shape[1]).mean())


def _group_stats(sorted_dist: np.ndarray, sorted_rel: np.ndarray) -> tuple[np.ndarray, ...]:
    """For every ranked position: start index of its tie group, group size, relevant in group, relevant before it."""
    q, n = sorted_dist.shape
    idx = np.broadcast_to(np.arange(n), (q, n))
    change = sorted_dist[:, 1:] != sorted_dist[:, :-1]
    is_start = np.concatenate([np.ones((q, 1), bool), change], axis=1)
    is_end = np.concatenate([change, np.ones((q, 1), bool)], axis=1)
    start = np.maximum.accumulate(np.where(is_start, idx, 0), axis=1)
    end = np.minimum.accumulate(np.where(is_end, idx, n)[:, ::-1], axis=1)[:, ::-1]
    cum = np.cumsum(sorted_rel, axis=1)  # inclusive count of relevant items up to each position
    cum_before = cum - sorted_rel
    rel_before = np.take_along_axis(cum_before, start, axis=1)
    rel_in = np.take_along_axis(cum, end, axis=1) - rel_before
    return start, end - start + 1, rel_in, rel_before


def _tie_aware_ap(sorted_dist: np.ndarray, sorted_rel: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    """Exact expected AP over random orders within tied groups (McSherry & Najork 2008).

    In a group of n items (r relevant) preceded by c items (p relevant), the item at group position i (1-based) is
    relevant with probability r/n, and given that, has on average (i-1)(r-1)/(n-1) relevant group-mates above it,
    so its expected contribution is (r/n)(p + 1 + (i-1)(r-1)/(n-1)) / (c + i). Summing over positions is exact.
    """
    start, size, rel_in, rel_before = _group_stats(sorted_dist, sorted_rel)
    pos = np.arange(sorted_dist.shape[1])
    within = pos - start  # i - 1
    frac_rel = rel_in / size
    mates = within * (rel_in - 1) / np.maximum(size - 1, 1)
    contrib = frac_rel * (rel_before + 1 + mates) / (pos + 1)
    return np.where(n_rel > 0, contrib.sum(1) / np.maximum(n_rel, 1), 0.0)


def _expected_hits(sorted_dist: np.ndarray, sorted_rel: np.ndarray) -> np.ndarray:
    """(Q, N) expected number of relevant items within the top j+1, over random orders inside every tie group.

    The first m items of a group of n (r relevant, p relevant before it) hold on average m·r/n relevant ones (each
    group position is relevant with probability r/n), so E[hits@j] = p + (j - start + 1)·r/n: exact and linear.
    """
    start, size, rel_in, rel_before = _group_stats(sorted_dist, sorted_rel)
    pos = np.arange(sorted_dist.shape[1])
    return rel_before + (pos - start + 1) * rel_in / size


def _tie_aware_ap_at_k(sorted_dist: np.ndarray, sorted_rel: np.ndarray, k: int) -> np.ndarray:
    """Exact expected UCMFH AP@K over random orders inside tie groups; (Q,) values.

    AP@K = Σ_{j≤K} prec(j)·rel(j) / hits(K) is a ratio, so linearity alone does not give its expectation. Only the
    group G that straddles the cut-off makes hits(K) random: with G at positions s..e (n items, r relevant,
    p relevant before it) and m = K - s of its items inside the top K, the number x of relevant ones among those m
    is hypergeometric(n, r, m). Groups wholly inside the top K contribute their tie-aware expectation A (independent
    of G's order); given x, G's x relevant items sit uniformly among its first m positions and contribute
    C(x) = Σ_{i=1..m} (x/m)(p + 1 + (i-1)(x-1)/(m-1)) / (s + i). So E[AP@K] = Σ_x P(x) (A + C(x)) / (p + x), with
    0 when p + x = 0.
    """
    from scipy.stats import hypergeom

    q, n_db = sorted_dist.shape
    k = min(k, n_db)
    start, size, rel_in, rel_before = _group_stats(sorted_dist, sorted_rel)
    pos = np.arange(n_db)
    within = pos - start
    contrib = (rel_in / size) * (rel_before + 1 + within * (rel_in - 1) / np.maximum(size - 1, 1)) / (pos + 1)
    s = start[:, k - 1]  # 0-based start of the cut group
    n, r, p = size[:, k - 1], rel_in[:, k - 1], rel_before[:, k - 1]
    m = k - s
    before_cut = pos[None, :] < s[:, None]
    a = np.where(before_cut, contrib, 0.0).sum(1)
    out = np.zeros(q)
    i = np.arange(1, k + 1)[None, :]  # group position, 1-based; only i <= m counts
    for x in range(0, int(min(m.max(), r.max())) + 1):
        px = hypergeom.pmf(x, n, r, m)
        valid = (px > 0) & (p + x > 0)
        if not valid.any():
            continue
        mates = (i - 1) * (x - 1) / np.maximum(m[:, None] - 1, 1)
        terms = (x / m[:, None]) * (p[:, None] + 1 + mates) / (s[:, None] + i)
        c = np.where(i <= m[:, None], terms, 0.0).sum(1) if x > 0 else np.zeros(q)
        out += np.where(valid, px * (a + c) / np.maximum(p + x, 1), 0.0)
    return out


@dataclass
class RankingOptions:
    """What ``ranking_metrics`` computes besides mAP@all (each a documented, configurable choice)."""

    map_k: int = 50  # mAP@K, UCMFH definition
    p_at_k: Sequence[int] = (1, 5, 10, 20, 50, 100, 200, 500, 1000)
    pr_points: int = 20  # precision-recall at this many evenly spaced ranking cutoffs
    radius: int | None = 2  # precision within Hamming radius (None for continuous methods)


def ranking_metrics(
    dist: np.ndarray, rel: np.ndarray, options: RankingOptions | None = None, block_elements: int | None = None
) -> dict[str, object]:
    """All ranking metrics for one direction from distances (Q, N) and relevance (Q, N).

    Returns per-query AP arrays (``ap_all``, ``ap_all_tie_aware``, ``ap_at_k_ucmfh``, ``ap_at_k_ucmfh_tie_aware``)
    and the aggregated numbers: ``map`` (the headline: tie-aware mAP@all), ``map_all`` (ties in database order,
    secondary), ``map_all_tie_aware`` (= ``map``), ``map_at_k_ucmfh_tie_aware`` and ``map_at_k_ucmfh`` (stable),
    ``p_at_k`` ({K: expected precision over random orders inside ties}), ``p_at_k_stable`` (database order),
    ``pr_curve`` (expected recall and precision at ranking cutoffs, tie-aware), ``precision_radius`` (or None;
    order-independent), and ``chance_map``. Every figure without "stable" in its name is order-independent.
    """
    opts = options or RankingOptions()
    dist = np.asarray(dist)
    rel = np.asarray(rel, dtype=bool)
    if dist.shape != rel.shape or dist.ndim != 2:
        raise MCMFHError(f"metrics: distances {dist.shape} and relevance {rel.shape} must be equal (Q, N) arrays")
    q, n = dist.shape
    if n == 0:
        raise MCMFHError("metrics: empty database")
    ks = [int(k) for k in opts.p_at_k if 1 <= k <= n]
    cutoffs = np.unique(np.linspace(1, n, opts.pr_points).round().astype(int))
    block = max(1, (block_elements or DEFAULT_BLOCK_ELEMENTS) // n)
    n_rel_all = rel.sum(1)
    ap, ap_tie, ap_k, ap_k_tie = np.zeros(q), np.zeros(q), np.zeros(q), np.zeros(q)
    prec_k, prec_k_stable = np.zeros((q, len(ks))), np.zeros((q, len(ks)))
    pr_p, pr_r = np.zeros((q, len(cutoffs))), np.zeros((q, len(cutoffs)))
    ranks = np.arange(1, n + 1, dtype=np.float64)
    # Integer distances sort fastest (radix sort) as int16; float distances keep their dtype.
    sort_dtype = np.int16 if np.issubdtype(dist.dtype, np.integer) and dist.max(initial=0) < 2**15 else None
    for s in range(0, q, block):
        d = dist[s : s + block]
        r = rel[s : s + block]
        order = np.argsort(d.astype(sort_dtype) if sort_dtype else d, axis=1, kind="stable")
        sd = np.take_along_axis(d, order, axis=1)
        sr = np.take_along_axis(r, order, axis=1).astype(np.float64)
        n_rel = n_rel_all[s : s + block]
        cum = np.cumsum(sr, axis=1)
        prec = cum / ranks
        ap[s : s + block] = np.where(n_rel > 0, (prec * sr).sum(1) / np.maximum(n_rel, 1), 0.0)
        ap_tie[s : s + block] = _tie_aware_ap(sd, sr, n_rel)
        k = min(opts.map_k, n)
        hits_k = cum[:, k - 1]
        ap_k[s : s + block] = np.where(hits_k > 0, (prec[:, :k] * sr[:, :k]).sum(1) / np.maximum(hits_k, 1), 0.0)
        ap_k_tie[s : s + block] = _tie_aware_ap_at_k(sd, sr, k)
        e_cum = _expected_hits(sd, sr)
        e_prec = e_cum / ranks
        if ks:
            prec_k[s : s + block] = e_prec[:, np.array(ks) - 1]
            prec_k_stable[s : s + block] = prec[:, np.array(ks) - 1]
        pr_p[s : s + block] = e_prec[:, cutoffs - 1]
        pr_r[s : s + block] = np.where(n_rel[:, None] > 0, e_cum[:, cutoffs - 1] / np.maximum(n_rel, 1)[:, None], 0.0)
    out: dict[str, object] = {
        "n_queries": q,
        "n_database": n,
        "queries_without_relevant": int((n_rel_all == 0).sum()),
        "ap_all": ap,
        "ap_all_tie_aware": ap_tie,
        "ap_at_k_ucmfh": ap_k,
        "ap_at_k_ucmfh_tie_aware": ap_k_tie,
        "map": float(ap_tie.mean()) if q else 0.0,
        "map_all": float(ap.mean()) if q else 0.0,
        "map_all_tie_aware": float(ap_tie.mean()) if q else 0.0,
        "map_at_k_ucmfh": float(ap_k.mean()) if q else 0.0,
        "map_at_k_ucmfh_tie_aware": float(ap_k_tie.mean()) if q else 0.0,
        "map_k": int(opts.map_k),
        "p_at_k": {str(k): float(v) for k, v in zip(ks, prec_k.mean(0) if q else np.zeros(len(ks)), strict=True)},
        "p_at_k_stable": {
            str(k): float(v) for k, v in zip(ks, prec_k_stable.mean(0) if q else np.zeros(len(ks)), strict=True)
        },
        "pr_curve": {
            "cutoffs": cutoffs.tolist(),
            "recall": (pr_r.mean(0) if q else np.zeros(len(cutoffs))).tolist(),
            "precision": (pr_p.mean(0) if q else np.zeros(len(cutoffs))).tolist(),
        },
        "precision_radius": None,
        "chance_map": float(expected_random_ap(n_rel_all, n).mean()) if q else 0.0,
    }
    if opts.radius is not None:
        out["precision_radius"] = precision_within_radius(dist, rel, opts.radius)
        out["radius"] = int(opts.radius)
    return out


def precision_within_radius(dist: np.ndarray, rel: np.ndarray, radius: int = 2) -> float:
    """Mean over queries of the precision of the items within Hamming ``radius``; a query retrieving none scores 0."""
    hit = np.asarray(dist) <= radius
    retrieved = hit.sum(1)
    good = (hit & np.asarray(rel, dtype=bool)).sum(1)
    return float(np.where(retrieved > 0, good / np.maximum(retrieved, 1), 0.0).mean()) if len(retrieved) else 0.0


def map_all(dist: np.ndarray, rel: np.ndarray) -> float:
    """mAP@all with ties broken by database order (stable sort)."""
    return float(ranking_metrics(dist, rel, RankingOptions(radius=None))["map_all"])


def map_all_tie_aware(dist: np.ndarray, rel: np.ndarray) -> float:
    """Tie-aware mAP@all: exact expectation over random orders within groups of equal distance."""
    return float(ranking_metrics(dist, rel, RankingOptions(radius=None))["map_all_tie_aware"])


def map_at_k_ucmfh(dist: np.ndarray, rel: np.ndarray, k: int = 50) -> float:
    """mAP@K as in UCMFH: AP over the top K, normalised by the relevant items *within the top K* (none: 0); ties in
    database order."""
    return float(ranking_metrics(dist, rel, RankingOptions(map_k=k, radius=None))["map_at_k_ucmfh"])


def map_at_k_ucmfh_tie_aware(dist: np.ndarray, rel: np.ndarray, k: int = 50) -> float:
    """UCMFH mAP@K as the exact expectation over random orders inside tie groups."""
    return float(ranking_metrics(dist, rel, RankingOptions(map_k=k, radius=None))["map_at_k_ucmfh_tie_aware"])
