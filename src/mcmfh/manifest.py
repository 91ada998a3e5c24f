"""Manifests: every artefact (feature cache, checkpoint, index) says what made it, and mixing is refused."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mcmfh import __version__
from mcmfh.errors import ArtefactError

MANIFEST_NAME = "manifest.json"


def new_manifest(kind: str, **fields: Any) -> dict[str, Any]:
    """A manifest of ``kind`` ("features", "run", "index", ...) stamped with the package version."""
    return {
        "kind": kind,
        "mcmfh_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        **fields,
    }


def read_manifest(folder: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read ``folder/manifest.json``; a missing or unreadable one means the artefact is incomplete."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ArtefactError(f"{path}: missing; {folder} is not a finished mcmfh artefact (interrupted write?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{path}: unreadable manifest ({e})") from e
    if kind is not None and manifest.get("kind") != kind:
        raise ArtefactError(f"{path}: expected a {kind!r} artefact, found {manifest.get('kind')!r}")
    return manifest


def require_match(expected: Mapping[str, Any], found: Mapping[str, Any], keys: Iterable[str], what: str) -> None:
    """Refuse to combine artefacts whose ``keys`` differ (e.g. features of another encoder)."""
    diffs = [f"{k}: {expected.get(k)!r} != {found.get(k)!r}" for k in keys if expected.get(k) != found.get(k)]
    if diffs:
        raise ArtefactError(f"{what}: incompatible artefacts ({'; '.join(diffs)})")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (configs, file lists, sizes and mtimes)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def source_digest(root: Path = Path(__file__).resolve().parent) -> str:
    """A short hash of the Python source under ``root`` (relative paths and bytes of every module; by default this
    package). The version string stays the same across commits; two results with one digest were computed by the same
    code, so a cache of results (``benchmarks/robustness.py``'s rows) can tell which ones an edit of the training code
    has made stale. Read once per process: an edit made while it runs is not seen."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode("utf-8"))
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]
