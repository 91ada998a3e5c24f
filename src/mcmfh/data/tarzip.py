"""Safe, selective extraction from tar and zip archives (no absolute paths, no ``..``, no links, regular files only)."""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from mcmfh.errors import DataError


def _safe(name: str) -> PurePosixPath | None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return p


def iter_members(archive: Path) -> Iterator[tuple[PurePosixPath, Callable[[], IO[bytes]]]]:
    """Yield ``(member path, opener)`` for every regular file of a .tar/.tar.gz/.tgz or .zip archive."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    p = _safe(info.filename)
                    if p is not None and not info.is_dir():
                        yield p, (lambda info=info: z.open(info))
            return
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                p = _safe(m.name)
                if p is not None and m.isreg():
                    yield p, (lambda m=m: tar.extractfile(m))  # type: ignore[return-value]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"{archive}: corrupt or unreadable archive ({type(e).__name__}: {e})") from None


def extract_matching(archive: Path, dest: Path, pick: Callable[[PurePosixPath], str | None]) -> int:
    """Write each member for which ``pick(path)`` gives a relative name to ``dest / name``; return the count."""
    n = 0
    for path, opener in iter_members(archive):
        name = pick(path)
        if name is None:
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, open(target, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
        n += 1
    return n
