"""The store contract (``mcmfh.index.store``) over both implementations: a local ``ItemIndex`` and a ``ServerStore``
whose "server" is an in-memory exact index (the real Milvus runs in the scale tests). Same items, same codes: the same
hits; what a store cannot do is declared and refused or a no-op, never guessed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mcmfh.errors import MCMFHError
from mcmfh.index.flat import FlatIndex
from mcmfh.index.local_store import DB_NAME, ItemIndex
from mcmfh.index.payload import make_codec
from mcmfh.index.server_store import ServerStore, SqliteMeta
from mcmfh.index.store import ItemStore, Rescore
from mcmfh.items import Item

BITS = 16


class MemoryServer(FlatIndex):
    """What ``ServerStore`` uses of a ``MilvusIndex``, kept in memory."""

    collection_name = "memory"

    def refresh(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def drop(self) -> None:
        self.remove_ids(self.ids)

    def close(self) -> None:
        pass


def make(kind: str, folder: Path) -> ItemStore:
    if kind == "local":
        return ItemIndex.create(folder, BITS)
    folder.mkdir()
    return ServerStore(MemoryServer(BITS), SqliteMeta(folder / DB_NAME, create=True), writable=True, where="memory")


def data(n: int = 60) -> tuple[np.ndarray, list[Item]]:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(n, BITS // 8), dtype=np.uint8)  # few distinct codes: many ties
    items = [Item(f"it{i}", None, f"c{i}", (f"l{i % 3}",), source="t") for i in range(n)]
    return codes, items


@pytest.fixture(params=["local", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    s = make(request.param, tmp_path / request.param)
    yield s
    s.close()


def test_both_stores_give_the_same_hits_in_distance_then_insertion_order(tmp_path: Path) -> None:
    codes, items = data()
    queries = np.random.default_rng(1).integers(0, 4, size=(5, BITS // 8), dtype=np.uint8)
    answers = []
    for kind in ("local", "server"):
        s = make(kind, tmp_path / kind)
        s.add(codes, items)
        s.remove(["it3", "it40"])
        answers.append([[(h.item.id, h.distance) for h in hits] for hits in s.search(queries, 12)])
        s.close()
    assert answers[0] == answers[1]
    for hits in answers[0]:
        assert len(hits) == 12 and "it3" not in dict(hits)
        keys = [(d, int(i[2:])) for i, d in hits]
        assert keys == sorted(keys)  # nearest first, ties in insertion order


def test_capabilities_are_declared_and_what_a_store_cannot_do_is_refused(store: ItemStore) -> None:
    codes, items = data(20)
    codec = make_codec("int8", 8)
    payload = codec.encode(np.random.default_rng(2).normal(size=(20, 8)))
    query = Rescore(codec, np.ones((1, 8), np.float32))
    if store.capabilities.payloads:
        store.add(codes, items, payload=payload)
        hits = store.search(codes[:1], 5, rescore=query)[0]
        scores = [h.score for h in hits]
        assert len(hits) == 5 and all(s is not None for s in scores) and scores == sorted(scores, reverse=True)
    else:
        with pytest.raises(MCMFHError, match="keeps no payloads"):
            store.add(codes, items, payload=payload)
        store.add(codes, items)
        with pytest.raises(MCMFHError, match="keeps no payloads"):
            store.search(codes[:1], 5, rescore=query)
        assert all(h.score is None for h in store.search(codes[:1], 5)[0])
    if store.capabilities.snapshots:
        assert store.snapshot() is not None
    else:  # nothing for a commit record to pin, nothing to roll back or fold
        assert store.snapshot() is None and not store.roll_back_to({}) and not store.compact()
    store.flush()
    with store.writer_lock(1.0, "test"):
        store.remove(["it0"])
    assert len(store) == 19 and store.item_ids() == {f"it{i}" for i in range(1, 20)}
    assert store.info().codes is None or len(store.info().codes) == 19


def test_a_server_store_stays_exact_with_codes_a_killed_add_left_without_metadata(tmp_path: Path) -> None:
    codes, items = data(30)
    s = make("server", tmp_path / "s")
    assert isinstance(s, ServerStore)
    s.add(codes, items)
    before = s.search(codes[:4], 10)
    s.codes.add(codes[:6], np.arange(1000, 1006, dtype=np.int64))  # codes written, metadata never committed
    reader = ServerStore(s.codes, s.meta, writable=False, where="memory")
    assert [[h.item.id for h in hits] for hits in reader.search(codes[:4], 10)] == [
        [h.item.id for h in hits] for hits in before
    ]
    s.close()


def test_two_stage_search_reads_payloads_in_one_query_and_only_the_kept_items(tmp_path: Path) -> None:
    """One query for every candidate's payload row, one for the k items kept: with the candidate floor (1000
    candidates), building every candidate's item made a MedPix search 28 ms instead of 4.7 ms."""
    codes, items = data(40)
    codec = make_codec("int8", 8)
    store = ItemIndex.create(tmp_path / "idx", BITS)
    store.add(codes, items, payload=codec.encode(np.random.default_rng(3).normal(size=(40, 8))))
    query = Rescore(codec, np.ones((2, 8), np.float32))
    before = store.search(codes[:2], 5, rescore=query)  # the first read also learns the table's columns
    statements: list[str] = []
    store.table._db.set_trace_callback(statements.append)
    again = store.search(codes[:2], 5, rescore=query)
    store.table._db.set_trace_callback(None)
    assert again == before and all(len(hits) == 5 for hits in again)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2 and "payload" in selects[0] and "payload" not in selects[1], statements
    store.close()
