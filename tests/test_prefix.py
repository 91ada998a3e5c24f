"""The prefix property (issue 25): for one query on one store, the top k for any k is the prefix of the top K for
K > k — one-stage and two-stage, over random stores with many Hamming ties, queries and (k, K) pairs (seeded
loops: the search's order must not depend on how many results were asked for)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mcmfh.index.codes import pack_codes
from mcmfh.index.local_store import ItemIndex
from mcmfh.index.payload import make_codec
from mcmfh.index.rerank import DEFAULT_OVERSAMPLE, RERANK_FLOOR
from mcmfh.index.store import Rescore
from mcmfh.items import Hit, Item

BITS = 16
TRIALS = 4  # random stores per test; each asks 8 queries at 6 (k, K) pairs


def _store(folder: Path, rng: np.random.Generator, n: int) -> tuple[ItemIndex, np.ndarray]:
    """A store of n items whose codes take few values (large tie groups, the 16-bit case) with int8 payloads."""
    base = rng.random((int(rng.integers(3, 12)), BITS)) > 0.5
    codes = base[rng.integers(0, len(base), n)] ^ (rng.random((n, BITS)) < 0.05)
    vec = np.where(codes, 1.0, -1.0) + rng.normal(scale=0.8, size=(n, BITS))
    items = [Item(f"it{i}", None, f"caption {i % 7}", study_id=f"s{i // 3}") for i in range(n)]
    store = ItemIndex.create(folder, BITS)
    store.add(pack_codes(codes), items, payload=make_codec("int8", BITS).encode(vec))
    return store, vec


def _ids(hits: list[Hit]) -> list[str]:
    return [h.item.id for h in hits]


@pytest.mark.parametrize("two_stage", [False, True])
def test_top_k_is_a_prefix_of_top_K(tmp_path: Path, two_stage: bool) -> None:
    codec = make_codec("int8", BITS)
    biggest = int(RERANK_FLOOR / DEFAULT_OVERSAMPLE)  # the largest K that shares the default budget
    for trial in range(TRIALS):
        rng = np.random.default_rng(trial)
        store, _ = _store(tmp_path / f"s{trial}", rng, int(rng.integers(50, 2500)))
        q_vec = rng.normal(size=(8, BITS))
        how = Rescore(codec, q_vec) if two_stage else None
        pairs = [tuple(sorted(rng.integers(1, biggest + 1, 2))) for _ in range(6)]
        for k, big in pairs:
            small_hits = store.search(pack_codes(q_vec > 0), int(k), rescore=how)
            big_hits = store.search(pack_codes(q_vec > 0), int(big), rescore=how)
            for s, b in zip(small_hits, big_hits, strict=True):
                assert _ids(s) == _ids(b)[: len(s)], (trial, k, big)
                assert [h.score for h in s] == [h.score for h in b][: len(s)]
                if two_stage:
                    assert all(h.score is not None for h in b)
                    keys = [(-h.score, h.distance) for h in b]
                    assert keys == sorted(keys)  # ordered by similarity, then distance
        store.close()


def test_a_fixed_budget_keeps_the_prefix_past_the_floor(tmp_path: Path) -> None:
    """With one budget for every request (what a widening search such as diversification asks for), the prefix
    holds for any k, K: past the budget the Hamming tail follows, not re-scored."""
    codec = make_codec("int8", BITS)
    rng = np.random.default_rng(11)
    store, _ = _store(tmp_path / "s", rng, 400)
    q_vec = rng.normal(size=(4, BITS))
    how = Rescore(codec, q_vec, budget=30)
    short, long = (store.search(pack_codes(q_vec > 0), k, rescore=how) for k in (10, 300))
    for s, b in zip(short, long, strict=True):
        assert _ids(s) == _ids(b)[:10]
        assert all(h.score is not None for h in b[:30]) and all(h.score is None for h in b[30:])
        assert [h.distance for h in b[30:]] == sorted(h.distance for h in b[30:])
    store.close()
