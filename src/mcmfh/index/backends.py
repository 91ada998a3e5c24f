"""Where an archive's sub-indexes keep their codes and item metadata: one ``ItemStore`` contract, two kinds.

``local`` (the default) is ``ItemIndex`` (``mcmfh.index.local_store``): codes and SQLite metadata in the archive folder,
crash-safe by generations. ``milvus`` is ``ServerStore`` (``mcmfh.index.server_store``): codes in a Milvus
collection, metadata in SQLite in the archive folder or in PostgreSQL. ``Archive`` only sees ``ItemStore``
(``mcmfh.index.store``): this module picks and opens the implementation.

The archive manifest records the store (``store_manifest``) without secrets: a URI's user:password and a DSN's
password are stripped. On open, the Milvus token comes from ``MCMFH_MILVUS_TOKEN`` and the PostgreSQL DSN from
``MCMFH_POSTGRES_DSN`` when set (otherwise the recorded DSN, with libpq's ``PGPASSWORD`` / ``~/.pgpass``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.index.local_store import ItemIndex
from mcmfh.index.server_store import DSN_ENV, ServerStore, redact_dsn, split_uri
from mcmfh.index.store import ItemStore

BACKENDS = ("local", "milvus")
METADATA = ("sqlite", "postgres")


@dataclass(frozen=True)
class StoreConfig:
    """The CLI's ``--backend/--uri/--metadata/--dsn``: where a new archive keeps its sub-indexes."""

    backend: str = "local"
    uri: str | None = None
    metadata: str = "sqlite"
    dsn: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise MCMFHError(f"--backend: expected one of {BACKENDS}, got {self.backend!r}")
        if self.metadata not in METADATA:
            raise MCMFHError(f"--metadata: expected one of {METADATA}, got {self.metadata!r}")
        if self.backend == "local" and (self.uri or self.metadata != "sqlite"):
            raise MCMFHError("--uri and --metadata postgres need --backend milvus (local keeps everything in SQLite)")
        if self.metadata == "postgres" and not (self.dsn or os.environ.get(DSN_ENV)):
            raise MCMFHError(f"--metadata postgres needs --dsn or the {DSN_ENV} environment variable")


def store_manifest(config: StoreConfig, run_id: str) -> dict[str, Any]:
    """The manifest's ``store`` entry: backend, secret-free URI/DSN, and per-modality collection/schema names."""
    if config.backend == "local":
        return {"backend": "local"}
    from mcmfh.index.milvus import DEFAULT_URI

    names = {m: f"mcmfh_{run_id}_{m}" for m in ("images", "texts")}  # run_id is hex: valid names in both
    out: dict[str, Any] = {"backend": "milvus", "uri": split_uri(config.uri or DEFAULT_URI)[0], "collections": names}
    out["metadata"] = config.metadata
    if config.metadata == "postgres":
        out["dsn"], out["schemas"] = redact_dsn(config.dsn or os.environ[DSN_ENV]), names
    return out


# ---------------------------------------------------------------------------------------------------- open / create
def create_store(
    folder: Path, modality: str, bits: int, store: Mapping[str, Any], config: StoreConfig, fields: dict[str, Any]
) -> ItemStore:
    """A new, empty sub-index; a server collection or schema that already holds items is refused."""
    if store["backend"] == "local":
        return ItemIndex.create(folder, bits, **fields)
    uri = config.uri or store["uri"]
    dsn = config.dsn or os.environ.get(DSN_ENV)
    # Read-only until checked: a writer would reconcile, i.e. delete codes another archive's metadata describes.
    made = ServerStore.connect(folder, modality, bits, store, writable=False, uri=uri, dsn=dsn, create=True)
    if len(made.codes) or len(made.meta):
        where = f"collection {made.codes.collection_name!r} at {store['uri']}"
        made.close()
        raise MCMFHError(f"{where} already holds items (an archive of this run exists); use --overwrite to replace it")
    made.writable = True
    return made


def open_store(folder: Path, modality: str, bits: int, store: Mapping[str, Any], expect: dict[str, Any],
               writable: bool, lock_timeout: float | None = None,
               at: Mapping[str, Any] | None = None) -> ItemStore:  # fmt: skip
    """Open a sub-index; ``at`` pins a local one to the manifest snapshot of the archive's commit record."""
    backend = store.get("backend", "local")
    if backend == "local":
        return ItemIndex.open(folder, expect=expect, writable=writable, lock_timeout=lock_timeout, at=at)
    if backend != "milvus":
        raise ArtefactError(f"{folder.parent}/manifest.json: unknown store backend {backend!r}")
    return ServerStore.connect(folder, modality, bits, store, writable=writable)


def drop_store(store: ItemStore) -> None:
    """Delete what a server store holds on its servers (used when a build fails or is overwritten)."""
    store.drop()
    store.close()
