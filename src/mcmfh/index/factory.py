"""Pick and construct an index by name, like FAISS ``index_factory``; ``write_index`` / ``read_index`` to files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.index import _files
from mcmfh.index.base import INDEX_META, CodesIndex, HammingIndex
from mcmfh.index.bucket import BucketIndex
from mcmfh.index.flat import FlatIndex
from mcmfh.index.mih import MIHIndex

INDEX_KINDS: dict[str, type[HammingIndex]] = {"flat": FlatIndex, "bucket": BucketIndex, "mih": MIHIndex}
BUCKET_MAX_AUTO_BITS = 16  # up to 65,536 buckets: the table fits in L2 and a query never scans items


def default_kind(bits: int) -> str:
    """Bucket index up to 16 bits, multi-index hashing above."""
    return "bucket" if bits <= BUCKET_MAX_AUTO_BITS else "mih"


# Indexes that live on a server (their codes are not in this process); imported on demand, they need mcmfh[scale].
SERVER_KINDS = ("milvus",)


def make_index(bits: int, kind: str | None = None, **params: Any) -> CodesIndex:
    """An empty index for ``bits``-bit codes; ``kind`` in {"flat", "bucket", "mih"} or None for the default.

    ``kind="milvus"`` (params: uri, collection, index_type, ...) opens or creates a Milvus collection instead."""
    kind = kind or default_kind(bits)
    if kind in SERVER_KINDS:
        return open_backend(kind, bits, **params)
    if kind not in INDEX_KINDS:
        raise MCMFHError(f"index: unknown kind {kind!r}; expected one of {sorted(INDEX_KINDS) + list(SERVER_KINDS)}")
    return INDEX_KINDS[kind](bits, **params)


def open_backend(kind: str | None, bits: int, uri: str | None = None, **params: Any) -> CodesIndex:
    """The index for a CLI ``--backend``: a local kind (flat/bucket/mih/None = default, empty, ``uri`` must be None)
    or "milvus" at ``uri`` (``collection=`` names the collection; an existing one is reopened with its codes)."""
    if kind == "milvus":
        from mcmfh.index.milvus import DEFAULT_URI, MilvusIndex

        return MilvusIndex(bits, uri=uri or DEFAULT_URI, **params)
    if uri is not None:
        raise MCMFHError(f"index: --uri applies to the {'/'.join(SERVER_KINDS)} backend, not {kind or 'local'!r}")
    return make_index(bits, kind, **params)


def write_index(index: CodesIndex, path: str | Path) -> None:
    """Write ``index`` as a folder (codes, ids, ``index.json`` with kind, params and checksums), atomically."""
    index.write(path)


def read_index(path: str | Path, kind: str | None = None) -> CodesIndex:
    """Read a folder written by ``write_index`` (any local kind, or only ``kind``); size and checksum mismatches
    raise ArtefactError."""
    path = Path(path)
    meta_path = path / INDEX_META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{meta_path}: missing or unreadable index metadata ({e})") from e
    missing = [key for key in ("kind", "bits", "count", "files") if key not in meta]
    if missing:
        raise ArtefactError(f"{meta_path}: missing fields {missing}")
    if kind is not None and meta["kind"] != kind:
        raise ArtefactError(f"{path}: holds a {meta['kind']!r} index, not {kind!r}")
    arrays = _files.read_arrays(path, meta, {"codes": (meta["bits"] // 8,), "ids": ()}, meta["count"])
    index = make_index(meta["bits"], kind=meta["kind"], **meta.get("params", {}))
    index.add(arrays["codes"], arrays["ids"])
    return index
