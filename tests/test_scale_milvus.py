"""MilvusIndex against a real embedded Milvus server: the same answers as the brute-force FlatIndex."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from mcmfh.errors import MCMFHError
from mcmfh.index import FlatIndex
from mcmfh.index.factory import make_index, open_backend
from scale_servers import free_port

pytestmark = pytest.mark.scale


def _codes(n: int, bits: int, seed: int, distinct: int | None = None) -> np.ndarray:
    """Random packed codes; with ``distinct`` only that many different codes, so distances tie a lot."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (distinct or n, bits // 8), dtype=np.uint8)
    return pool[rng.integers(0, len(pool), n)] if distinct else pool


@pytest.fixture
def index(milvus_uri: str):  # noqa: F811
    from mcmfh.index.milvus import MilvusIndex

    made = []

    def make(bits: int, name: str | None = None, **kw):
        idx = MilvusIndex(bits, uri=milvus_uri, collection=name or f"t_{uuid.uuid4().hex[:12]}", **kw)
        made.append(idx)
        return idx

    yield make
    for idx in made:
        try:
            idx.drop()
            idx.close()
        except MCMFHError:
            pass  # already dropped


@pytest.mark.parametrize(("bits", "distinct"), [(16, 300), (64, None)])
def test_search_and_range_match_flat_including_tie_order(index, bits: int, distinct: int | None) -> None:
    db, q = _codes(3000, bits, 0, distinct), _codes(25, bits, 1)
    ids = np.random.default_rng(2).permutation(10_000)[:3000]  # ids unrelated to insertion order
    mil, ref = index(bits), FlatIndex(bits)
    for part in (slice(0, 1200), slice(1200, 3000)):  # two adds: insertion order spans inserts
        mil.add(db[part], ids[part])
        ref.add(db[part], ids[part])
    assert len(mil) == 3000
    for k in (1, 10, 50):
        d, i = mil.search(q, k)
        rd, ri = ref.search(q, k)
        np.testing.assert_array_equal(d, rd)
        np.testing.assert_array_equal(i, ri)  # ties ordered by insertion, as FlatIndex
    radius = 3 if bits == 16 else 24
    for got, want in zip(mil.range_search(q, radius), ref.range_search(q, radius), strict=True):
        np.testing.assert_array_equal(got, want)


def test_add_remove_reopen_and_padding(index) -> None:
    bits, db = 32, _codes(500, 32, 3, distinct=50)
    mil, ref = index(bits, name="t_reopen_" + uuid.uuid4().hex[:8]), FlatIndex(bits)
    mil.add(db[:400])
    ref.add(db[:400])
    np.testing.assert_array_equal(mil.ids, np.arange(400))
    with pytest.raises(MCMFHError, match="unique"):
        mil.add(db[:2], np.array([5, 1000]))
    assert mil.remove_ids(np.array([3, 7, 7, 99_999])) == 2  # repeated and unknown ids are ignored
    ref.remove_ids(np.array([3, 7]))
    # Reopen from another client: count, ids, codes, next default id and search all carry over.
    from mcmfh.index.milvus import MilvusIndex

    again = MilvusIndex(bits, uri=mil.uri, collection=mil.collection_name)
    assert len(again) == 398
    np.testing.assert_array_equal(again.ids, ref.ids)
    np.testing.assert_array_equal(again.codes, ref.codes)
    again.add(db[400:])
    ref.add(db[400:])
    again.flush()  # sealed, indexed segments must answer exactly as the growing ones did
    np.testing.assert_array_equal(again.ids[-100:], np.arange(400, 500))
    np.testing.assert_array_equal(again.search(db[:20], 15)[0], ref.search(db[:20], 15)[0])
    np.testing.assert_array_equal(again.search(db[:20], 15)[1], ref.search(db[:20], 15)[1])
    d, i = again.search(db[:2], 600)  # more than stored: padded like the local indexes
    assert (d[:, 498:] == -1).all() and (i[:, 498:] == -1).all() and (d[:, :498] >= 0).all()
    with pytest.raises(MCMFHError, match="not a 64-bit"):
        MilvusIndex(64, uri=mil.uri, collection=mil.collection_name)
    again.close()


def test_factory_opens_milvus_and_rejects_uri_for_local(milvus_uri: str) -> None:  # noqa: F811
    idx = make_index(16, "milvus", uri=milvus_uri, collection=f"t_{uuid.uuid4().hex[:12]}")
    try:
        assert idx.kind == "milvus" and len(idx) == 0
        with pytest.raises(MCMFHError, match="reopen it with open_backend"):
            idx.write("unused")
        assert open_backend(None, 16).kind == "bucket"
        with pytest.raises(MCMFHError, match="--uri"):
            open_backend("flat", 16, uri=milvus_uri)
    finally:
        idx.drop()


def test_server_down_is_a_clear_error_quickly() -> None:
    pytest.importorskip("pymilvus", reason="pymilvus not installed")
    from mcmfh.index.milvus import MilvusIndex

    t0 = time.perf_counter()
    with pytest.raises(MCMFHError, match="cannot connect"):
        MilvusIndex(16, uri=f"http://127.0.0.1:{free_port()}", connect_timeout=1.0)
    assert time.perf_counter() - t0 < 10


def test_milvus_index_is_its_own_class_meeting_the_contract(index) -> None:
    """A remote index shares the contract, not the in-memory storage (no stubbed hooks)."""
    from mcmfh.index import CodesIndex, HammingIndex

    idx = index(16)
    assert isinstance(idx, CodesIndex) and not isinstance(idx, HammingIndex)
