"""``ServerStore``: an archive sub-index with its codes in Milvus and its item metadata in SQLite or PostgreSQL.

Codes (``MilvusIndex``, exact, ties in insertion order) and metadata then live in two systems without a shared
transaction, so ``ServerStore`` keeps one invariant: the keys in Milvus are a superset of the keys with metadata,
and equal once a change completes. An add writes the codes first, then commits the metadata (the commit point); a
remove commits the metadata deletion first, then deletes the codes. A process killed mid-change leaves extra codes
without metadata: readers ask Milvus for that many more candidates and drop them (so results stay exact), and the
next writer deletes them. An item counts as present only once its metadata is committed, so rerunning an
interrupted add completes it. PostgreSQL metadata lives in one schema per sub-index (``PostgresItemStore``, codes
kept as ``bit(n)`` as well for SQL audits).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.index.columns import item_row
from mcmfh.index.item_table import DB_NAME, SqliteItemTable
from mcmfh.index.store import Capabilities, Rescore, StoreInfo, search_store
from mcmfh.items import Hit, Item

TOKEN_ENV = "MCMFH_MILVUS_TOKEN"
DSN_ENV = "MCMFH_POSTGRES_DSN"


def split_uri(uri: str) -> tuple[str, str | None]:
    """``http://user:pw@host:port`` -> (``http://host:port``, ``"user:pw"``): the token never reaches a manifest."""
    parts = urlsplit(uri)
    if parts.username is None:
        return uri, None
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    token = parts.username + (f":{parts.password}" if parts.password is not None else "")
    return urlunsplit(parts._replace(netloc=netloc)), token


def redact_dsn(dsn: str) -> str:
    """A DSN without its password, keyword (``password=...``) or URL (``postgresql://u:pw@h/db``) form."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    return " ".join(p for p in dsn.split() if not p.startswith("password="))


# ---------------------------------------------------------------------------------------------------- metadata
class MetadataStore(Protocol):
    """Item metadata beside codes kept elsewhere: ``SqliteMeta`` (a file in the archive) and ``PostgresMeta``."""

    def reserve_keys(self, n: int) -> np.ndarray: ...
    def add(self, codes: np.ndarray, items: Sequence[Item], keys: np.ndarray) -> None: ...
    def remove(self, item_ids: Sequence[str]) -> np.ndarray: ...
    def keys_of(self, item_ids: Sequence[str]) -> dict[str, int]: ...
    def lookup(self, keys: Sequence[int] | np.ndarray) -> dict[int, Item]: ...
    def members(self, study_ids: Sequence[str]) -> dict[str, list[Item]]: ...
    def all_keys(self) -> np.ndarray: ...
    def max_key(self) -> int: ...
    def __len__(self) -> int: ...
    def writer_lock(self, timeout: float, what: str) -> contextlib.AbstractContextManager[None]: ...
    def drop(self) -> None: ...
    def close(self) -> None: ...


class SqliteMeta:
    """Item metadata in the folder's ``items.sqlite`` (``mcmfh.index.item_table``, live layout): the codes are on
    the server."""

    def __init__(self, path: Path, create: bool) -> None:
        self.table = SqliteItemTable(path, generations=False, create=create)

    def reserve_keys(self, n: int) -> np.ndarray:
        """Fresh keys, never reused, so a code left on the server by a killed add cannot alias a new item."""
        return self.table.reserve_keys(n)

    def add(self, codes: np.ndarray, items: Sequence[Item], keys: np.ndarray) -> None:
        self.table.insert(keys, [item_row(i, it) for i, it in enumerate(items)])  # the commit point of an add

    def remove(self, item_ids: Sequence[str]) -> np.ndarray:
        return self.table.delete(item_ids)

    def keys_of(self, item_ids: Sequence[str]) -> dict[str, int]:
        return self.table.keys_of(item_ids)

    def lookup(self, keys: Sequence[int] | np.ndarray) -> dict[int, Item]:
        return self.table.lookup(keys)

    def members(self, study_ids: Sequence[str]) -> dict[str, list[Item]]:
        return self.table.members(study_ids)

    def all_keys(self) -> np.ndarray:
        return self.table.all_keys()

    def max_key(self) -> int:
        return self.table.max_key()

    def __len__(self) -> int:
        return len(self.table)

    def writer_lock(self, timeout: float, what: str) -> contextlib.AbstractContextManager[None]:
        """Nothing beyond the archive's folder lock: the file lives in that folder."""
        return contextlib.nullcontext()

    def drop(self) -> None:
        """The file goes with the archive folder; nothing on a server."""

    def close(self) -> None:
        self.table.close()


class PostgresMeta:
    """Item metadata (and codes as ``bit(n)``) in PostgreSQL, one schema per sub-index."""

    def __init__(self, dsn: str, bits: int, schema: str) -> None:
        from mcmfh.index.postgres import PostgresItemStore

        self.store = PostgresItemStore(dsn, bits, schema=schema)

    def reserve_keys(self, n: int) -> np.ndarray:
        return self.store.reserve_keys(n)

    def add(self, codes: np.ndarray, items: Sequence[Item], keys: np.ndarray) -> None:
        self.store.add(codes, items, keys=keys)

    def remove(self, item_ids: Sequence[str]) -> np.ndarray:
        return self.store.remove(item_ids)

    def keys_of(self, item_ids: Sequence[str]) -> dict[str, int]:
        return self.store.keys_of(item_ids)

    def lookup(self, keys: Sequence[int] | np.ndarray) -> dict[int, Item]:
        return self.store.lookup(keys)

    def members(self, study_ids: Sequence[str]) -> dict[str, list[Item]]:
        return self.store.members(study_ids)

    def all_keys(self) -> np.ndarray:
        return self.store.all_keys()

    def max_key(self) -> int:
        return self.store.max_key()

    def __len__(self) -> int:
        return len(self.store)

    def writer_lock(self, timeout: float, what: str) -> contextlib.AbstractContextManager[None]:
        return self.store.writer_lock(timeout, what)

    def drop(self) -> None:
        self.store.drop()

    def close(self) -> None:
        self.store.close()


# ---------------------------------------------------------------------------------------------------- server store
class ServerStore:
    """Codes in Milvus, metadata in SQLite or PostgreSQL; see the module docstring for the add/remove order. A
    remote ``ItemStore`` (``mcmfh.index.store``): no payloads, no snapshots (nothing for a commit record to pin)."""

    capabilities = Capabilities(payloads=False, snapshots=False, remote=True)

    def __init__(self, codes: Any, meta: MetadataStore, writable: bool, where: str) -> None:
        self.codes, self.meta, self.writable, self.where = codes, meta, writable, where
        # Codes without metadata (a change was killed, or one is under way): ask Milvus for that many more.
        self._extra = max(0, len(codes) - len(meta))

    @classmethod
    def connect(cls, folder: Path, modality: str, bits: int, store: Mapping[str, Any], writable: bool,
                uri: str | None = None, dsn: str | None = None, create: bool = False) -> ServerStore:  # fmt: skip
        from mcmfh.index.milvus import MilvusIndex

        try:
            name, kind = store["collections"][modality], store.get("metadata", "sqlite")
        except (KeyError, TypeError) as e:
            raise ArtefactError(f"{folder.parent}/manifest.json: store entry lacks {e}") from e
        uri, token = split_uri(uri or store["uri"])
        token = os.environ.get(TOKEN_ENV) or token
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        meta: MetadataStore
        if kind == "postgres":
            meta = PostgresMeta(dsn or os.environ.get(DSN_ENV) or store["dsn"], bits, store["schemas"][modality])
        else:
            meta = SqliteMeta(folder / DB_NAME, create=create)
        try:
            codes = MilvusIndex(bits, uri=uri, collection=name, token=token)
        except BaseException:
            meta.close()
            raise
        return cls(codes, meta, writable, f"{modality} codes in collection {name!r} at {uri}")

    def _reconcile(self) -> None:
        """Delete codes a killed change left without metadata (only after a crash: the counts differ). Runs at the
        start of every change, so under the archive's writer lock: a concurrent writer's codes, written just before
        its metadata commit, are never taken for a dead one's."""
        self.codes.refresh()  # its insertion counter may be stale: other processes add between our changes
        if len(self.codes) != len(self.meta):
            orphans = np.setdiff1d(self.codes.ids, self.meta.all_keys())
            self.codes.remove_ids(orphans)
        self._extra = 0

    def refresh(self, at: Mapping[str, Any] | None = None) -> bool:
        """Nothing is cached here but the orphan allowance, recomputed; returns False (state lives on servers, and
        ``at`` is never given: a server store has no snapshot)."""
        self._extra = max(0, len(self.codes) - len(self.meta))
        return False

    def snapshot(self) -> None:
        """None: a server store's committed state is on its servers (``capabilities.snapshots`` is False)."""
        return None

    def roll_back_to(self, snapshot: Mapping[str, Any]) -> bool:
        """Nothing to roll back: a killed change leaves only orphan codes, which the next change deletes."""
        return False

    def compact(self) -> bool:
        """Nothing to fold: the server manages its segments (False: nothing was compacted)."""
        return False

    def build_text_index(self) -> bool:
        """No text index on a server store yet (``capabilities.lexical`` is False): nothing is built."""
        return False

    def writer_lock(self, timeout: float, what: str) -> contextlib.AbstractContextManager[None]:
        """Held with the archive's file lock by every change: with metadata in PostgreSQL, writers on other
        machines (another copy of the archive folder) are serialised too."""
        return self.meta.writer_lock(timeout, what)

    def state_token(self) -> tuple[int, int]:
        """Changes with the item count (server stores have no local commit file to watch)."""
        return len(self.meta), self.meta.max_key()

    def __len__(self) -> int:
        return len(self.meta)

    def add(self, codes: np.ndarray, items: Sequence[Item], payload: np.ndarray | None = None,
            replace: Sequence[str] = ()) -> np.ndarray:  # fmt: skip
        """Add new items with their packed codes (ids must be new); codes first, then the metadata commit.
        ``payload`` and ``replace`` are refused: a server store keeps neither payloads nor studies."""
        if payload is not None or replace:
            raise MCMFHError(f"{self.where}: a server store keeps no payloads and replaces no items")
        self._require_writable()
        codes = np.asarray(codes)
        rows = [item_row(i, it) for i, it in enumerate(items)]  # validate before anything is written
        if codes.ndim != 2 or len(codes) != len(rows):
            raise MCMFHError(f"archive add: {len(rows)} items but codes of shape {codes.shape}")
        ids = [r[0] for r in rows]
        if len(set(ids)) != len(ids):
            raise MCMFHError("archive add: item ids repeat within the batch")
        present = self.meta.keys_of(ids)
        if present:
            raise MCMFHError(f"archive add: item ids already in the index: {sorted(present)[:5]}")
        if not rows:
            return np.zeros(0, np.int64)
        self._reconcile()
        keys = self.meta.reserve_keys(len(rows))
        self.codes.add(codes, keys)
        self.meta.add(codes, items, keys)
        return keys

    def flush(self) -> None:
        """Seal and index the inserted codes on the server (after a bulk add; searches are exact either way)."""
        self.codes.flush()

    def remove(self, item_ids: Sequence[str]) -> int:
        self._require_writable()
        self._reconcile()
        keys = self.meta.remove(item_ids)  # the commit point: the items are gone for readers from here
        if len(keys):
            self.codes.remove_ids(keys)
        return int(len(keys))

    def get(self, keys: Sequence[int] | np.ndarray) -> list[Item]:
        found = self.meta.lookup(keys)
        absent = [int(k) for k in keys if int(k) not in found]
        if absent:
            raise MCMFHError(f"{self.where}: no items with keys {absent[:5]}")
        return [found[int(k)] for k in keys]

    def keys_of(self, item_ids: Sequence[str]) -> dict[str, int]:
        return self.meta.keys_of(item_ids)

    def members(self, study_ids: Sequence[str]) -> dict[str, list[Item]]:
        """The items of each study (see ``ItemIndex.members``)."""
        return self.meta.members(study_ids)

    def item_ids(self, with_image: bool = False) -> set[str]:
        """The ids of every item (``with_image``: of those with an image path); O(N), for integrity checks."""
        items = self.meta.lookup(self.meta.all_keys()).values()
        return {it.id for it in items if not with_image or it.image is not None}

    def payloads(self, keys: Sequence[int] | np.ndarray, width: int) -> np.ndarray:
        raise MCMFHError(f"{self.where}: a server store keeps no payloads (two-stage search needs a local store)")

    def payload_rows(self, keys: Sequence[int] | np.ndarray, width: int) -> tuple[dict[int, Item], np.ndarray]:
        return {}, self.payloads(keys, width)

    def lexical(self, query: str, n: int) -> list[tuple[Item, float]]:
        raise MCMFHError(f"{self.where}: a server store keeps no text index (hybrid search needs a local store)")

    def lookup(self, keys: Sequence[int] | np.ndarray) -> dict[int, Item]:
        return self.meta.lookup(keys)

    def lookup_studies(self, keys: Sequence[int] | np.ndarray) -> tuple[dict[int, Item], dict[str, list[Item]]]:
        """The items among ``keys`` and every item of their studies: two queries on the metadata server."""
        items = self.meta.lookup(keys)
        return items, self.meta.members(list(dict.fromkeys(it.study_id or it.id for it in items.values())))

    def info(self) -> StoreInfo:
        return StoreInfo(segments=None, codes=None, sealed_from=None)

    def search(self, queries: np.ndarray, k: int = 10, rescore: Rescore | None = None,
               members: bool = False) -> list[list[Hit]]:  # fmt: skip
        """Top-k items per packed query, nearest first, ties in insertion order (as ``ItemIndex.search``); codes a
        killed change left without metadata are asked for on top and left out."""
        if rescore is not None:
            self.payloads([], 0)  # refused: no payloads to re-score with
        return search_store(self.codes, self, queries, k, spare=self._extra, strict=False, members=members)

    def drop(self) -> None:
        """Delete the collection and the PostgreSQL schema (the SQLite file goes with the folder)."""
        self.codes.drop()
        self.meta.drop()

    def _require_writable(self) -> None:
        if not self.writable:
            raise MCMFHError(f"{self.where}: opened read-only (Archive.open(..., writable=True))")

    def close(self) -> None:
        self.codes.close()
        self.meta.close()
