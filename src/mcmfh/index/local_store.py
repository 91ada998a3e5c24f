"""A persistent, crash-safe item index: codes + keys in append-only segments (.npy) + item metadata (SQLite).

Folder layout::

    manifest.json              kind "index": bits, index kind, generation, count, segments, removed, caller's fields
    codes-<gen>-<tag>.npy      packed uint8 (n, bits // 8): one segment, in insertion order
    keys-<gen>-<tag>.npy       int64 (n,) the segment's item keys, same order
    removed-<gen>-<tag>.npy    int64 keys removed since the last compaction (absent when there are none)
    items.sqlite               items(key, item_id, caption, image, labels, source, study_id, gen, removed_gen,
                               payload)
    .writer.lock               the writer lock (``mcmfh.locking``)

Adding k items writes one new segment of k rows (O(k), not a rewrite of everything); small trailing segments are
merged like a binary counter (``mcmfh.index.segments``) and ``compact`` folds everything into one segment. Search
over the segments is exact, in the same tie order as one index over all items.

Every change is one new generation, made under the folder's writer lock after re-reading the committed state:
new files (named by generation and a random tag, so no two writers' files can collide), then one SQLite
transaction that inserts the new rows tagged with that generation (or tags removed rows), then the manifest (temp
+ rename). The manifest rename is the commit point: readers only trust the generation it names and the rows visible
at that generation, so a process killed at any moment leaves the last committed index readable, and the next writer
rolls back what it left. Readers never lock: the files and rows of the previous generation are kept until the next
commit, and an open that races a commit retries on the new manifest.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.index import _files
from mcmfh.index.columns import item_row
from mcmfh.index.factory import default_kind, make_index
from mcmfh.index.item_table import DB_NAME, SqliteItemTable, create_table
from mcmfh.index.sealed import SEALED_FROM, sealed_from
from mcmfh.index.segments import SegmentedIndex, merge_plan
from mcmfh.index.store import Capabilities, Rescore, StoreInfo, search_store
from mcmfh.io import atomic_dir, atomic_write_json
from mcmfh.items import Hit, Item
from mcmfh.locking import writer_lock
from mcmfh.manifest import MANIFEST_NAME, new_manifest, read_manifest, require_match

KIND = "index"
FORMAT_VERSION = 2  # 2: segments + removed keys; 1 (one codes/keys pair under "files") is still read
READABLE_FORMATS = (1, 2)
OPEN_RETRIES = 5  # an open that races a commit re-reads the manifest this many times before giving up
# Manifest fields that describe the bookkeeping of the folder itself; anything else the caller passes
# (run, model, encoder, ...) is stored as given and can be required to match on open.
_OWN_FIELDS = ("kind", "format", "bits", "index_kind", "index_params", "generation", "count", "next_key", "files",
               "segments", "removed", SEALED_FROM)  # fmt: skip
# Files this module writes (and so may delete): generation files and atomic-write temps. Nothing else is touched.
_OURS = re.compile(r"^(codes|keys|removed)-\d+(-[0-9a-f]+)?\.npy$|^\.(codes|keys|removed|manifest).*\.tmp$")


def segments_of(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The manifest's segment list; a format-1 manifest's single codes/keys pair is one segment."""
    if "segments" in manifest:
        return list(manifest["segments"])
    files = manifest["files"]
    return [{"codes": files["codes"], "keys": files["keys"], "count": int(manifest["count"])}]


def _read_segment(folder: Path, seg: Mapping[str, Any], bits: int, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    meta = {"files": {"codes": seg["codes"], "keys": seg["keys"]}}
    arrays = _files.read_arrays(folder, meta, {"codes": (bits // 8,), "keys": ()}, int(seg["count"]), verify=verify)
    return np.asarray(arrays["codes"]), np.asarray(arrays["keys"])


def _read_removed(folder: Path, manifest: Mapping[str, Any], verify: bool) -> np.ndarray:
    entry = manifest.get("removed")
    if not entry:
        return np.zeros(0, np.int64)
    meta = {"files": {"removed": entry}}
    return np.asarray(_files.read_arrays(folder, meta, {"removed": ()}, int(entry["count"]), verify=verify)["removed"])


class ItemIndex:
    """Exact Hamming search over stored items. Create with ``ItemIndex.create``, reopen with ``ItemIndex.open``.
    The local ``ItemStore`` (``mcmfh.index.store``)."""

    capabilities = Capabilities(payloads=True, snapshots=True, remote=False, lexical=True)

    def __init__(self, folder: Path, manifest: dict[str, Any], writable: bool, verify: bool = True,
                 lock_timeout: float | None = None) -> None:  # fmt: skip
        self.folder = folder
        self.writable = writable
        self.lock_timeout = lock_timeout
        self.manifest: dict[str, Any] = {}
        self.index = SegmentedIndex(int(manifest["bits"]), self._make_segment_for(manifest))
        self._removed = np.zeros(0, np.int64)
        self.table = SqliteItemTable(folder / DB_NAME, generations=True)
        try:
            self._load(manifest, verify)
        except BaseException:
            self.table.close()
            raise

    @staticmethod
    def _make_segment_for(manifest: Mapping[str, Any]) -> Any:
        bits, kind, params = int(manifest["bits"]), manifest["index_kind"], dict(manifest.get("index_params", {}))
        return lambda: make_index(bits, kind, **params)

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
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            create_table(tmp / DB_NAME, generations=True)
            manifest = new_manifest(
                KIND,
                format=FORMAT_VERSION,
                bits=bits,
                index_kind=kind or default_kind(bits),
                index_params=index.params(),
                generation=0,
                count=0,
                next_key=0,
                segments=[],
                removed=None,
                **{SEALED_FROM: 0},  # every payload row carries a checksum (mcmfh.index.sealed)
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
        lock_timeout: float | None = None,
        at: Mapping[str, Any] | None = None,
    ) -> ItemIndex:
        """Open an index folder; every key of ``expect`` (e.g. {"run": ..., "bits": 64}) must match the manifest.

        ``verify`` checks the SHA-256 of the code files (a few ms per million 64-bit codes). A truncated, corrupt
        or inconsistent folder raises ArtefactError. Opening never locks: a ``writable`` index takes the writer lock
        for each change (waiting up to ``lock_timeout`` seconds, see ``mcmfh.locking``). ``at`` opens the state a
        manifest snapshot names instead of the newest (an archive's commit record pins its sub-indexes this way;
        the committed and the previous generation are readable)."""
        folder = Path(folder)
        if at is not None:
            return cls._open_at(folder, dict(at), expect, writable, verify, lock_timeout)
        for attempt in range(OPEN_RETRIES + 1):
            manifest = read_manifest(folder, KIND)
            try:
                return cls._open_at(folder, manifest, expect, writable, verify, lock_timeout)
            except ArtefactError:
                # A commit between reading the manifest and reading its files is not damage: retry on the new one.
                if attempt == OPEN_RETRIES or read_manifest(folder, KIND) == manifest:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _open_at(cls, folder: Path, manifest: dict[str, Any], expect: Mapping[str, Any] | None, writable: bool,
                 verify: bool, lock_timeout: float | None) -> ItemIndex:  # fmt: skip
        if expect:
            require_match(expect, manifest, list(expect), f"index {folder}")
        fmt = manifest.get("format")
        if fmt not in READABLE_FORMATS:
            raise ArtefactError(f"{folder}: index format {fmt}, this mcmfh reads {list(READABLE_FORMATS)}")
        needed = ("bits", "index_kind", "generation", "count", "segments" if fmt == 2 else "files")
        missing = [k for k in needed if k not in manifest]
        if missing:
            raise ArtefactError(f"{folder / MANIFEST_NAME}: missing fields {missing}")
        if not (folder / DB_NAME).is_file():
            raise ArtefactError(f"{folder / DB_NAME}: missing")
        return cls(folder, manifest, writable, verify, lock_timeout)

    def _load(self, manifest: dict[str, Any], verify: bool) -> None:
        """Make the in-memory index the committed state ``manifest`` names (only new segments are read when the
        known ones are unchanged), and check it against the rows visible at that generation."""
        new = segments_of(manifest)
        old = segments_of(self.manifest) if self.manifest else []
        if len(old) != len(self.index.segments):  # memory no longer mirrors the files: start over
            old = []
        keep = 0  # segments both states share (a later merge or a compaction replaces the ones after them)
        while keep < min(len(old), len(new)) and old[keep] == new[keep]:
            keep += 1
        self.index.truncate(keep)
        removed = _read_removed(self.folder, manifest, verify)
        fresh = np.setdiff1d(removed, self._removed) if keep else np.zeros(0, np.int64)
        if len(fresh):
            self.index.remove_ids(fresh)
        for seg in new[keep:]:
            codes, keys = _read_segment(self.folder, seg, int(manifest["bits"]), verify)
            alive = ~np.isin(keys, removed) if len(removed) else slice(None)
            self.index.add_segment(codes[alive], keys[alive])
        self._removed = removed
        self.manifest = manifest
        self.table.generation, self.table.sealed_from = int(manifest["generation"]), sealed_from(manifest)
        self.table.forget_columns()  # a writer in another process may have added a column since
        n_rows = len(self.table)
        if len(self.index) != manifest["count"] or n_rows != manifest["count"]:
            raise ArtefactError(f"{self.folder}: {n_rows} items in {DB_NAME} and {len(self.index)} codes, but "
                                f"{manifest['count']} in the manifest")  # fmt: skip

    def refresh(self, at: Mapping[str, Any] | None = None) -> bool:
        """Catch up with the last committed state (e.g. another process's add); returns whether it changed.

        Reads only the segments that are new. If the files move on again mid-read (two commits in between), it
        reloads from the newest manifest; if that keeps failing, the error is raised and the next call starts over.
        ``at``: move to the state this manifest snapshot names instead (no retry: the caller owns the snapshot).
        """
        if at is not None:
            if dict(at) == self.manifest:
                return False
            try:
                self._load(dict(at), verify=True)
            except ArtefactError:
                self.manifest = {}
                raise
            return True
        for attempt in range(OPEN_RETRIES + 1):
            manifest = read_manifest(self.folder, KIND)
            if manifest == self.manifest:
                return False
            try:
                self._load(manifest, verify=True)
                return True
            except ArtefactError:
                self.manifest = {}  # the in-memory index may be half-updated: the next try loads it whole
                if attempt == OPEN_RETRIES:
                    raise
        raise AssertionError("unreachable")

    def state_token(self) -> tuple[int, int, int]:
        """Changes whenever a change is committed (the manifest is replaced by a rename): cheap to poll."""
        st = (self.folder / MANIFEST_NAME).stat()
        return st.st_ino, st.st_mtime_ns, st.st_size

    # ------------------------------------------------------------------------------------------ reading
    @property
    def bits(self) -> int:
        return int(self.manifest["bits"])

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, keys: Sequence[int] | np.ndarray) -> dict[int, Item]:
        """The items among ``keys`` (unknown keys are left out)."""
        return self.table.lookup(keys)

    def lookup_studies(self, keys: Sequence[int] | np.ndarray) -> tuple[dict[int, Item], dict[str, list[Item]]]:
        """The items among ``keys`` and every item of their studies, in one query."""
        return self.table.lookup_studies(keys)

    def get(self, keys: Sequence[int] | np.ndarray) -> list[Item]:
        """Items by key, in the given order; unknown keys raise MCMFHError."""
        return self.table.get(keys)

    def payload_rows(self, keys: Sequence[int] | np.ndarray, width: int) -> tuple[dict[int, Item], np.ndarray]:
        """The items of ``keys`` and their payload rows, in one query (two-stage search)."""
        return self.table.payload_rows(keys, width)

    def payloads(self, keys: Sequence[int] | np.ndarray, width: int) -> np.ndarray:
        """The stored payload rows of ``keys`` as (len(keys), width) uint8, in the given order; a key without a
        payload of that width (added without one, or unknown) raises MCMFHError, a damaged one ArtefactError."""
        return self.table.payloads(keys, width)

    def members(self, study_ids: Sequence[str]) -> dict[str, list[Item]]:
        """The items of each of ``study_ids`` (by ``Item.study_id``, or its own id for an item of no study), in key
        order; a study with no item here is left out."""
        return self.table.members(study_ids)

    def keys_of(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Keys of the given item ids that are in the index."""
        return self.table.keys_of(item_ids)

    def item_ids(self, with_image: bool = False) -> set[str]:
        """The ids of every item (``with_image``: of those that have an image path); O(N), for integrity checks."""
        return self.table.item_ids(with_image)

    def search(self, queries: np.ndarray, k: int = 10, rescore: Rescore | None = None,
               members: bool = False) -> list[list[Hit]]:  # fmt: skip
        """Top-k items per packed query code, nearest first (ties: earlier added first); ``rescore``: two-stage,
        re-scored by the stored payloads; ``members``: hits carry their studies' other items
        (``mcmfh.index.store.search_store``)."""
        return search_store(self.index, self, queries, k, rescore, members=members)

    def lexical(self, query: str, n: int) -> list[tuple[Item, float]]:
        """The ``n`` items whose text best matches ``query`` (BM25 over the text index, ``mcmfh.index.text_index``),
        best first, with their scores; the committed state only."""
        return self.table.lexical(query, n)

    def build_text_index(self) -> bool:
        """Give an index made before text search its text index, under the writer lock; False when it has one."""
        had = self.table.has_text_index()
        with self._writing():  # its recovery upgrades the table, which builds the text index, under the lock
            pass
        return not had

    def info(self) -> StoreInfo:
        return StoreInfo(len(self.index.segments), self.index.codes, sealed_from(self.manifest), self.index.ids)

    def snapshot(self) -> dict[str, Any]:
        """The committed state (this folder's manifest) an archive's commit record pins."""
        return self.manifest

    def __iter__(self) -> Iterator[Item]:
        return iter(self.table)

    # ------------------------------------------------------------------------------------------ writing
    def add(
        self,
        codes: np.ndarray,
        items: Sequence[Item],
        payload: np.ndarray | None = None,
        replace: Sequence[str] = (),
    ) -> np.ndarray:
        """Add items (``mcmfh.items.Item``: id, text, image, labels, source, study_id) with their packed codes;
        returns their keys.

        ``payload``: optional (n, B) uint8 rows stored with the items, for two-stage search (``payloads``). Item ids
        must be new to the index, or be among ``replace``: ids removed in the same generation (a re-coded study:
        one commit, so a reader sees the old rows or the new ones). The change is committed atomically before this
        returns; it costs O(len(items)) plus an occasional merge of small segments."""
        rows = [item_row(i, it) for i, it in enumerate(items)]
        codes = np.asarray(codes)
        if codes.ndim != 2 or len(codes) != len(rows):
            raise MCMFHError(f"index add: {len(rows)} items but codes of shape {codes.shape}")
        if payload is not None:
            payload = np.ascontiguousarray(payload, dtype=np.uint8)
            if payload.ndim != 2 or len(payload) != len(rows):
                raise MCMFHError(f"index add: {len(rows)} items but payload of shape {payload.shape}")
        item_ids = [r[0] for r in rows]
        if len(set(item_ids)) != len(item_ids):
            raise MCMFHError("index add: item ids repeat within the batch")
        with self._writing():
            gone = self.keys_of(list(replace))
            present = {i: k for i, k in self.keys_of(item_ids).items() if i not in gone}
            if present:
                raise MCMFHError(f"index add: item ids already in the index: {sorted(present)[:5]}")
            if not rows and not gone:
                return np.zeros(0, np.int64)
            start = int(self.manifest.get("next_key", 0))
            keys = np.arange(start, start + len(rows), dtype=np.int64)
            gen, tag = self.generation + 1, secrets.token_hex(4)
            with self._change(gen, tag) as fields:
                if sealed_from(self.manifest) is None:  # an index made before seals: rows from here on get them
                    fields[SEALED_FROM] = start
                if gone:
                    self._mark_removed(np.array(sorted(gone.values()), np.int64), gen, tag, fields)
                if not rows:
                    return keys
                self.index.add_segment(codes, keys)  # validates the codes' width before anything is written
                segments = [*segments_of(self.manifest), self._write_segment(codes, keys, gen, tag)]
                n_merge = merge_plan([int(sg["count"]) for sg in segments])
                if n_merge:
                    merged = self.index.merge_tail(n_merge)
                    segments[-n_merge:] = [self._write_segment(merged.codes, merged.ids, gen, tag + "m")]
                fields.update(segments=segments, next_key=start + len(rows))
                self.table.insert(keys, rows, gen, payload)
        return keys

    def remove(self, item_ids: Sequence[str]) -> int:
        """Remove items by item id (unknown ids are ignored); returns how many were removed."""
        with self._writing():
            keys = np.array(sorted(self.keys_of(item_ids).values()), np.int64)
            if not len(keys):
                return 0
            gen, tag = self.generation + 1, secrets.token_hex(4)
            with self._change(gen, tag) as fields:
                self._mark_removed(keys, gen, tag, fields)
        return len(keys)

    def _mark_removed(self, keys: np.ndarray, gen: int, tag: str, fields: dict[str, Any]) -> None:
        """Inside ``_change``: drop ``keys`` from memory, write the removed-keys file, tag their rows."""
        self.index.remove_ids(keys)
        removed = np.union1d(self._removed, keys)
        entry = _files.write_arrays(self.folder, {"removed": removed}, suffix=f"-{gen}-{tag}")["files"]
        fields["removed"] = {**entry["removed"], "count": len(removed)}
        self.table.mark_removed(keys, gen)
        self._removed = removed

    def compact(self) -> bool:
        """Fold every segment into one and forget removed keys (O(N), under the lock); False if already compact."""
        with self._writing():
            if len(segments_of(self.manifest)) <= 1 and not self.manifest.get("removed"):
                return False
            gen, tag = self.generation + 1, secrets.token_hex(4)
            with self._change(gen, tag) as fields:
                codes, keys = self.index.codes, self.index.ids
                self.index = SegmentedIndex(self.bits, self._make_segment_for(self.manifest))
                self.index.add_segment(codes, keys)
                fields.update(segments=[self._write_segment(codes, keys, gen, tag)], removed=None)
                self._removed = np.zeros(0, np.int64)
        return True

    def flush(self) -> None:
        """Nothing to seal: every add is committed to the folder before it returns."""

    def writer_lock(self, timeout: float, what: str) -> contextlib.AbstractContextManager[None]:
        """Nothing beyond the lock of this folder, which every change takes itself."""
        return contextlib.nullcontext()

    def drop(self) -> None:
        """The files go with the archive folder; nothing is kept elsewhere."""

    def roll_back_to(self, snapshot: Mapping[str, Any]) -> bool:
        """Make ``snapshot`` (this generation or the previous one) the committed state again, under the lock.

        An archive commits its two sub-indexes one after the other and then its own record; a writer killed in
        between left one sub-index a generation ahead of the record. Its rows, marks and files are undone exactly
        as after a crash (``_recover``). Returns whether anything was rolled back."""
        self._require_writable()
        snapshot = dict(snapshot)
        with writer_lock(self.folder, self.lock_timeout, what=f"index {self.folder}"):
            if read_manifest(self.folder, KIND) == snapshot:
                return False
            atomic_write_json(self.folder / MANIFEST_NAME, snapshot)
            self.manifest = {}
            self._load(snapshot, verify=True)
            self._recover()
        return True

    def _write_segment(self, codes: np.ndarray, keys: np.ndarray, gen: int, tag: str) -> dict[str, Any]:
        files = _files.write_arrays(self.folder, {"codes": codes, "keys": keys}, suffix=f"-{gen}-{tag}")["files"]
        return {"codes": files["codes"], "keys": files["keys"], "count": len(keys)}

    def _require_writable(self) -> None:
        if not self.writable:
            raise MCMFHError(f"index {self.folder}: opened read-only (use ItemIndex.open(..., writable=True))")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the writer lock, catch up with what other writers committed, and roll back what a killed one left."""
        self._require_writable()
        with writer_lock(self.folder, self.lock_timeout, what=f"index {self.folder}"):
            self.refresh()
            self._recover()
            yield

    @contextlib.contextmanager
    def _change(self, gen: int, tag: str) -> Iterator[dict[str, Any]]:
        """One committed change (see the module docstring): the caller updates the in-memory index, writes its
        files (named ``-<gen>-<tag>``), runs its SQL and fills the manifest fields to change; then the SQL commits
        and the manifest is renamed in. Any failure rolls all of it back to the last committed generation."""
        fields: dict[str, Any] = {}
        committed = self.manifest
        try:
            self.table.begin()
            yield fields
            self.table.commit(gen)  # also forgets rows removed before the previous generation (files: _cleanup)
            manifest = {**committed, **fields, "format": FORMAT_VERSION, "generation": gen, "count": len(self.index)}
            manifest.pop("files", None)  # a format-1 folder becomes format 2 on its first change
            manifest.setdefault("segments", segments_of(committed))
            atomic_write_json(self.folder / MANIFEST_NAME, manifest)  # the commit point
        except BaseException:
            self.table.rollback()
            self.manifest = {}
            self._load(read_manifest(self.folder, KIND), verify=False)
            for path in self.folder.glob(f"*-{gen}-{tag}*.npy"):
                path.unlink(missing_ok=True)
            raise
        previous, self.manifest = committed, manifest
        self.table.generation, self.table.sealed_from = gen, sealed_from(manifest)
        self._cleanup(previous)

    def _recover(self) -> None:
        """Undo what an interrupted change left: rows of later generations, removal marks, stray files."""
        self.table.upgrade()  # folders made before the removal index / payloads / studies get them
        self.table.undo_after(self.generation, int(self.manifest.get("next_key", 0)))
        self._cleanup(self.manifest)

    def _cleanup(self, previous: Mapping[str, Any]) -> None:
        """Delete our files that neither the committed nor the previous generation uses: a reader that opened the
        previous generation a moment ago can still read it."""
        keep: set[str] = set()
        for m in (self.manifest, previous):
            if not m:
                continue
            for seg in segments_of(m):
                keep.update((seg["codes"]["file"], seg["keys"]["file"]))
            if m.get("removed"):
                keep.add(m["removed"]["file"])
        for path in self.folder.iterdir():
            if _OURS.match(path.name) and path.name not in keep and path.is_file():
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self.table.close()

    def __enter__(self) -> ItemIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
