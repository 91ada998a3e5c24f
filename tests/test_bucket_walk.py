"""The bucket index's radix-selection walk equals a numpy brute force on randomised cases (seeded, property-style):
every path of the selection (one bucket, sparse bins, dense bins sorted by comparison, a level larger than the
scratch buffer), ties, duplicates, k > n and n = 0, batched (parallel) and single-query (serial) calls; and the numpy
path small indexes take for single queries."""

from __future__ import annotations

import numpy as np
import pytest

from index_reference import brute_force
from mcmfh.index import BucketIndex, bucket
from mcmfh.index import _bucket_walk as W

SMALL = bucket.NUMPY_MAX_ITEMS  # as shipped (the fixture below changes it)


@pytest.fixture(autouse=True, params=["walk", "small-numpy"])
def small_index_path(request, monkeypatch) -> None:
    """Every case twice: with the numba walk for all sizes, and with small indexes (bucket.NUMPY_MAX_ITEMS) built and
    searched one query at a time in numpy, as a one-shot CLI search does."""
    if request.param == "walk":
        monkeypatch.setattr(bucket, "NUMPY_MAX_ITEMS", -1)


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


@pytest.mark.parametrize("bits", [8, 16, 24])
def test_small_index_tables_and_removals_equal_the_kernels(bits: int, monkeypatch) -> None:
    """The numpy counting sort and its inverse give the kernels' arrays exactly, after adds and removals."""
    monkeypatch.setattr(bucket, "NUMPY_MAX_ITEMS", SMALL)
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 4, (SMALL, bits // 8), dtype=np.uint8)  # few codes: many per bucket
    small = BucketIndex(bits)
    small.add(codes[:3000])
    small.add(codes[3000:])
    small.remove_ids(rng.choice(len(codes), 500, replace=False))
    monkeypatch.setattr(bucket, "NUMPY_MAX_ITEMS", -1)
    walk = BucketIndex(bits)
    walk.add(codes[:3000])
    walk.add(codes[3000:])
    walk.remove_ids(np.setdiff1d(np.arange(len(codes)), small.ids))
    np.testing.assert_array_equal(small.ids, walk.ids)
    for a, b in ((small._offsets, walk._offsets), (small._positions, walk._positions), (small.codes, walk.codes)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_a_small_index_search_loads_no_numba(tmp_path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\nfrom mcmfh.index import BucketIndex\n"
        "ix = BucketIndex(16)\nix.add(np.arange(2000, dtype=np.uint16).view(np.uint8).reshape(-1, 2))\n"
        "d, i = ix.search(np.array([[7, 0]], np.uint8), 3)\n"
        "print(d.tolist(), i.tolist(), 'numba' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["[[0,", "1,", "1]]", "[[7,", "3,", "5]]", "False"], r.stdout + r.stderr
