"""Two-stage search: candidate rule (the first budget items in Hamming order, a floor independent of k), payload
codecs, re-scoring, evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_features
from mcmfh.errors import MCMFHError
from mcmfh.evaluation.evaluate import evaluate_method
from mcmfh.evaluation.metrics import cosine_distances, ranking_metrics, relevance
from mcmfh.evaluation.rerank_eval import RerankOptions
from mcmfh.factory import create_method
from mcmfh.index import BucketIndex, FlatIndex
from mcmfh.index.codes import hamming_matrix, pack_codes
from mcmfh.index.payload import PAYLOADS, CodeCodec, make_codec
from mcmfh.index.rerank import (
    RERANK_FLOOR,
    candidate_budget,
    candidates,
    rescore,
    rescored_ranking,
    two_stage_arrays,
    two_stage_search,
)
from tiny_config import TINY_MCMFH


def _codes_at(distances: list[int], bits: int = 16) -> np.ndarray:
    """Packed database codes at the given Hamming distances from the all-zero query (first d bits set)."""
    out = np.zeros((len(distances), bits), bool)
    for i, d in enumerate(distances):
        out[i, :d] = True
    return pack_codes(out)


def _flat(codes: np.ndarray) -> FlatIndex:
    index = FlatIndex(8 * codes.shape[1])
    index.add(codes)
    return index


def test_candidates_are_the_first_budget_items_in_hamming_order() -> None:
    # distances: 0, 1, 1, 1, 1, 2, 2, 3 -> Hamming order 1 | 0 3 4 6 | 2 7 | 5
    db = _codes_at([1, 0, 2, 1, 1, 3, 1, 2])
    q = pack_codes(np.zeros((1, 16), bool))
    c = candidates(_flat(db), q, k=2, oversample=3, floor=1)  # budget 6: the group at d=2 is cut after item 2
    assert c.ids[0, : c.count[0]].tolist() == [1, 0, 3, 4, 6, 2] and c.truncated[0]
    assert c.ids.shape == (1, 6)  # never more than the budget when k fits in it
    c = candidates(_flat(db), q, k=2, oversample=3.5, floor=1)  # budget 7: d<=2 fits in whole
    assert c.ids[0, : c.count[0]].tolist() == [1, 0, 3, 4, 6, 2, 7] and not c.truncated[0]
    c = candidates(_flat(db), q, k=2)  # the default floor covers this small index: everything, uncut
    assert c.count[0] == 8 and not c.truncated[0]


def test_candidates_do_not_depend_on_k_below_the_floor() -> None:
    rng = np.random.default_rng(7)
    db = pack_codes(rng.random((3000, 16)) > 0.5)
    q = pack_codes(rng.random((3, 16)) > 0.5)
    small, large = candidates(_flat(db), q, k=1), candidates(_flat(db), q, k=100)
    assert (small.count == RERANK_FLOOR).all() and np.array_equal(small.ids, large.ids[:, : small.ids.shape[1]])
    assert (candidates(_flat(db), q, k=200).count == 2000).all()  # past the floor the budget grows with k


def test_candidate_budget_rule() -> None:
    assert candidate_budget(10, 10, floor=1) == 100 and candidate_budget(3, 1.5, 1) == 5
    assert candidate_budget(7, 1, 1) == 7 and candidate_budget(5) == RERANK_FLOOR
    assert candidate_budget(RERANK_FLOOR + 1, 1.0) == RERANK_FLOOR + 1  # never fewer than k
    for bad in ((0, 10.0), (5, 0.5), (5, float("nan")), (5, 10.0, 0)):
        with pytest.raises(MCMFHError):
            candidate_budget(*bad)


def test_past_a_fixed_budget_the_hamming_tail_follows_unscored() -> None:
    rng = np.random.default_rng(8)
    db_vec = rng.normal(size=(60, 16)).astype(np.float32)
    q_vec = rng.normal(size=(2, 16)).astype(np.float32)
    db_codes, q_codes = pack_codes(db_vec > 0), pack_codes(q_vec > 0)
    codec = make_codec("int8", 16)
    cands = candidates(_flat(db_codes), q_codes, k=20, budget=5)
    res = rescore(cands, codec.encode(db_vec), q_vec, codec, k=20)
    for i in range(2):
        assert set(res.ids[i, :5].tolist()) == set(cands.ids[i, :5].tolist())  # the candidates first, re-scored
        assert (np.diff(res.similarities[i, :5]) <= 0).all() and np.isnan(res.similarities[i, 5:]).all()
        assert res.ids[i, 5:].tolist() == cands.ids[i, 5:20].tolist()  # then Hamming order


@pytest.mark.parametrize("name", ["int8", "int4", "float16", "float32"])
def test_real_valued_payloads_round_trip_up_to_scale(name: str) -> None:
    rng = np.random.default_rng(0)
    x = np.tanh(rng.normal(size=(200, 16))).astype(np.float32)
    codec = make_codec(name, 16)
    rows = codec.encode(x)
    assert rows.dtype == np.uint8 and rows.shape == (200, codec.bytes_per_item)
    back = codec.decode(rows)
    cos = (back * x).sum(1) / np.linalg.norm(back, axis=1) / np.linalg.norm(x, axis=1)
    tol = {"int8": 1e-3, "int4": 0.05, "float16": 1e-5, "float32": 1e-6}[name]
    assert cos.min() > 1 - tol
    assert np.array_equal(codec.encode(back), rows)  # decoding then encoding again is the identity
    assert codec.bytes_per_item == {"int8": 16, "int4": 8, "float16": 32, "float32": 64}[name]
    if name == "float32":
        assert np.array_equal(back, x)


def test_code_payload_round_trips_and_scores_as_hamming_cosine() -> None:
    rng = np.random.default_rng(1)
    bits = rng.random((50, 64)) > 0.5
    codec = make_codec("code64", 64)
    assert isinstance(codec, CodeCodec) and codec.bytes_per_item == 8
    rows = codec.encode(bits)
    assert np.array_equal(codec.decode(rows) > 0, bits)
    q = rng.random((3, 64)) > 0.5
    sims = codec.score(codec.prepare_queries(q), np.broadcast_to(rows, (3, *rows.shape)))
    h = hamming_matrix(pack_codes(q), rows)
    assert np.allclose(sims, 1 - 2 * h / 64)
    with pytest.raises(MCMFHError):
        make_codec("code64", 32)
    with pytest.raises(MCMFHError):
        make_codec("int3", 16)
    assert "code64" in PAYLOADS


def test_two_stage_equals_brute_force_rescoring_when_the_budget_covers_everything() -> None:
    rng = np.random.default_rng(2)
    n, k = 300, 10
    db_vec = rng.normal(size=(n, 16)).astype(np.float32)
    q_vec = rng.normal(size=(5, 16)).astype(np.float32)
    db_codes, q_codes = pack_codes(db_vec > 0), pack_codes(q_vec > 0)
    codec = make_codec("float32", 16)
    res = two_stage_arrays(db_codes, codec.encode(db_vec), q_codes, q_vec, codec, k, oversample=n / k + 1)
    assert (res.candidates == n).all()
    sims = 1 - cosine_distances(q_vec, db_vec)
    for i in range(len(q_vec)):
        assert res.ids[i].tolist() == np.argsort(-sims[i], kind="stable")[:k].tolist()
        assert np.allclose(res.similarities[i], sims[i, res.ids[i]], atol=1e-6)
        assert np.array_equal(res.distances[i], hamming_matrix(q_codes[i : i + 1], db_codes[res.ids[i]])[0])


def test_two_stage_results_come_only_from_the_candidates_and_ties_fall_back_to_hamming() -> None:
    rng = np.random.default_rng(3)
    db_vec = rng.normal(size=(400, 16)).astype(np.float32)
    db_vec[1] = db_vec[0] * 3  # same direction: equal cosine, the Hamming order then decides
    q_vec = rng.normal(size=(4, 16)).astype(np.float32)
    db_codes, q_codes = pack_codes(db_vec > 0), pack_codes(q_vec > 0)
    codec = make_codec("int8", 16)
    payload = codec.encode(db_vec)
    res = two_stage_arrays(db_codes, payload, q_codes, q_vec, codec, k=5, oversample=4, floor=1)
    cands = candidates(_flat(db_codes), q_codes, 5, 4, floor=1)
    for i in range(4):
        assert set(res.ids[i].tolist()) <= set(cands.ids[i, : cands.count[i]].tolist())
        assert (np.diff(res.similarities[i]) <= 0).all()
    # Over another index with its own ids, mapped to payload rows.
    index = BucketIndex(16)
    ids = np.arange(400, dtype=np.int64) * 7 + 1000
    index.add(db_codes, ids)
    res2 = two_stage_search(index, q_codes, q_vec, payload, codec, 5, 4, rows_of=lambda a: (a - 1000) // 7, floor=1)
    assert np.array_equal((res2.ids - 1000) // 7, res.ids) and np.array_equal(res2.similarities, res.similarities)


def test_small_index_pads_results() -> None:
    db_vec = np.eye(16, dtype=np.float32)[:3]
    codec = make_codec("int8", 16)
    codes = pack_codes(db_vec > 0)
    res = two_stage_arrays(codes, codec.encode(db_vec), codes[:1], db_vec[:1], codec, 5)
    assert res.ids[0, 0] == 0 and sorted(res.ids[0, :3].tolist()) == [0, 1, 2]  # itself first (cosine 1)
    assert res.ids[0, 3:].tolist() == [-1, -1] and np.isneginf(res.similarities[0, 3:]).all()


def test_rescored_ranking_ties_only_where_scores_are_equal() -> None:
    ham = np.array([[0, 0, 1, 2, 2, 3]])
    sims = np.array([[0.5, 0.9, 0.9, 0.1, 0.3, 0.8]])
    mask = np.array([[True, True, True, True, False, False]])
    keys = rescored_ranking(ham, sims, mask)
    # candidates by similarity (0.9 @ d0, 0.9 @ d1, 0.5, 0.1), then the rest by Hamming distance (d2, d3)
    assert keys[0].tolist() == [2, 0, 1, 3, 4, 5]
    keys = rescored_ranking(np.array([[1, 1, 1]]), np.array([[0.2, 0.2, 0.4]]), np.array([[True, True, True]]))
    assert keys[0].tolist() == [1, 1, 0]  # truly equal (similarity and distance): one tie


def test_evaluate_reports_two_stage_next_to_one_stage() -> None:
    fs = make_features(n=200, di=24, dt=16, n_labels=5, seed=0)
    m = create_method("mcmfh", bits=16, seed=0, **TINY_MCMFH)
    m.fit(fs.splits("train"), fs.splits("dev"))
    out = evaluate_method(m, fs, rerank=RerankOptions(payloads=("int8", "float32"), k=10, oversample=2))
    for d in ("i2t", "t2i"):
        for key in (f"{d}_map_2s_int8", f"{d}_map_2s_int8_all", f"{d}_p10_2s_float32", f"{d}_p10", f"{d}_p20"):
            assert 0.0 <= out[key] <= 1.0
    assert out["bytes_2s_int8"] == 16 and out["bytes_2s_float32"] == 64
    # Every item re-scored with the lossless payload is exactly the relaxed ceiling (cosine on tanh outputs).
    q, db = fs.splits("test"), fs.splits("train", "dev")
    qi, dbt = q.subset(q.has_image), db
    dist = cosine_distances(m.relaxed_images(qi.image), m.relaxed_texts(dbt.text))
    ceiling = ranking_metrics(dist, relevance(qi.labels, dbt.labels))["map"]
    assert out["i2t_map_2s_float32_all"] == pytest.approx(ceiling, abs=1e-9)
    relaxed = create_method("continuous-mcmfh-relaxed", bits=16, seed=0, **TINY_MCMFH)
    relaxed.fit(fs.splits("train"), fs.splits("dev"))
    assert np.allclose(relaxed.encode_images(qi.image), m.relaxed_images(qi.image))
    assert np.array_equal(m.relaxed_images(qi.image) > 0, m.encode_images(qi.image))


def test_baselines_expose_the_pre_sign_projection_and_chance_has_none() -> None:
    fs = make_features(n=120, seed=1)
    itq = create_method("cca-itq", bits=16, seed=0)
    itq.fit(fs.splits("train"))
    x = fs.splits("test").text
    assert itq.has_relaxed and np.array_equal(itq.relaxed_texts(x) > 0, itq.encode_texts(x))
    chance = create_method("chance", bits=16, seed=0)
    assert not chance.has_relaxed
    with pytest.raises(MCMFHError):
        chance.relaxed_images(fs.image)
