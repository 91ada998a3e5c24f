"""Every index equals brute force: same distances, same ids under the (distance, insertion order) tie rule."""

from __future__ import annotations

import numpy as np
import pytest

from index_reference import brute_force
from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.index import BucketIndex, FlatIndex, MIHIndex, make_index, read_index, write_index
from mcmfh.index.codes import hamming_matrix, pack_codes

BITS = (8, 16, 32, 64, 128)


def kinds_for(bits: int) -> list[str]:
    return ["flat", "bucket", "mih"] if bits <= 24 else ["flat", "mih"]


def random_codes(n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    return pack_codes(rng.random((n, bits)) < 0.5)


def clustered_codes(n: int, bits: int, rng: np.random.Generator, centres: int = 4, flip: float = 0.05) -> np.ndarray:
    """Many items a few bits from few centres: lots of ties and deep buckets (the hard case for tie handling)."""
    c = rng.random((centres, bits)) < 0.5
    return pack_codes(c[rng.integers(0, centres, n)] ^ (rng.random((n, bits)) < flip))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("data", ["random", "clustered"])
def test_knn_equals_brute_force(bits: int, data: str) -> None:
    rng = np.random.default_rng(bits)
    gen = random_codes if data == "random" else clustered_codes
    db, q = gen(700, bits, rng), gen(40, bits, rng)
    ids = rng.permutation(10_000)[:700].astype(np.int64)  # arbitrary ids: ties must follow insertion, not id
    for k in (1, 10, 100):
        ref_d, ref_i = brute_force(q, db, ids, k)
        for kind in kinds_for(bits):
            index = make_index(bits, kind)
            index.add(db[:300], ids[:300])
            index.add(db[300:], ids[300:])  # two adds: positions continue
            d, i = index.search(q, k)
            assert d.dtype == np.int32 and i.dtype == np.int64
            np.testing.assert_array_equal(d, ref_d, err_msg=f"{kind} {bits} bits k={k}")
            np.testing.assert_array_equal(i, ref_i, err_msg=f"{kind} {bits} bits k={k}")
            d1, i1 = index.search(q[:3], k)  # small batches take the serial path
            np.testing.assert_array_equal(d1, ref_d[:3])
            np.testing.assert_array_equal(i1, ref_i[:3])


@pytest.mark.parametrize("bits", (16, 64))
def test_mih_walk_and_scan_fallback_agree(bits: int) -> None:
    """Both MIH paths (pure bucket walk, immediate fallback to the bounded scan) and odd substring sizes are exact."""
    rng = np.random.default_rng(1)
    db, q = clustered_codes(2000, bits, rng, centres=8), random_codes(20, bits, rng)
    ref_d, ref_i = brute_force(q, db, np.arange(2000), 50)
    for opts in ({"scan_fraction": 1e9}, {"scan_fraction": 0.0}, {"sub_bits": 5}, {"sub_bits": 11}):
        index = MIHIndex(bits, **opts)
        index.add(db)
        d, i = index.search(q, 50)
        np.testing.assert_array_equal(d, ref_d, err_msg=str(opts))
        np.testing.assert_array_equal(i, ref_i, err_msg=str(opts))


def test_mih_many_exact_ties() -> None:
    """Thousands of identical codes overflow the walk's candidate buffer: the scan must take over, still exact."""
    rng = np.random.default_rng(6)
    base = random_codes(3, 64, rng)
    db = np.concatenate([base[rng.integers(0, 3, 9000)], random_codes(500, 64, rng)])
    q = np.concatenate([base, random_codes(2, 64, rng)])
    ref_d, ref_i = brute_force(q, db, np.arange(len(db)), 300)
    for opts in ({"scan_fraction": 1e9}, {}):
        index = MIHIndex(64, **opts)
        index.add(db)
        d, i = index.search(q, 300)
        np.testing.assert_array_equal(d, ref_d)
        np.testing.assert_array_equal(i, ref_i)


@pytest.mark.parametrize("bits", (16, 64))
def test_k_larger_than_n_and_empty(bits: int) -> None:
    rng = np.random.default_rng(2)
    q = random_codes(3, bits, rng)
    for kind in kinds_for(bits):
        index = make_index(bits, kind)
        assert len(index) == 0
        d, i = index.search(q, 5)
        assert (d == -1).all() and (i == -1).all() and d.shape == (3, 5)
        lims, rd, ri = index.range_search(q, bits)
        assert list(lims) == [0, 0, 0, 0] and len(rd) == len(ri) == 0
        db = random_codes(4, bits, rng)
        index.add(db)
        d, i = index.search(q, 10)
        ref_d, ref_i = brute_force(q, db, np.arange(4), 10)
        np.testing.assert_array_equal(d, ref_d)
        np.testing.assert_array_equal(i, ref_i)
        assert (i[:, 4:] == -1).all()


@pytest.mark.parametrize("bits", (8, 16, 32, 64, 128))
def test_range_search_equals_brute_force(bits: int) -> None:
    rng = np.random.default_rng(3)
    db, q = clustered_codes(500, bits, rng), clustered_codes(15, bits, rng)
    ids = np.arange(500, dtype=np.int64) * 3
    h = hamming_matrix(q, db)
    for radius in (0, 2, bits // 4):
        for kind in kinds_for(bits):
            index = make_index(bits, kind)
            index.add(db, ids)
            lims, d, i = index.range_search(q, radius)
            for r in range(len(q)):
                order = np.argsort(h[r], kind="stable")
                order = order[h[r, order] <= radius]
                np.testing.assert_array_equal(d[lims[r] : lims[r + 1]], h[r, order], err_msg=f"{kind} r={radius}")
                np.testing.assert_array_equal(i[lims[r] : lims[r + 1]], ids[order], err_msg=f"{kind} r={radius}")


@pytest.mark.parametrize("bits", (16, 64))
def test_remove_ids_keeps_order_and_exactness(bits: int) -> None:
    rng = np.random.default_rng(4)
    db, q = clustered_codes(600, bits, rng), random_codes(10, bits, rng)
    ids = np.arange(600, dtype=np.int64) + 1000
    drop = rng.choice(ids, 200, replace=False)
    keep = ~np.isin(ids, drop)
    ref_d, ref_i = brute_force(q, db[keep], ids[keep], 30)
    for kind in kinds_for(bits):
        index = make_index(bits, kind)
        index.add(db, ids)
        assert index.remove_ids(np.concatenate([drop, [-5, 99999]])) == 200  # unknown ids are ignored
        assert len(index) == 400
        d, i = index.search(q, 30)
        np.testing.assert_array_equal(d, ref_d)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_array_equal(index.codes, db[keep])
        start = int(index.ids.max()) + 1
        index.add(db[:5])  # default ids continue after the largest id
        assert index.ids[-5:].tolist() == list(range(start, start + 5))


def test_write_read_roundtrip(tmp_path) -> None:
    rng = np.random.default_rng(5)
    for bits, kind in ((16, "bucket"), (64, "mih"), (32, "flat")):
        db, q = random_codes(300, bits, rng), random_codes(5, bits, rng)
        index = make_index(bits, kind)
        index.add(db, np.arange(300) * 7)
        index.remove_ids([7, 14])
        write_index(index, tmp_path / kind)
        back = read_index(tmp_path / kind)
        assert type(back) is type(index) and len(back) == 298
        np.testing.assert_array_equal(back.codes, index.codes)
        for a, b in zip(back.search(q, 20), index.search(q, 20), strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(MCMFHError, match="not 'bucket'"):
        read_index(tmp_path / "mih", kind="bucket")
    codes_file = tmp_path / "flat" / "codes.npy"
    codes_file.write_bytes(codes_file.read_bytes()[:-3])
    with pytest.raises(ArtefactError, match="truncated"):
        read_index(tmp_path / "flat")
    (tmp_path / "flat" / "index.json").write_text("{}")
    with pytest.raises(ArtefactError, match="missing fields"):
        read_index(tmp_path / "flat")


def test_bad_input_is_a_clear_error() -> None:
    index = FlatIndex(16)
    with pytest.raises(MCMFHError, match=r"shape \(N, 2\)"):
        index.add(np.zeros((3, 4), np.uint8))
    with pytest.raises(MCMFHError, match="uint8"):
        index.add(np.zeros((3, 2), np.int64))
    index.add(np.zeros((3, 2), np.uint8), [1, 2, 3])
    with pytest.raises(MCMFHError, match="unique"):
        index.add(np.zeros((1, 2), np.uint8), [2])
    with pytest.raises(MCMFHError, match="k must be"):
        index.search(np.zeros((1, 2), np.uint8), 0)
    with pytest.raises(MCMFHError, match="at most 24 bits"):
        BucketIndex(32)
    with pytest.raises(MCMFHError, match="unknown kind"):
        make_index(16, "hnsw")


def test_default_kinds() -> None:
    assert isinstance(make_index(16), BucketIndex)
    assert isinstance(make_index(8), BucketIndex)
    assert isinstance(make_index(64), MIHIndex)


@pytest.mark.parametrize("bits", (32, 64, 128))
@pytest.mark.parametrize("tiled", [False, True])
def test_mih_learns_to_scan_and_stays_exact(bits: int, tiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the probe queries give up the walk, the rest of the batch (and later single queries) take the plain
    or tiled scan; where the walk finishes it is kept. Every path equals brute force, ties included."""
    from mcmfh.index import mih

    if tiled:
        monkeypatch.setattr(mih, "TILED_SCAN_MIN_BYTES", 0)
    rng = np.random.default_rng(bits)
    db = np.concatenate([random_codes(2500, bits, rng), clustered_codes(2500, bits, rng, centres=3)])
    q = np.concatenate([random_codes(50, bits, rng), clustered_codes(30, bits, rng, centres=3)])
    ids = rng.permutation(50_000)[: len(db)].astype(np.int64)
    for opts, scan_first in (({"scan_fraction": 0.0}, True), ({"scan_fraction": 1e9}, False)):
        index = MIHIndex(bits, **opts)
        index.add(db, ids)
        for k in (1, 37, 6000):
            ref_d, ref_i = brute_force(q, db, ids, k)
            d, i = index.search(q, k)
            assert index._scan_first[k] is scan_first
            np.testing.assert_array_equal(d, ref_d, err_msg=f"{opts} k={k}")
            np.testing.assert_array_equal(i, ref_i, err_msg=f"{opts} k={k}")
            d1, i1 = index.search(q[60:61], k)  # a single query follows the learned choice
            np.testing.assert_array_equal(d1, ref_d[60:61])
            np.testing.assert_array_equal(i1, ref_i[60:61])
        index.remove_ids(ids[:10])
        assert index._scan_first == {}  # any change forgets the choice


def test_every_local_kind_meets_the_codes_index_contract() -> None:
    from mcmfh.index import CodesIndex

    for bits, kind in ((16, "bucket"), (64, "mih"), (32, "flat")):
        assert isinstance(make_index(bits, kind), CodesIndex)


@pytest.mark.parametrize("kind", ["flat", "bucket"])
def test_first_parallel_search_leaves_torch_thread_count_alone(kind: str) -> None:
    """numba's OpenMP pool, started by the first parallel search, used to set torch's thread count (shared libgomp)
    to numba's: a model fitted after a two-stage evaluation then trained on more threads and gave other codes. A fresh
    process, because the pool starts once per process; torch's count comes from OMP_NUM_THREADS, as in a user's run
    (an explicit ``torch.set_num_threads`` was never affected)."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, torch\n"
        "assert torch.get_num_threads() == 1\n"
        "from mcmfh.index import make_index\n"
        "from mcmfh.index.codes import pack_codes\n"
        "from mcmfh.index.base import PARALLEL_MIN_QUERIES\n"
        "rng = np.random.default_rng(0)\n"
        f"ix = make_index(16, {kind!r})\n"
        "ix.add(pack_codes(rng.random((5000, 16)) < 0.5))\n"
        "ix.search(pack_codes(rng.random((4 * PARALLEL_MIN_QUERIES, 16)) < 0.5), 10)\n"
        "import numba\n"
        "print(torch.get_num_threads(), numba.get_num_threads())\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    torch_threads, numba_threads = out.stdout.split()
    assert (torch_threads, numba_threads) == ("1", "2")  # torch keeps its count; numba's pool still has two
