"""The lexical channel of a local store: an SQLite FTS5 index (BM25) over its items' report text.

``items_fts`` is an external-content FTS5 table over ``items(caption)`` with ``rowid = key``, kept in step by
triggers on ``items``: every insert, delete and caption update of an item row changes the text index in the same
SQLite transaction. So the text index holds exactly the rows of the item table, whatever the generation, and it
commits, rolls back and survives a crash with them (``mcmfh.index.item_table``). A search joins it with the item
table under the readers' visibility condition, so it sees the committed generation and nothing else.

A table made before this index has none: a writer builds it (``build``: one transaction, so a killed build leaves
no index rather than half of one): every change to a local store does on its way (``SqliteItemTable.upgrade``), and
``mcmfh index repair`` does for an archive that is only read.
"""

from __future__ import annotations

import re
import sqlite3

TABLE = "items_fts"
# Porter stemming over Unicode words: "hemorrhages" finds "hemorrhage", "lesions" "lesion".
_CREATE = [
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(caption, content='items', content_rowid='key', "
    "tokenize='porter unicode61')",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_ai AFTER INSERT ON items BEGIN "
    f"INSERT INTO {TABLE}(rowid, caption) VALUES (new.key, new.caption); END",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_ad AFTER DELETE ON items BEGIN "
    f"INSERT INTO {TABLE}({TABLE}, rowid, caption) VALUES ('delete', old.key, old.caption); END",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_au AFTER UPDATE OF caption ON items BEGIN "
    f"INSERT INTO {TABLE}({TABLE}, rowid, caption) VALUES ('delete', old.key, old.caption); "
    f"INSERT INTO {TABLE}(rowid, caption) VALUES (new.key, new.caption); END",
]
# Function words carry no topic: OR-ed into a BM25 query they match nearly every report and only add noise and
# time (a query of them alone finds nothing lexically, and the cross-modal channel answers it).
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is", "it", "its", "of",
    "on", "or", "that", "the", "this", "to", "was", "were", "with", "showing", "shows", "show", "image", "images",
})  # fmt: skip
# A word, with inner hyphens kept: "ring-enhancing" is looked up as the phrase "ring enhancing".
_WORD = re.compile(r"[^\W_]+(?:-[^\W_]+)*")


def query_terms(text: str) -> list[str]:
    """The words of a free-text query that the lexical channel looks up (lower case, no function words, once each)."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    return list(dict.fromkeys(words))


def match_expression(text: str) -> str | None:
    """An FTS5 MATCH expression for ``text``: its words as quoted phrases, OR-ed (BM25 ranks the reports that hold
    more of the rarer ones first); None when nothing is left to look up. Quoting makes any user text safe: FTS5
    operators and column filters inside a phrase are plain words."""
    terms = query_terms(text)
    return " OR ".join(f'"{t}"' for t in terms) if terms else None


def exists(db: sqlite3.Connection) -> bool:
    """Whether the database holds the text index (tables made before it do not)."""
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
    return row is not None


def build(db: sqlite3.Connection) -> bool:
    """Make the text index and its triggers and fill it from the item table, in one transaction; False when it
    was there already. The caller holds the store's writer lock."""
    if exists(db):
        return False
    db.execute("BEGIN IMMEDIATE")
    try:
        for sql in _CREATE:
            db.execute(sql)
        db.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return True


def schema() -> str:
    """The text index's statements as one script (a new table's schema)."""
    return ";\n".join(_CREATE) + ";"


def search_sql(names: str, visible: str) -> str:
    """A query for the top matches: the item columns ``names`` plus the BM25 score (higher is better), best first,
    ties by key; parameters: the MATCH expression, the visibility parameters, the limit."""
    return (
        f"SELECT {names}, -m.s FROM items JOIN (SELECT rowid AS k, bm25({TABLE}) AS s FROM {TABLE} "
        f"WHERE {TABLE} MATCH ?) m ON m.k = items.key WHERE 1{visible} ORDER BY m.s, items.key LIMIT ?"
    )


def check(db: sqlite3.Connection) -> None:
    """FTS5's own integrity check of the index against the item table (raises sqlite3.DatabaseError on damage)."""
    db.execute(f"INSERT INTO {TABLE}({TABLE}, rank) VALUES ('integrity-check', 1)")
