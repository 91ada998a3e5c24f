"""The one rule for every command's ``--out``: never delete what we did not make.

An output path is accepted when it does not exist, is an empty folder, or is an mcmfh artefact of the same kind
(its ``manifest.json`` says ``kind``). A same-kind artefact is resumed by commands that resume (encode, experiment,
demo, prepare) and replaced only with ``--overwrite``; the replacement is built beside it and swapped in by
``io.atomic_dir``, so the old artefact stays until the new one is committed. A plain file, a link, or a folder with
anything else in it is refused with one line, with or without ``--overwrite``, and nothing is touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from mcmfh.errors import ArtefactError
from mcmfh.io import recover_swap
from mcmfh.manifest import MANIFEST_NAME

Plan = Literal["new", "resume", "replace"]


def artefact_kind(path: Path) -> str | None:
    """The ``kind`` in ``path/manifest.json``; None when there is no readable manifest with a kind."""
    try:
        kind = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def check_output(
    path: str | Path, kind: str, *, overwrite: bool = False, resumable: bool = False, option: str = "--out"
) -> Plan:
    """What a command may do with ``path``: ``new`` (nothing there), ``resume`` (its own artefact, resumable
    command without ``--overwrite``) or ``replace`` (its own artefact and ``--overwrite``). Anything else raises
    an ``ArtefactError`` (exit 2) naming the path; nothing is deleted."""
    path = Path(path)
    recover_swap(path)
    if path.is_symlink():
        raise ArtefactError(f"{option} {path}: is a symbolic link; give the real folder (nothing was changed)")
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise ArtefactError(
            f"{option} {path}: exists and is a file, not a {kind} folder; choose another {option} (nothing was changed)"
        )
    if not any(path.iterdir()):
        return "new"
    found = artefact_kind(path)
    if found is None:
        raise ArtefactError(
            f"{option} {path}: exists and is not an mcmfh artefact (no {MANIFEST_NAME}; expected a {kind!r} one); "
            f"choose another {option} — it is never deleted, even with --overwrite"
        )
    if found != kind:
        raise ArtefactError(
            f"{option} {path}: holds an mcmfh {found!r} artefact, not a {kind!r}; choose another {option} "
            "(it is left untouched)"
        )
    if overwrite:
        return "replace"
    if resumable:
        return "resume"
    raise ArtefactError(f"{option} {path}: already holds a {kind}; pass --overwrite to replace it")
