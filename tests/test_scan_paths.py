"""The exact scans behind MIH (plain bounded scan, tiled multi-query scan, walk) equal a numpy brute force on
randomised cases (seeded, property-style): ties, duplicates, k > n, n = 0, batched and single-query calls."""

from __future__ import annotations

import numpy as np
import pytest

from index_reference import brute_force
from mcmfh.index import FlatIndex, MIHIndex, mih


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("tiled", [False, True])
def test_scans_equal_brute_force(seed: int, tiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if tiled:
        monkeypatch.setattr(mih, "TILED_SCAN_MIN_BYTES", 0)
    rng = np.random.default_rng(100 + seed)
    bits = int(rng.choice([32, 64, 128]))
    n = int(rng.choice([0, 1, 7, 500, 3000]))
    distinct = int(rng.choice([1, 5, 10**6]))
    alphabet = rng.integers(0, 256, (min(distinct, max(n, 1)), bits // 8), dtype=np.uint8)
    db = (
        alphabet[rng.integers(0, len(alphabet), n)]
        if distinct < 10**6
        else rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    )
    q = np.concatenate([alphabet[:1], rng.integers(0, 256, (40, bits // 8), dtype=np.uint8)])
    ids = rng.permutation(10 * n + 1)[:n].astype(np.int64)
    for index in (FlatIndex(bits), MIHIndex(bits, scan_fraction=0.0), MIHIndex(bits, scan_fraction=1e9)):
        index.add(db, ids)
        for k in (1, int(rng.integers(2, 300)), n + 3):
            ref_d, ref_i = brute_force(q, db, ids, k)
            for sl in (slice(None), slice(0, 1), slice(1, 3)):
                d, i = index.search(q[sl], k)
                np.testing.assert_array_equal(d, ref_d[sl], err_msg=f"{index.kind} n={n} k={k} {index.params()}")
                np.testing.assert_array_equal(i, ref_i[sl], err_msg=f"{index.kind} n={n} k={k} {index.params()}")
