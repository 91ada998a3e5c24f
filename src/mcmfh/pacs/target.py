"""The one adapter between the PACS sync and the archive: everything the sync writes goes through ``open_archive``.

Today it wraps ``mcmfh.archive.Archive`` (locks and atomic commits are the archive's); after a redesign of the
archive, re-point this file only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mcmfh.items import Item


class ArchiveWriter:
    """Add encoded items and remove them by id; both are idempotent (present ids are skipped, unknown ignored)."""

    def __init__(self, folder: Path) -> None:
        from mcmfh.archive import Archive

        self._archive = Archive.open(folder, writable=True)

    def add(self, records: Sequence[Item], source: str) -> int:
        return int(self._archive.add_records(list(records), source=source)["texts"])

    def remove(self, item_ids: Sequence[str]) -> int:
        return int(self._archive.remove(list(item_ids))) if item_ids else 0

    def __len__(self) -> int:
        return len(self._archive)

    def close(self) -> None:
        self._archive.close()


def open_archive(folder: str | Path) -> ArchiveWriter:
    return ArchiveWriter(Path(folder))
