"""The bucket index's radix-selection walk equals a numpy brute force on randomised cases (seeded, property-style):
every path of the selection (one bucket, sparse bins, dense bins sorted by comparison, a level larger than the
scratch buffer), ties, duplicates, k > n and n = 0, batched (parallel) and single-query (serial) calls."""

from __future__ import annotations

import numpy as np
import pytest

from index_reference import brute_force
from mcmfh.index import BucketIndex
from mcmfh.index import _bucket_walk as W


def check(db: np.ndarray, q: np.ndarray, k: int, bits: int, ids: np.ndarray | None = None) -> None:
    index = BucketIndex(bits)
    index.add(db, ids)
    ref_d, ref_i = brute_force(q, db, index.ids, k)
    for sl in (slice(None), slice(0, 1)):  # the batch takes the parallel kernel, one query the serial one
        d, i = index.search(q[sl], k)
        np.testing.assert_array_equal(d, ref_d[sl], err_msg=f"n={len(db)} k={k}")
        np.testing.assert_array_equal(i, ref_i[sl], err_msg=f"n={len(db)} k={k}")


@pytest.mark.parametrize("seed", range(12))
def test_random_cases_equal_brute_force(seed: int) -> None:
    """Sizes, k, code alphabets (few distinct codes: deep buckets, heavy ties) and ids drawn at random."""
    rng = np.random.default_rng(seed)
    bits = int(rng.choice([8, 16]))
    n = int(rng.choice([0, 1, 5, 300, 5000, 40_000]))
    distinct = int(rng.choice([1, 3, 50, 1 << bits]))
    alphabet = rng.integers(0, 256, (distinct, bits // 8), dtype=np.uint8)
    db = alphabet[rng.integers(0, distinct, n)]
    q = np.concatenate([alphabet[:2], rng.integers(0, 256, (20, bits // 8), dtype=np.uint8)])
    ids = rng.permutation(10 * n + 1)[:n].astype(np.int64)
    for k in (1, int(rng.integers(2, 200)), max(1, n // 3), n + 7):
        check(db, q, k, bits, ids)


def test_dense_bins_and_oversized_level() -> None:
    """Two codes 1 bit apart, 10^5 items: level 1 holds half the positions (many per selection bin: the comparison
    sort) and, for k beyond SCRATCH_ITEMS, more candidates than the scratch buffer (its own buffer)."""
    rng = np.random.default_rng(7)
    two = np.array([[0b1010, 0x33], [0b1011, 0x33]], np.uint8)
    db = two[rng.integers(0, 2, 100_000)]
    q = np.concatenate([two, rng.integers(0, 256, (6, 2), dtype=np.uint8)])
    for k in (10, 3000, W.SCRATCH_ITEMS + 1000, 60_000):
        check(db, q, k, 16)


def test_random_16_bit_codes_at_scale() -> None:
    """10^5 random 16-bit codes: the level that overflows k is selected from ~16 buckets over sparse bins."""
    rng = np.random.default_rng(8)
    db = rng.integers(0, 256, (100_000, 2), dtype=np.uint8)
    q = rng.integers(0, 256, (30, 2), dtype=np.uint8)
    for k in (1, 10, 100, 1000):
        check(db, q, k, 16)
