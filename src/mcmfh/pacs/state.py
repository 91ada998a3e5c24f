"""What a sync has indexed, kept in the archive folder (``pacs/sync.sqlite``): one row per SOPInstanceUID.

Rows are written in one transaction per batch, after the archive committed that batch, so a killed sync leaves
either both or only the archive's part (which the next run's idempotent add completes). The study-aware metadata
lives here because the archive's item type has no field for it. No patient attribute has a column.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.io import sqlite_transaction
from mcmfh.pacs.query import InstanceRef

FOLDER = "pacs"
DB_NAME = "sync.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    item_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    body_part TEXT NOT NULL,
    study_date TEXT NOT NULL,
    synced_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS not_images (sop_uid TEXT PRIMARY KEY, reason TEXT NOT NULL, seen_at REAL NOT NULL);
"""
COLUMNS = ("sop_uid", "item_id", "study_uid", "series_uid", "modality", "body_part", "study_date")


FACETS = ("modality", "body_part")  # what the web page can filter results by


def state_path(archive_dir: Path) -> Path:
    return Path(archive_dir) / FOLDER / DB_NAME


class SyncState:
    def __init__(self, archive_dir: Path) -> None:
        folder = Path(archive_dir) / FOLDER
        folder.mkdir(exist_ok=True)
        self.path = folder / DB_NAME
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ArtefactError(f"{self.path}: unreadable sync state ({e})") from None

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return sqlite_transaction(self._db)

    def source(self) -> str | None:
        """The PACS URL this archive syncs from: recorded by its first sync whose listing succeeded."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'source'").fetchone()
        return None if row is None else str(row[0])

    def check_source(self, url: str, repoint: bool = False) -> None:
        """An archive syncs from one PACS: refuse another URL, so a prune never removes another server's items;
        ``repoint`` lets this run move the archive to ``url`` (recorded once its listing succeeds)."""
        bound = self.source()
        if bound is not None and bound != url and not repoint:
            raise MCMFHError(f"this archive syncs from {bound}, not {url}; if the PACS moved (or the archive was "
                             "bound to a wrong URL), run this sync once with --repoint (see docs/pacs.md)")  # fmt: skip

    def record_source(self, url: str) -> str | None:
        """Bind the archive to ``url`` (after a successful listing); returns the URL it was bound to before."""
        before = self.source()
        if before != url:
            with self._transaction():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('source', ?)", (url,))
        return before

    def not_images(self) -> set[str]:
        """Instances that were fetched and are not images (no pixel data): never fetched again."""
        return {r[0] for r in self._db.execute("SELECT sop_uid FROM not_images")}

    def record_not_images(self, rows: Sequence[tuple[str, str]]) -> None:
        """(sop_uid, reason) of instances found not to be images."""
        now = time.time()
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO not_images VALUES (?, ?, ?)", [(*r, now) for r in rows])

    def known(self) -> dict[str, tuple[str, str, str, str]]:
        """sop_uid -> (item_id, modality, body_part, study_date)."""
        rows = self._db.execute("SELECT sop_uid, item_id, modality, body_part, study_date FROM instances")
        return {r[0]: tuple(r[1:]) for r in rows}

    def record(self, refs: Sequence[InstanceRef], item_ids: Sequence[str]) -> None:
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.sop_uid, i, r.study_uid, r.series_uid, r.modality, r.body_part, r.study_date, now)
                 for r, i in zip(refs, item_ids, strict=True)],
            )  # fmt: skip

    def forget(self, sop_uids: Sequence[str]) -> None:
        with self._transaction():
            self._db.executemany("DELETE FROM instances WHERE sop_uid = ?", [(s,) for s in sop_uids])

    def metadata(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """item_id -> the study-aware metadata of that item (for display and filters)."""
        out = {}
        for chunk in range(0, len(item_ids), 500):
            part = list(item_ids[chunk : chunk + 500])
            marks = ",".join("?" * len(part))
            for row in self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM instances WHERE item_id IN ({marks})",
                                        part):  # fmt: skip
                out[row[1]] = dict(zip(COLUMNS, row, strict=True))
        return out

    def facets(self) -> dict[str, list[str]]:
        """The distinct non-empty values of each facet column (``FACETS``), sorted: the page's filter choices."""
        out = {}
        for col in FACETS:
            rows = self._db.execute(f"SELECT DISTINCT {col} FROM instances WHERE {col} != '' ORDER BY {col}")
            out[col] = [r[0] for r in rows]
        return out

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
