"""The one SQLite item table: ``items.sqlite`` in a sub-index folder, for local stores and server stores alike.

The record is ``mcmfh.index.columns``; the table comes in two layouts:

- ``generations=True`` (``ItemIndex``): rows carry the generation that added them (``gen``), the one that removed
  them (``removed_gen``) and an optional sealed ``payload`` blob (``mcmfh.index.sealed``). Readers see only the rows
  visible at ``generation``, the store's committed generation (the store's manifest rename is the commit point;
  SQL transactions only make each change's rows appear at once). A writer undoes the rows of a generation that never
  committed (``undo_after``).
- ``generations=False`` (``ServerStore`` with SQLite metadata): every row is live, item ids are unique, a removal
  deletes, and keys come from a counter (``reserve_keys``) so a code a killed add left on the server can never alias
  a new item.

A table made before a column existed (``study_id``, ``payload``) is read with NULL in its place; a writer adds it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.index import text_index
from mcmfh.index.columns import NAMES, SQL_CHUNK, item_from_row, select_names, sqlite_table, study_filter
from mcmfh.index.sealed import seal, unseal
from mcmfh.io import sqlite_transaction
from mcmfh.items import Item

DB_NAME = "items.sqlite"
_GENERATIONS = "\n".join(
    [
        sqlite_table("items", extra=("gen INTEGER NOT NULL", "removed_gen INTEGER", "payload BLOB")),
        "CREATE INDEX IF NOT EXISTS items_item_id ON items (item_id);",
        "CREATE INDEX IF NOT EXISTS items_removed ON items (removed_gen) WHERE removed_gen IS NOT NULL;",
        "CREATE INDEX IF NOT EXISTS items_study ON items (study_id) WHERE study_id IS NOT NULL;",
    ]
)
_LIVE = "\n".join(
    [
        sqlite_table("items", unique_ids=True),
        "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        "INSERT OR IGNORE INTO counters VALUES ('next_key', 0);",
    ]
)
# Columns added after the first tables of each layout, with their definitions: a writer adds what a table lacks.
_LATER = {True: {"payload": "payload BLOB", "study_id": "study_id TEXT"}, False: {"study_id": "study_id TEXT"}}
_VISIBLE = " AND gen <= ? AND (removed_gen IS NULL OR removed_gen > ?)"

Row = tuple[Any, ...]  # an item's stored columns but its key (``mcmfh.index.columns.item_row``)


def create_table(path: Path, generations: bool) -> None:
    """Make the file's schema (a new, empty table)."""
    con = sqlite3.connect(path)
    con.executescript(_GENERATIONS if generations else _LIVE)
    if generations:  # a local store's text index (mcmfh.index.text_index), kept in step by triggers
        con.executescript(text_index.schema())
    con.close()


class SqliteItemTable:
    """``items.sqlite`` at ``path``; ``name`` names the store in messages (default: its folder's name)."""

    def __init__(self, path: Path, generations: bool, create: bool = False, name: str | None = None) -> None:
        if not create and not path.is_file():
            raise ArtefactError(f"{path}: missing")
        self.path, self.generations, self.name = path, generations, name or path.parent.name
        self.generation = 0  # generations layout: the committed generation readers see (kept by the store)
        self.sealed_from: int | None = None  # generations layout: the first key whose payload is sealed
        self._names: str | None = None  # the SELECT list for this table's columns (older tables lack study_id)
        self._payload_column = False
        self._study_column = False
        self._text_index = False
        self._upgraded = False
        try:
            # check_same_thread=False: callers such as the service serialise access with their own lock.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA synchronous = FULL")
            if create:
                self._db.executescript(_GENERATIONS if generations else _LIVE)
        except sqlite3.DatabaseError as e:
            raise ArtefactError(f"{path}: unreadable item database ({e})") from e

    # ------------------------------------------------------------------------------------------ reading
    def _visible(self) -> tuple[str, tuple[int, ...]]:
        """The condition (to append to a WHERE) and its parameters that keep only the rows readers see."""
        return (_VISIBLE, (self.generation, self.generation)) if self.generations else ("", ())

    def _columns(self) -> set[str]:
        return {r[1] for r in self._db.execute("PRAGMA table_info(items)")}

    def _select(self) -> str:
        if self._names is None:
            self._names = select_names(self._columns())
        return self._names

    def forget_columns(self) -> None:
        """Read the table's columns again on next use (a writer in another process may have added one)."""
        self._names = None

    def __len__(self) -> int:
        where, params = self._visible()
        try:
            return int(self._db.execute(f"SELECT COUNT(*) FROM items WHERE 1{where}", params).fetchone()[0])
        except sqlite3.DatabaseError as e:
            raise ArtefactError(f"{self.path}: unreadable item database ({e})") from e

    def _in_chunks(self, sql: str, values: Sequence[object]) -> Iterator[Row]:
        """Rows of ``sql`` (``{marks}`` for an IN list; the visibility condition is appended) over ``values`` in
        chunks under SQLite's bound-parameter limit."""
        where, params = self._visible()
        for start in range(0, len(values), SQL_CHUNK):
            chunk = list(values[start : start + SQL_CHUNK])
            yield from self._db.execute(sql.format(marks=",".join("?" * len(chunk))) + where, (*chunk, *params))

    def keys_of(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Keys of the given item ids that are in the table."""
        rows = self._in_chunks("SELECT item_id, key FROM items WHERE item_id IN ({marks})", [str(x) for x in item_ids])
        return {str(i): int(k) for i, k in rows}

    def lookup(self, keys: Sequence[int] | np.ndarray) -> dict[int, Item]:
        """The items among ``keys`` (unknown keys are left out)."""
        sql = f"SELECT {self._select()} FROM items WHERE key IN ({{marks}})"
        return {int(row[0]): item_from_row(row) for row in self._in_chunks(sql, [int(k) for k in keys])}

    def get(self, keys: Sequence[int] | np.ndarray) -> list[Item]:
        """Items by key, in the given order; unknown keys raise MCMFHError."""
        keys = [int(k) for k in keys]
        found = self.lookup(keys)
        absent = [k for k in keys if k not in found]
        if absent:
            raise MCMFHError(f"index {self.name}: no items with keys {absent[:5]}")
        return [found[k] for k in keys]

    def payloads(self, keys: Sequence[int] | np.ndarray, width: int) -> np.ndarray:
        """Generations layout: the stored payload rows of ``keys`` as (len(keys), width) uint8, in the given order,
        each checked against its seal; a key without a sound payload of that width raises. The items are not read:
        two-stage search scores its (up to RERANK_FLOOR) candidates from these rows alone and looks up the k it
        keeps (measured on MedPix, 1000 candidates: building every candidate's Item took 3/4 of a search)."""
        return self.payload_rows(keys, width, with_items=False)[1]

    def payload_rows(self, keys: Sequence[int] | np.ndarray, width: int,
                     with_items: bool = True) -> tuple[dict[int, Item], np.ndarray]:  # fmt: skip
        """The items of ``keys`` (none without ``with_items``) and their payload rows (as ``payloads``), read in one
        query."""
        keys = [int(k) for k in keys]
        if not self._has_payload_column():
            raise MCMFHError(f"index {self.name}: made before payloads existed (rebuild it for two-stage)")
        items: dict[int, Item] = {}
        found: dict[int, object] = {}
        columns = self._select() if with_items else "key"
        for row in self._in_chunks(f"SELECT {columns}, payload FROM items WHERE key IN ({{marks}})", keys):
            found[int(row[0])] = row[-1]
            if with_items:
                items[int(row[0])] = item_from_row(row[:-1])
        rows = {k: unseal(k, found.get(k), width, self.sealed_from) for k in keys}
        bad = [k for k in keys if rows[k] is None]
        if bad:
            what = "fails its checksum or has the wrong length" if found.get(bad[0]) is not None else "is missing"
            item = self.get([bad[0]])[0].id
            raise ArtefactError(f"{self.path}: the {width}-byte payload of item {item!r} (key {bad[0]}"
                                f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}) {what}: the archive is "
                                "damaged; restore it from a backup or rebuild it (mcmfh index build)")  # fmt: skip
        out = np.frombuffer(b"".join(rows[k] or b"" for k in keys), dtype=np.uint8)
        return items, out.reshape(len(keys), width)

    def _has_payload_column(self) -> bool:
        # Once there, always there (columns are only added): the PRAGMA runs until then, not on every search.
        if not self._payload_column:
            self._payload_column = "payload" in self._columns()
        return self._payload_column

    def has_text_index(self) -> bool:
        """Whether the table has its text index (``mcmfh.index.text_index``; tables made before it have none)."""
        if not self._text_index:  # once there, always there: the check runs until then, not on every search
            self._text_index = text_index.exists(self._db)
        return self._text_index

    def lexical(self, query: str, n: int) -> list[tuple[Item, float]]:
        """Generations layout: the ``n`` visible items whose text best matches ``query`` by BM25, best first (ties
        by key), each with its BM25 score (higher is better); none when the query has no words to look up."""
        if not self.has_text_index():
            raise MCMFHError(f"index {self.name}: made before text search (run `mcmfh index repair` on the archive)")
        match = text_index.match_expression(query)
        if match is None or n < 1:
            return []
        where, params = self._visible()
        rows = self._db.execute(text_index.search_sql(self._select(), where), (match, *params, int(n)))
        return [(item_from_row(row[:-1]), float(row[-1])) for row in rows]

    def build_text_index(self) -> bool:
        """Generations layout, under the store's writer lock: give a table made before text search its text index
        (one transaction); False when it has one."""
        with self._writes():
            made = text_index.build(self._db)
        self._text_index = True
        return made

    def members(self, study_ids: Sequence[str]) -> dict[str, list[Item]]:
        """The items of each of ``study_ids`` (by ``Item.study_id``, or its own id for an item of no study), in key
        order; a study with no item here is left out. A table made before studies has none but singletons."""
        ids = list(dict.fromkeys(str(s) for s in study_ids))
        out: dict[str, list[Item]] = {}
        study_col = self._has_study_column()
        where, visible = self._visible()
        for start in range(0, len(ids), SQL_CHUNK // 2):
            chunk = ids[start : start + SQL_CHUNK // 2]
            if study_col:
                match, params = study_filter(len(chunk)), (*chunk, *chunk)
            else:
                match, params = f"item_id IN ({','.join('?' * len(chunk))})", tuple(chunk)
            sql = f"SELECT {self._select()} FROM items WHERE {match}{where} ORDER BY key"
            for row in self._db.execute(sql, (*params, *visible)):
                item = item_from_row(row)
                out.setdefault(item.study_id or item.id, []).append(item)
        return out

    def lookup_studies(self, keys: Sequence[int] | np.ndarray) -> tuple[dict[int, Item], dict[str, list[Item]]]:
        """The items among ``keys`` and every item of their studies (as ``members`` gives them), read in one query
        (for up to SQL_CHUNK // 2 keys): a diversified search reads its hits with their "N more in this case"."""
        keys = [int(k) for k in keys]
        if not self._has_study_column():
            found = self.lookup(keys)
            return found, {it.id: [it] for it in found.values()}
        where, visible = self._visible()
        rows: dict[int, Row] = {}
        for start in range(0, len(keys), SQL_CHUNK // 2):
            chunk = keys[start : start + SQL_CHUNK // 2]
            # Every hit is a member of its own study, so the members' rows hold the hits' rows too.
            marks = ",".join("?" * len(chunk))
            studies = f"SELECT coalesce(study_id, item_id) FROM items WHERE key IN ({marks}){where}"
            match = f"(study_id IN ({studies}) OR (study_id IS NULL AND item_id IN ({studies})))"
            sql = f"SELECT {self._select()} FROM items WHERE {match}{where} ORDER BY key"
            rows.update((int(r[0]), r) for r in self._db.execute(sql, (*chunk, *visible, *chunk, *visible, *visible)))
        wanted = set(keys)
        items: dict[int, Item] = {}
        members: dict[str, list[Item]] = {}
        for key in sorted(rows):
            item = item_from_row(rows[key])
            members.setdefault(item.study_id or item.id, []).append(item)
            if key in wanted:
                items[key] = item
        return items, members

    def _has_study_column(self) -> bool:
        # Once there, always there (columns are only added): the PRAGMA runs until then, not on every search.
        if not self._study_column:
            self._study_column = "study_id" in self._columns()
        return self._study_column

    def item_ids(self, with_image: bool = False) -> set[str]:
        """The ids of every item (``with_image``: of those that have an image path); O(N), for integrity checks."""
        where, params = self._visible()
        image = " AND image IS NOT NULL" if with_image else ""
        return {r[0] for r in self._db.execute(f"SELECT item_id FROM items WHERE 1{image}{where}", params)}

    def __iter__(self) -> Iterator[Item]:
        where, params = self._visible()
        for row in self._db.execute(f"SELECT {self._select()} FROM items WHERE 1{where} ORDER BY key", params):
            yield item_from_row(row)

    def all_keys(self) -> np.ndarray:
        where, params = self._visible()
        rows = self._db.execute(f"SELECT key FROM items WHERE 1{where} ORDER BY key", params)
        return np.array([r[0] for r in rows], np.int64)

    def max_key(self) -> int:
        where, params = self._visible()
        return int(self._db.execute(f"SELECT coalesce(max(key), -1) FROM items WHERE 1{where}", params).fetchone()[0])

    # ------------------------------------------------------------------------------------------ writing
    def upgrade(self) -> None:
        """Give a table made before later columns (and their indexes) those columns; once per open, by a writer."""
        if self._upgraded:
            return
        with self._writes():
            have = self._columns()
            for name, definition in _LATER[self.generations].items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE items ADD COLUMN {definition}")
            if self.generations:
                self._db.executescript(_GENERATIONS)  # after the columns: its indexes name them
        if self.generations:
            self.build_text_index()
        self._names = None
        self._upgraded = True

    def insert(self, keys: np.ndarray, rows: Sequence[Row], gen: int = 0, payload: np.ndarray | None = None) -> None:
        """Insert validated rows under ``keys``. Generations layout: tagged ``gen``, with optional payload rows
        (sealed), inside the caller's change (``begin``); live layout: in a transaction of its own (the commit
        point of a server store's add)."""
        if not self.generations:
            self.upgrade()
            with sqlite_transaction(self._db):
                self._db.executemany(f"INSERT INTO items ({NAMES}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     [(int(k), *r) for k, r in zip(keys, rows, strict=True)])  # fmt: skip
            return
        blobs: list[bytes | None] = [None] * len(rows)
        if payload is not None:
            blobs = [seal(int(k), p.tobytes()) for k, p in zip(keys, payload, strict=True)]
        self._db.executemany(f"INSERT INTO items ({NAMES}, gen, payload) VALUES (?,?,?,?,?,?,?,?,?)",
                             [(int(k), *r, gen, b) for k, r, b in zip(keys, rows, blobs, strict=True)])  # fmt: skip

    def delete(self, item_ids: Sequence[str]) -> np.ndarray:
        """Live layout: delete items by id in one transaction; returns their keys."""
        keys = np.array(sorted(self.keys_of(item_ids).values()), np.int64)
        with sqlite_transaction(self._db):
            self._db.executemany("DELETE FROM items WHERE key = ?", [(int(k),) for k in keys])
        return keys

    def reserve_keys(self, n: int) -> np.ndarray:
        """Live layout: ``n`` fresh keys, never handed out again."""
        with sqlite_transaction(self._db):
            start = self._db.execute("SELECT value FROM counters WHERE name = 'next_key'").fetchone()[0]
            self._db.execute("UPDATE counters SET value = ? WHERE name = 'next_key'", (start + n,))
        return np.arange(start, start + n, dtype=np.int64)

    # Generations layout: one change is begin() ... mark_removed / insert ... commit(gen), or rollback().
    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def mark_removed(self, keys: np.ndarray, gen: int) -> None:
        self._db.executemany("UPDATE items SET removed_gen = ? WHERE key = ?", [(gen, int(k)) for k in keys])

    def commit(self, gen: int) -> None:
        # Rows removed before the previous generation are no one's any more: a reader sees at most that one.
        self._db.execute("DELETE FROM items WHERE removed_gen <= ?", (gen - 1,))
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def undo_after(self, gen: int, next_key: int) -> None:
        """Undo what a change that never committed left: rows with keys from ``next_key`` on (an add) and removal
        marks above ``gen`` (a remove). The common case costs one read and no transaction."""
        sql = "SELECT EXISTS(SELECT 1 FROM items WHERE key >= ?) OR EXISTS(SELECT 1 FROM items WHERE removed_gen > ?)"
        if self._db.execute(sql, (next_key, gen)).fetchone()[0]:
            with self._writes(), sqlite_transaction(self._db):
                self._db.execute("DELETE FROM items WHERE gen > ?", (gen,))
                self._db.execute("UPDATE items SET removed_gen = NULL WHERE removed_gen > ?", (gen,))

    @contextlib.contextmanager
    def _writes(self) -> Iterator[None]:
        """A write to a read-only file is one line naming the store, not SQLite's message."""
        try:
            yield
        except sqlite3.OperationalError as e:
            if "readonly" in str(e):
                raise MCMFHError(f"index {self.path.parent}: not writable (its item database is read-only)") from e
            raise

    def close(self) -> None:
        self._db.close()
