"""PostgresItemStore against a real PostgreSQL cluster started by the fixture: schema, transactions, SQL Hamming."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from mcmfh.errors import MCMFHError
from mcmfh.index import FlatIndex
from mcmfh.index.codes import pack_codes, unpack_codes
from mcmfh.items import Item
from scale_servers import free_port

pytestmark = pytest.mark.scale


def _items(n: int, start: int = 0) -> list[Item]:
    return [
        Item(
            f"item{i}",
            Path(f"img/{i}.png"),
            f"caption {i}",
            ("a", f"l{i % 3}"),
            source="h1" if i % 2 else "h2",
            title=f"case {i}" if i % 5 else None,
        )
        for i in range(start, start + n)
    ]


def test_schema_migrations_and_reopen(postgres_dsn: str) -> None:  # noqa: F811
    import psycopg

    from mcmfh.index.postgres import MIGRATIONS, PostgresItemStore

    codes = np.random.default_rng(0).integers(0, 256, (20, 4), dtype=np.uint8)
    with PostgresItemStore(postgres_dsn, 32) as store:
        assert store.schema_version == len(MIGRATIONS)
        keys = store.add(codes, _items(20))
    with PostgresItemStore(postgres_dsn, 32) as store:  # reopening migrates nothing and keeps the data
        assert len(store) == 20
        assert store.get(keys[[3, 0]])[0].id == "item3"
        np.testing.assert_array_equal(store.codes(keys), codes)
    with psycopg.connect(postgres_dsn) as db:
        assert [r[0] for r in db.execute("SELECT version FROM mcmfh_schema ORDER BY 1")] == list(
            range(1, len(MIGRATIONS) + 1)
        )
    with pytest.raises(MCMFHError, match="32-bit codes, not 64"):
        PostgresItemStore(postgres_dsn, 64)


def test_migrated_items_table_is_the_one_item_record(postgres_dsn: str) -> None:  # noqa: F811
    """Migrations are never edited; this fails when mcmfh.index.columns.COLUMNS changes and no migration follows."""
    import psycopg

    from mcmfh.index.columns import COLUMNS
    from mcmfh.index.postgres import PostgresItemStore

    PostgresItemStore(postgres_dsn, 16, schema="columns_check").close()
    with psycopg.connect(postgres_dsn) as db:
        got = db.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'columns_check' AND table_name = 'mcmfh_items' ORDER BY ordinal_position"
        ).fetchall()
    expected = [(c.name, c.postgres.split()[0], "NO" if "NOT NULL" in c.postgres or c.name == "key" else "YES")
                for c in COLUMNS]  # fmt: skip
    # Columns added by later migrations come after PostgreSQL's own extra column (code): compare without it.
    assert [g for g in got if g[0] != "code"] == expected
    assert len(got) == len(expected) + 1 and "code" in [g[0] for g in got]


def test_sql_hamming_matches_flat_index(postgres_dsn: str) -> None:  # noqa: F811
    from mcmfh.index.postgres import PostgresItemStore

    rng = np.random.default_rng(1)
    codes = pack_codes(rng.random((300, 64)) < 0.5)
    codes[150:] = codes[:150]  # duplicated codes: ties must come out by key
    q = pack_codes(rng.random((5, 64)) < 0.5)
    q[0] = codes[10]
    with PostgresItemStore(postgres_dsn, 64) as store:
        keys = store.add(codes, _items(300))
        ref = FlatIndex(64)
        ref.add(codes, keys)
        for radius in (0, 20, 30):
            lims, dist, ids = ref.range_search(q, radius)
            for j in range(len(q)):
                hits = store.search_hamming(q[j], radius, limit=1000)
                assert [h.distance for h in hits] == dist[lims[j] : lims[j + 1]].tolist()
                assert [h.item.key for h in hits] == ids[lims[j] : lims[j + 1]].tolist()
        top = store.search_hamming(q[0], 64, limit=3)
        assert [h.distance for h in top][:2] == [0, 0] and top[0].item.labels == ("a", "l1")
        # Case titles (migration 4) come back from a search and a lookup; None where an item has none.
        hits = store.search_hamming(q[1], 64, limit=300)
        assert {h.item.id: h.item.title for h in hits} == {it.id: it.title for it in _items(300)}
        assert [it.title for it in store.get(keys[:6])] == [it.title for it in _items(6)]


def test_bit_order_is_pack_codes_bit_order(postgres_dsn: str) -> None:  # noqa: F811
    import psycopg

    from mcmfh.index.postgres import PostgresItemStore

    bits = np.zeros((1, 16), bool)
    bits[0, [0, 9]] = True
    with PostgresItemStore(postgres_dsn, 16) as store:
        store.add(pack_codes(bits), _items(1))
    with psycopg.connect(postgres_dsn) as db:
        (s,) = db.execute("SELECT code::text FROM mcmfh_items").fetchone()
    assert s == "".join("1" if b else "0" for b in unpack_codes(pack_codes(bits))[0])


def test_transactions_all_or_nothing_and_remove(postgres_dsn: str) -> None:  # noqa: F811
    from mcmfh.index.postgres import PostgresItemStore

    codes = np.random.default_rng(2).integers(0, 256, (10, 2), dtype=np.uint8)
    with PostgresItemStore(postgres_dsn, 16) as store:
        first = store.add(codes[:5], _items(5))
        with pytest.raises(MCMFHError, match="already stored"):
            store.add(codes[5:], _items(4, start=5) + _items(1, start=2))  # last one repeats item2
        assert len(store) == 5  # the failed batch left nothing behind
        keys = store.add(codes[5:], _items(5, start=5), keys=[100, 101, 102, 103, 104])
        assert keys.tolist() == [100, 101, 102, 103, 104]
        removed = store.remove(["item1", "item7", "nope"])
        assert removed.tolist() == [first[1], 102] and len(store) == 8
        assert store.add(codes[:1], _items(1, start=20))[0] == 105  # generated keys continue after given ones
        with pytest.raises(MCMFHError, match="no items with keys"):
            store.get([first[1]])


def test_server_down_is_a_clear_error() -> None:
    pytest.importorskip("psycopg", reason="psycopg 3 not installed")
    from mcmfh.index.postgres import PostgresItemStore

    with pytest.raises(MCMFHError, match="cannot connect"):
        PostgresItemStore(f"host=127.0.0.1 port={free_port()} user=x password=secret dbname=x", 16, connect_timeout=2)


def test_writer_lock_serialises_stores_on_one_schema_and_dies_with_its_holder(postgres_dsn: str) -> None:  # noqa: F811
    """Two processes (here: two connections) writing one schema: the second waits, then fails with one line; when
    the holder's session ends, as when its process is killed, the lock is free at once."""
    import time

    from mcmfh.index.postgres import PostgresItemStore
    from mcmfh.locking import LockTimeout

    a = PostgresItemStore(postgres_dsn, 16, schema="locktest")
    b = PostgresItemStore(postgres_dsn, 16, schema="locktest")
    other = PostgresItemStore(postgres_dsn, 16, schema="locktest_other")
    try:
        with a.writer_lock(5, "archive A"):
            t0 = time.monotonic()
            with pytest.raises(LockTimeout, match="another writer holds its PostgreSQL lock"), b.writer_lock(0.3, "B"):
                pass
            assert time.monotonic() - t0 >= 0.3
            with other.writer_lock(0.3, "other schema"):  # another archive's schema is not blocked
                pass
        with b.writer_lock(0.3, "B"):  # released on exit
            pass
        cm = a.writer_lock(5, "A")
        cm.__enter__()
        a.close()  # the holder's session ends without unlocking
        with b.writer_lock(2, "B"):
            pass
    finally:
        for s in (a, b, other):
            with contextlib.suppress(Exception):
                s.close()


def test_full_text_search_stems_ranks_and_takes_any_text(postgres_dsn: str) -> None:  # noqa: F811
    """Issue 25: the lexical channel of PostgreSQL metadata (migration 5's full-text index)."""
    from mcmfh.index.postgres import PostgresItemStore

    texts = ["Acute subdural hemorrhage.", "Ring-enhancing lesion, right frontal.",
             "Old hemorrhages and a ring lesion.", "Normal study."]  # fmt: skip
    items = [Item(f"t{i}", None, t) for i, t in enumerate(texts)]
    with PostgresItemStore(postgres_dsn, 16, schema="fts_check") as store:
        try:
            store.add(np.zeros((len(items), 2), np.uint8), items)
            found = store.lexical("hemorrhage", 10)
            assert sorted(it.id for it, _ in found) == ["t0", "t2"]  # "hemorrhages" stems to the same word
            ranked = store.lexical("ring-enhancing hemorrhage", 10)
            both = [it.id for it, _ in ranked]
            assert set(both) == {"t0", "t1", "t2"} and [s for _, s in ranked] == sorted(
                (s for _, s in ranked), reverse=True
            )
            assert [it.id for it, _ in store.lexical("ring-enhancing hemorrhage", 1)] == both[:1]
            assert store.lexical("the and of", 5) == [] and store.lexical("', ) OR ; DROP", 5) == []
            assert store.lexical("!!& | ((", 5) == []
        finally:
            store.drop()
