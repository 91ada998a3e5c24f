"""A persistent, crash-safe item index: codes + ids (.npy, memory-mappable) + item metadata (SQLite) + manifest.

Folder layout::

    manifest.json          kind "index": bits, index kind, generation, count, file checksums, caller's fields
    codes-<gen>.npy        packed uint8 (count, bits // 8), insertion order
    keys-<gen>.npy         int64 (count,) item keys, same order
    items.sqlite           items(key, item_id, caption, image, labels, source, gen, removed_gen)

Every change writes a new generation: new .npy files (temp + rename), then one SQLite transaction that inserts the
new rows tagged with that generation (or tags removed rows), then the manifest (temp + rename). The manifest rename
is the commit point: readers only trust the generation it names and the rows visible at that generation, so a
process killed at any moment leaves the last committed index readable. The next writer rolls back what an
interrupted change left behind. One writer at a time; readers should not stay open across a writer's commit.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.index import _files
from mcmfh.index.base import HammingIndex
from mcmfh.index.factory import default_kind, make_index
from mcmfh.io import atomic_dir, atomic_write_json
from mcmfh.manifest import MANIFEST_NAME, new_manifest, read_manifest, require_match

KIND = "index"
DB_NAME = "items.sqlite"
FORMAT_VERSION = 1
# Manifest fields that describe the bookkeeping of the folder itself; anything else the caller passes
# (run, model, encoder, ...) is stored as given and can be required to match on open.
_OWN_FIELDS = ("kind", "format", "bits", "index_kind", "index_params", "generation", "count", "next_key", "files")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key INTEGER PRIMARY KEY,
    item_id TEXT NOT NULL,
    caption TEXT NOT NULL,
    image TEXT,
    labels TEXT NOT NULL,
    source TEXT NOT NULL,
    gen INTEGER NOT NULL,
    removed_gen INTEGER
);
CREATE INDEX IF NOT EXISTS items_item_id ON items (item_id);
"""
_VISIBLE = "gen <= ? AND (removed_gen IS NULL OR removed_gen > ?)"


@dataclass(frozen=True)
class Item:
    """Metadata of one indexed item; ``key`` is the int64 id the Hamming index returns."""

    key: int
    item_id: str
    caption: str
    image: str | None
    labels: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Hit:
    item: Item
    distance: int


def _item_row(i: int, item: Mapping[str, Any]) -> tuple[str, str, str | None, str, str]:
    """Validate one item mapping: id (required), caption, image, labels, source."""
    if not isinstance(item, Mapping) or not str(item.get("id", "")).strip():
        raise MCMFHError(f"items[{i}]: expected a mapping with a non-empty 'id', got {item!r:.80}")
    labels = item.get("labels", ())
    if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
        raise MCMFHError(f"items[{i}] ({item['id']}): 'labels' must be a list of strings, got {labels!r:.80}")
    image = item.get("image")
    return (
        str(item["id"]),
        str(item.get("caption", "")),
        None if image is None else str(image),
        json.dumps(list(labels)),
        str(item.get("source", "")),
    )


def load_index(folder: Path, manifest: Mapping[str, Any], verify: bool = True) -> HammingIndex:
    """The Hamming index of the generation ``manifest`` names, with sizes and checksums verified."""
    bits, count = int(manifest["bits"]), int(manifest["count"])
    arrays = _files.read_arrays(folder, manifest, {"codes": (bits // 8,), "keys": ()}, count, verify=verify)
    index = make_index(bits, manifest["index_kind"], **manifest.get("index_params", {}))
    index.add(np.asarray(arrays["codes"]), np.asarray(arrays["keys"]))
    return index


def record_item(record: Any, source: str) -> dict[str, Any]:
    """The item mapping ``ItemIndex.add`` takes, from a ``mcmfh.data.records.Record``."""
    return {
        "id": record.id,
        "caption": record.text,
        "image": None if record.image is None else str(record.image),
        "labels": list(record.labels),
        "source": source,
    }


class ItemIndex:
    """Exact Hamming search over stored items. Create with ``ItemIndex.create``, reopen with ``ItemIndex.open``."""

    def __init__(self, folder: Path, manifest: dict[str, Any], index: HammingIndex, writable: bool) -> None:
        self.folder = folder
        self.manifest = manifest
        self.index = index
        self.writable = writable
        try:
            # check_same_thread=False: callers such as the service serialise access with their own lock.
            self._db = sqlite3.connect(folder / DB_NAME, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as e:
            raise ArtefactError(f"{folder / DB_NAME}: unreadable item database ({e})") from e

    # ------------------------------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        folder: str | Path,
        bits: int,
        kind: str | None = None,
        index_params: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        **fields: Any,
    ) -> ItemIndex:
        """Make an empty index folder (atomically). ``fields`` (e.g. run, model, encoder) go into the manifest."""
        folder = Path(folder)
        if folder.exists() and not overwrite:
            raise MCMFHError(f"{folder}: already exists (pass overwrite=True to replace it)")
        clash = sorted(set(fields) & set(_OWN_FIELDS))
        if clash:
            raise MCMFHError(f"index manifest: fields {clash} are reserved")
        index = make_index(bits, kind, **dict(index_params or {}))  # validates bits and kind before writing
        with atomic_dir(folder) as tmp:
            con = sqlite3.connect(tmp / DB_NAME)
            con.executescript(_SCHEMA)
            con.close()
            meta = _files.write_arrays(tmp, {"codes": index.codes, "keys": index.ids}, suffix="-0")
            manifest = new_manifest(
                KIND,
                format=FORMAT_VERSION,
                bits=bits,
                index_kind=kind or default_kind(bits),
                index_params=index.params(),
                generation=0,
                count=0,
                next_key=0,
                **meta,
                **fields,
            )
            atomic_write_json(tmp / MANIFEST_NAME, manifest)
        return cls.open(folder, writable=True)

    @classmethod
    def open(
        cls,
        folder: str | Path,
        expect: Mapping[str, Any] | None = None,
        writable: bool = False,
        verify: bool = True,
    ) -> ItemIndex:
        """Open an index folder; every key of ``expect`` (e.g. {"run": ..., "bits": 64}) must match the manifest.

        ``verify`` checks the SHA-256 of the code files (a few ms per million 64-bit codes). A truncated, corrupt
        or inconsistent folder raises ArtefactError. ``writable`` first rolls back any interrupted change.
        """
        folder = Path(folder)
        manifest = read_manifest(folder, KIND)
        if expect:
            require_match(expect, manifest, list(expect), f"index {folder}")
        missing = [k for k in ("format", "bits", "index_kind", "generation", "count", "files") if k not in manifest]
        if missing:
            raise ArtefactError(f"{folder / MANIFEST_NAME}: missing fields {missing}")
        if manifest["format"] != FORMAT_VERSION:
            raise ArtefactError(f"{folder}: index format {manifest['format']}, this mcmfh reads {FORMAT_VERSION}")
        if not (folder / DB_NAME).is_file():
            raise ArtefactError(f"{folder / DB_NAME}: missing")
        self = cls(folder, manifest, load_index(folder, manifest, verify), writable)
        try:
            if writable:
                self._recover()
            n_rows = self._db.execute(f"SELECT COUNT(*) FROM items WHERE {_VISIBLE}", self._gen2()).fetchone()[0]
        except sqlite3.DatabaseError as e:
            self.close()
            raise ArtefactError(f"{folder / DB_NAME}: unreadable item database ({e})") from e
        if n_rows != manifest["count"]:
            self.close()
            raise ArtefactError(f"{folder}: {n_rows} items in {DB_NAME} but {manifest['count']} codes in the manifest")
        return self

    # ------------------------------------------------------------------------------------------ reading
    @property
    def bits(self) -> int:
        return int(self.manifest["bits"])

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    def __len__(self) -> int:
        return len(self.index)

    def _gen2(self) -> tuple[int, int]:
        return self.generation, self.generation

    def get(self, keys: Sequence[int] | np.ndarray) -> list[Item]:
        """Items by key, in the given order; unknown keys raise MCMFHError."""
        keys = [int(k) for k in keys]
        rows: dict[int, Item] = {}
        for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = (
                f"SELECT key, item_id, caption, image, labels, source FROM items WHERE key IN ({marks}) AND {_VISIBLE}"
            )
            for key, item_id, caption, image, labels, source in self._db.execute(sql, (*chunk, *self._gen2())):
                rows[key] = Item(key, item_id, caption, image, tuple(json.loads(labels)), source)
        absent = [k for k in keys if k not in rows]
        if absent:
            raise MCMFHError(f"index {self.folder}: no items with keys {absent[:5]}")
        return [rows[k] for k in keys]

    def keys_of(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Keys of the given item ids that are in the index."""
        out: dict[str, int] = {}
        ids = [str(x) for x in item_ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            sql = f"SELECT item_id, key FROM items WHERE item_id IN ({','.join('?' * len(chunk))}) AND {_VISIBLE}"
            out.update(self._db.execute(sql, (*chunk, *self._gen2())).fetchall())
        return out

    def search_arrays(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw (distances, keys) as ``HammingIndex.search``."""
        return self.index.search(queries, k)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-k items per packed query code, nearest first (ties: earlier added first)."""
        dist, keys = self.index.search(queries, k)
        found = keys[keys >= 0]
        items = {it.key: it for it in self.get(np.unique(found))} if found.size else {}
        return [
            [Hit(items[int(c)], int(d)) for d, c in zip(dr, kr, strict=True) if c >= 0]
            for dr, kr in zip(dist, keys, strict=True)
        ]

    def __iter__(self) -> Iterator[Item]:
        sql = f"SELECT key, item_id, caption, image, labels, source FROM items WHERE {_VISIBLE} ORDER BY key"
        for key, item_id, caption, image, labels, source in self._db.execute(sql, self._gen2()):
            yield Item(key, item_id, caption, image, tuple(json.loads(labels)), source)

    # ------------------------------------------------------------------------------------------ writing
    def add(self, codes: np.ndarray, items: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Add items (mappings with id, caption, image, labels, source) with their packed codes; returns keys.

        Item ids must be new to the index. The change is committed atomically before this returns."""
        self._require_writable()
        rows = [_item_row(i, it) for i, it in enumerate(items)]
        codes = np.asarray(codes)
        if codes.ndim != 2 or len(codes) != len(rows):
            raise MCMFHError(f"index add: {len(rows)} items but codes of shape {codes.shape}")
        item_ids = [r[0] for r in rows]
        if len(set(item_ids)) != len(item_ids):
            raise MCMFHError("index add: item ids repeat within the batch")
        present = self.keys_of(item_ids)
        if present:
            raise MCMFHError(f"index add: item ids already in the index: {sorted(present)[:5]}")
        start = int(self.manifest.get("next_key", 0))
        keys = np.arange(start, start + len(rows), dtype=np.int64)
        self.index.add(codes, keys)  # validates the codes' width before anything is written
        with self._change(next_key=start + len(rows)) as gen:
            self._db.executemany(
                "INSERT INTO items (key, item_id, caption, image, labels, source, gen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(int(k), *r, gen) for k, r in zip(keys, rows, strict=True)],
            )
        return keys

    def remove(self, item_ids: Sequence[str]) -> int:
        """Remove items by item id (unknown ids are ignored); returns how many were removed."""
        self._require_writable()
        keys = list(self.keys_of(item_ids).values())
        if not keys:
            return 0
        self.index.remove_ids(np.array(keys, np.int64))
        with self._change() as gen:
            self._db.executemany("UPDATE items SET removed_gen = ? WHERE key = ?", [(gen, k) for k in keys])
        return len(keys)

    def _require_writable(self) -> None:
        if not self.writable:
            raise MCMFHError(f"index {self.folder}: opened read-only (use ItemIndex.open(..., writable=True))")

    @contextlib.contextmanager
    def _change(self, **fields: Any) -> Iterator[int]:
        """One committed change to the in-memory index, in three durable steps (see the module docstring):
        write this generation's arrays, run the caller's SQL in a transaction, then rename the manifest in.
        Any failure restores the in-memory index from the last committed generation."""
        gen = self.generation + 1
        try:
            files = self._write_arrays(gen)
            self._db.execute("BEGIN IMMEDIATE")
            yield gen
            self._db.execute("COMMIT")
            self._write_manifest({**self.manifest, **files, **fields, "generation": gen, "count": len(self.index)})
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self.index = self._load_index(verify=False)
            raise
        self._cleanup()

    def _write_arrays(self, gen: int) -> dict[str, Any]:
        return _files.write_arrays(self.folder, {"codes": self.index.codes, "keys": self.index.ids}, suffix=f"-{gen}")

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        """The commit point: once the manifest names the new generation, the change is in."""
        atomic_write_json(self.folder / MANIFEST_NAME, manifest)
        self.manifest = manifest

    def _load_index(self, verify: bool) -> HammingIndex:
        return load_index(self.folder, self.manifest, verify)

    def _recover(self) -> None:
        """Undo what an interrupted change left: rows of later generations, removal marks, stray files."""
        gen = self.generation
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM items WHERE gen > ?", (gen,))
        self._db.execute("UPDATE items SET removed_gen = NULL WHERE removed_gen > ?", (gen,))
        self._db.execute("COMMIT")
        self._cleanup()

    def _cleanup(self) -> None:
        gen = self.generation
        self._db.execute("DELETE FROM items WHERE removed_gen <= ?", (gen,))
        keep = {entry["file"] for entry in self.manifest["files"].values()}
        for path in self.folder.iterdir():
            stray_array = path.suffix == ".npy" and path.name not in keep
            stray_temp = path.name.startswith(".") and path.name.endswith(".tmp")
            if (stray_array or stray_temp) and path.is_file():
                path.unlink()

    # ------------------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ItemIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
