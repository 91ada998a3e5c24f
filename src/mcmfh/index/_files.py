"""Checked .npy arrays: each write is atomic and recorded with its byte size and SHA-256, each read verifies both,
so a truncated or altered file is an ArtefactError instead of a wrong search result."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.errors import ArtefactError
from mcmfh.io import atomic_write_bytes

_HASH_CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_arrays(folder: Path, arrays: Mapping[str, np.ndarray], suffix: str = "") -> dict[str, Any]:
    """Write ``name{suffix}.npy`` per array (temp + rename each); returns {"files": {name: {file, bytes, sha256}}}."""
    files: dict[str, Any] = {}
    for name, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        data = buf.getvalue()
        fname = f"{name}{suffix}.npy"
        atomic_write_bytes(Path(folder) / fname, data)
        files[name] = {"file": fname, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return {"files": files}


def read_arrays(
    folder: Path,
    meta: Mapping[str, Any],
    row_shapes: Mapping[str, tuple[int, ...]],
    count: int,
    verify: bool = True,
    mmap: bool = True,
) -> dict[str, np.ndarray]:
    """Load the arrays listed in ``meta["files"]``, checking size, checksum (if ``verify``), shape and row count."""
    out: dict[str, np.ndarray] = {}
    files = meta.get("files", {})
    for name, row_shape in row_shapes.items():
        if name not in files:
            raise ArtefactError(f"{folder}: metadata lists no {name!r} file")
        entry = files[name]
        path = Path(folder) / entry["file"]
        if not path.is_file():
            raise ArtefactError(f"{path}: missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ArtefactError(f"{path}: {size} bytes, expected {entry['bytes']} (truncated or replaced?)")
        if verify and sha256_file(path) != entry["sha256"]:
            raise ArtefactError(f"{path}: checksum mismatch (file corrupted or replaced)")
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ArtefactError(f"{path}: unreadable .npy ({e})") from e
        if arr.shape != (count, *row_shape):
            raise ArtefactError(f"{path}: shape {arr.shape}, expected {(count, *row_shape)} from the metadata")
        out[name] = arr
    return out
