"""Atomic file and folder writes: a crash leaves either the old artefact or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _old_name(path: Path) -> str:
    return f".{path.name}.old-"


def recover_swap(path: str | os.PathLike[str]) -> bool:
    """Undo a replacement stopped between its two renames (where ``_exchange`` is unavailable): ``path`` is
    missing and its previous version waits at ``.NAME.old-*``; move it back. True if something was restored."""
    path = Path(path)
    if path.exists() or path.is_symlink() or not path.parent.is_dir():
        return False
    olds = sorted(p for p in path.parent.glob(_old_name(path) + "*") if p.is_dir())
    if len(olds) != 1:
        return False
    os.replace(olds[0], path)
    return True


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temp folder beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temp folder is removed and ``path`` is untouched. An existing folder is swapped with the
    new one in one ``renameat2(RENAME_EXCHANGE)``, so a crash leaves the old or the new, never neither; where that
    call is missing it takes two renames, and ``recover_swap`` restores the old one after a crash between them.
    Only folders are replaced: ``path`` being a file raises ``FileExistsError``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_swap(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(tmp)
    if path.exists() or path.is_symlink():
        if not overwrite or path.is_symlink() or not path.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(path)
        if _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old version
        else:
            old = Path(tempfile.mkdtemp(prefix=_old_name(path), dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def sqlite_transaction(db: Any) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` on a SQLite connection in autocommit mode; any exception rolls back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
