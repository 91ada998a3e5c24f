"""The real search engine behind the service: an ``Archive`` (run + encoder + Hamming indexes) as a ``SearchEngine``.

Text queries search image codes and image queries search text codes (cross-modal, each query coded from its own
modality alone). The archive serialises inference and database access with its own lock.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from mcmfh.archive import Archive
from mcmfh.index import storage
from mcmfh.service.engine import EngineInfo, Hit, Item


class ArchiveEngine:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    @property
    def image_root(self) -> Path | None:
        """Where the archive's item images live (the dataset root it was built from)."""
        return self.archive.image_root

    def info(self) -> EngineInfo:
        m = self.archive.manifest
        return EngineInfo(method=m["method"], bits=int(m["bits"]), encoder=str(m["encoder"]),
                          items=len(self.archive), name=self.archive.folder.name)  # fmt: skip

    def search_text(self, query: str, k: int) -> list[Hit]:
        return [_hit(h) for h in self.archive.search_text(query, k)]

    def search_image(self, image: Image.Image, k: int) -> list[Hit]:
        return [_hit(h) for h in self.archive.search_image(image, k)]

    def get_item(self, item_id: str) -> Item | None:
        item = self.archive.get(item_id)
        if item is None:
            return None
        return Item(id=item.item_id, text=item.caption, labels=item.labels, has_image=item.image is not None)

    def image_path(self, item_id: str) -> Path | None:
        item = self.archive.get(item_id)
        if item is None or item.image is None:
            return None
        return Path(item.image).resolve()


def _hit(h: storage.Hit) -> Hit:
    it = h.item
    return Hit(id=it.item_id, distance=h.distance, text=it.caption, labels=it.labels, has_image=it.image is not None)


def open_engine(index_dir: Path, warm_up: bool = True) -> ArchiveEngine:
    """Open the archive; ``warm_up`` loads the encoder and compiles the search kernels now, not on the first query."""
    archive = Archive.open(index_dir)
    if warm_up:
        archive.search_text("warm-up", 1)
    return ArchiveEngine(archive)
