"""Metrics against brute-force loops, hand-computed examples and a Monte Carlo check of the tie-aware AP."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from mcmfh.evaluation.metrics import (
    RankingOptions,
    chance_map,
    cosine_distances,
    expected_random_ap,
    hamming_distances,
    map_all,
    map_all_tie_aware,
    map_at_k_ucmfh,
    precision_within_radius,
    ranking_metrics,
    relevance,
)


def _loop_ap(dist_row, rel_row, k=None, norm="all"):
    order = sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))  # stable: ties by database index
    if k is not None:
        order = order[:k]
    hits, total = 0, 0.0
    for rank, j in enumerate(order, start=1):
        if rel_row[j]:
            hits += 1
            total += hits / rank
    denom = sum(rel_row) if norm == "all" else hits
    return total / denom if denom else 0.0


def _toy(q=7, n=40, bits=8, n_labels=4, seed=0):
    rng = np.random.default_rng(seed)
    qc, dc = rng.random((q, bits)) < 0.5, rng.random((n, bits)) < 0.5
    ql, dl = rng.random((q, n_labels)) < 0.3, rng.random((n, n_labels)) < 0.3
    return qc, dc, ql, dl


def test_hamming_from_bool_and_packed_agree_with_loop():
    qc, dc, _, _ = _toy(bits=16)
    d = hamming_distances(qc, dc)
    from mcmfh.index.codes import pack_codes

    assert np.array_equal(d, hamming_distances(pack_codes(qc), pack_codes(dc)))
    for i, j in itertools.product(range(len(qc)), range(len(dc))):
        assert d[i, j] == int((qc[i] != dc[j]).sum())


def test_map_all_and_ucmfh_map_k_match_brute_force():
    qc, dc, ql, dl = _toy()
    dist, rel = hamming_distances(qc, dc), relevance(ql, dl)
    want_all = np.mean([_loop_ap(dist[i], rel[i]) for i in range(len(qc))])
    want_k = np.mean([_loop_ap(dist[i], rel[i], k=10, norm="topk") for i in range(len(qc))])
    assert map_all(dist, rel) == pytest.approx(want_all, abs=1e-12)
    assert map_at_k_ucmfh(dist, rel, k=10) == pytest.approx(want_k, abs=1e-12)


def test_hand_computed_example_and_query_without_relevant_counts_as_zero():
    # Query 0: ranking [rel, irr, rel] -> AP = (1/1 + 2/3) / 2 = 5/6. Query 1: no relevant item -> 0, still counted.
    dist = np.array([[0, 1, 2], [0, 1, 2]])
    rel = np.array([[1, 0, 1], [0, 0, 0]], dtype=bool)
    m = ranking_metrics(dist, rel, RankingOptions(map_k=2, p_at_k=(1, 2), radius=1))
    assert m["map_all"] == pytest.approx((5 / 6) / 2)
    assert m["queries_without_relevant"] == 1
    # UCMFH mAP@2: top 2 = [rel, irr], one relevant within -> AP 1.0 for query 0.
    assert m["map_at_k_ucmfh"] == pytest.approx(0.5)
    assert m["p_at_k"] == {"1": pytest.approx(0.5), "2": pytest.approx(0.25)}
    # Radius 1 retrieves 2 items per query: precision 1/2 and 0.
    assert m["precision_radius"] == pytest.approx(0.25)


def test_ties_broken_by_database_order():
    # All tied: stable order is database order, so relevant-first vs relevant-last differ.
    dist = np.zeros((1, 4), dtype=np.int32)
    assert map_all(dist, np.array([[1, 0, 0, 0]], bool)) == pytest.approx(1.0)
    assert map_all(dist, np.array([[0, 0, 0, 1]], bool)) == pytest.approx(0.25)
    # The tie-aware value does not depend on where the relevant item sits inside the tie.
    a = map_all_tie_aware(dist, np.array([[1, 0, 0, 0]], bool))
    b = map_all_tie_aware(dist, np.array([[0, 0, 0, 1]], bool))
    assert a == pytest.approx(b) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_tie_aware_equals_exhaustive_average_over_tie_orders():
    # Small enough to enumerate every order within tie groups exactly.
    dist = np.array([[0, 1, 1, 1, 2, 2, 0]])
    rel = np.array([[0, 1, 0, 1, 1, 0, 1]], bool)
    groups = [np.flatnonzero(dist[0] == v) for v in np.unique(dist[0])]
    aps = []
    for perms in itertools.product(*[itertools.permutations(g) for g in groups]):
        order = np.concatenate(perms)
        aps.append(_loop_ap(np.arange(len(order)), rel[0][order]))
    assert map_all_tie_aware(dist, rel) == pytest.approx(np.mean(aps), abs=1e-12)


def test_tie_aware_matches_monte_carlo_over_random_tie_orders():
    qc, dc, ql, dl = _toy(q=5, n=60, bits=8, seed=3)
    qc[:, 3:], dc[:, 3:] = False, False  # 3 effective bits: large tie groups
    dist, rel = hamming_distances(qc, dc), relevance(ql, dl)
    rng = np.random.default_rng(0)
    trials = 3000
    mc = np.zeros(len(qc))
    for _ in range(trials):
        tiebreak = rng.permutation(dist.shape[1])
        order = np.lexsort((tiebreak[None, :].repeat(len(qc), 0), dist), axis=1)
        sr = np.take_along_axis(rel, order, 1)
        cum = np.cumsum(sr, 1)
        mc += np.where(rel.sum(1) > 0, (cum / np.arange(1, dist.shape[1] + 1) * sr).sum(1) / rel.sum(1).clip(1), 0)
    mc /= trials
    exact = ranking_metrics(dist, rel)["ap_all_tie_aware"]
    assert np.allclose(exact, mc, atol=0.01)


def test_chance_is_tie_aware_ap_of_all_tied_codes_and_matches_formula():
    _, _, ql, dl = _toy(q=9, n=30, seed=5)
    rel = relevance(ql, dl)
    all_tied = np.zeros(rel.shape, dtype=np.int32)
    assert chance_map(ql, dl) == pytest.approx(map_all_tie_aware(all_tied, rel), abs=1e-12)
    # Direct sum for R = 3 of N = 10.
    want = np.mean([(1 + (j - 1) * 2 / 9) / j for j in range(1, 11)])
    assert expected_random_ap(3, 10) == pytest.approx(want)
    assert expected_random_ap(0, 10) == 0.0


def test_pr_curve_ends_at_full_recall_and_precision_radius_loop():
    qc, dc, ql, dl = _toy(seed=7)
    dist, rel = hamming_distances(qc, dc), relevance(ql, dl)
    m = ranking_metrics(dist, rel, RankingOptions(pr_points=5))
    has = rel.sum(1) > 0
    assert m["pr_curve"]["recall"][-1] == pytest.approx(has.mean())
    want = []
    for i in range(len(qc)):
        got = [j for j in range(dist.shape[1]) if dist[i, j] <= 2]
        want.append(sum(rel[i, j] for j in got) / len(got) if got else 0.0)
    assert precision_within_radius(dist, rel, 2) == pytest.approx(np.mean(want))


def test_cosine_distances_rank_like_dot_products():
    rng = np.random.default_rng(1)
    q, d = rng.normal(size=(3, 5)), rng.normal(size=(8, 5))
    dist = cosine_distances(q, d)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    assert np.allclose(dist, 1 - qn @ dn.T)


def test_block_processing_gives_same_result():
    qc, dc, ql, dl = _toy(q=13, n=50, seed=2)
    dist, rel = hamming_distances(qc, dc), relevance(ql, dl)
    a = ranking_metrics(dist, rel)
    b = ranking_metrics(dist, rel, block_elements=100)  # 2 queries per block
    for key in ("ap_all", "ap_all_tie_aware", "ap_at_k_ucmfh"):
        assert np.array_equal(a[key], b[key])


def test_fast_enough_for_1000_by_10000():
    rng = np.random.default_rng(0)
    qc, dc = rng.random((1000, 16)) < 0.5, rng.random((10_000, 16)) < 0.5
    ql, dl = rng.random((1000, 20)) < 0.1, rng.random((10_000, 20)) < 0.1
    t = time.perf_counter()
    ranking_metrics(hamming_distances(qc, dc), relevance(ql, dl))
    assert time.perf_counter() - t < 20


def _monte_carlo(dist: np.ndarray, rel: np.ndarray, opts: RankingOptions, draws: int, seed: int) -> dict:
    """Stable-order figures averaged over random database orders: their mean is the tie-aware expectation."""
    rng = np.random.default_rng(seed)
    acc: dict[str, float] = {"map_all": 0.0, "map_at_k_ucmfh": 0.0}
    pk: dict[str, float] = {}
    for _ in range(draws):
        perm = rng.permutation(dist.shape[1])
        m = ranking_metrics(dist[:, perm], rel[:, perm], opts)
        for key in acc:
            acc[key] += float(m[key]) / draws
        for k, v in m["p_at_k_stable"].items():
            pk[k] = pk.get(k, 0.0) + v / draws
    return {**acc, "p_at_k": pk}


def test_tie_aware_map_at_k_and_p_at_k_match_monte_carlo():
    rng = np.random.default_rng(3)
    dist = rng.integers(0, 4, size=(6, 40))  # 4 distinct distances: big tie groups straddle every cut-off
    rel = rng.random((6, 40)) < 0.3
    rel[0] = False  # a query without relevant items scores 0
    opts = RankingOptions(map_k=7, p_at_k=(1, 3, 7, 20), radius=None)
    exact = ranking_metrics(dist, rel, opts)
    mc = _monte_carlo(dist, rel, opts, draws=1500, seed=0)
    assert exact["map_all_tie_aware"] == pytest.approx(mc["map_all"], abs=0.01)
    assert exact["map_at_k_ucmfh_tie_aware"] == pytest.approx(mc["map_at_k_ucmfh"], abs=0.01)
    for k, v in exact["p_at_k"].items():
        assert v == pytest.approx(mc["p_at_k"][k], abs=0.01), k


def test_tie_aware_map_at_k_exact_on_a_small_case():
    # One query, 4 items all tied, 2 relevant, K = 2. Orders: the 2 of 4 in the top 2 are hypergeometric:
    # x=0 (1/6): AP 0; x=2 (1/6): AP 1; x=1 (4/6): relevant first or second, AP 1 or 1/2 -> 3/4. E = 1/6 + 1/2.
    dist = np.zeros((1, 4), dtype=np.int32)
    rel = np.array([[1, 1, 0, 0]], bool)
    m = ranking_metrics(dist, rel, RankingOptions(map_k=2, p_at_k=(2,), radius=None))
    assert m["map_at_k_ucmfh_tie_aware"] == pytest.approx(1 / 6 + 0.5)
    assert m["map_at_k_ucmfh"] == pytest.approx(1.0)  # database order puts both relevant items first
    assert m["p_at_k"]["2"] == pytest.approx(0.5) and m["p_at_k_stable"]["2"] == pytest.approx(1.0)


def test_tie_aware_figures_equal_stable_without_ties():
    rng = np.random.default_rng(1)
    dist = rng.random((5, 30))
    rel = rng.random((5, 30)) < 0.4
    m = ranking_metrics(dist, rel, RankingOptions(map_k=10, p_at_k=(1, 5, 10), radius=None))
    assert m["map_at_k_ucmfh_tie_aware"] == pytest.approx(m["map_at_k_ucmfh"], abs=1e-12)
    assert m["map"] == pytest.approx(m["map_all"], abs=1e-12)
    for k in m["p_at_k"]:
        assert m["p_at_k"][k] == pytest.approx(m["p_at_k_stable"][k], abs=1e-12)
