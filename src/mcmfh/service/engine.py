"""The contract between the HTTP service and whatever answers searches.

The service only talks to a ``SearchEngine``: it never loads encoders, runs or indexes itself, so it can be tested
with a small double and the real engine (run + encoder + Hamming index, ``mcmfh.service.archive_engine``, which
depends on this module and never the other way) can change without touching the routes.
Items and hits are the library's own ``mcmfh.items.Item`` / ``Hit`` up to the HTTP edge, where pydantic models
(``mcmfh.service.app``) shape the JSON. URLs are the service's business: it builds them from the item id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from mcmfh.items import Hit, Item, StudyHit


@dataclass(frozen=True)
class EngineInfo:
    """What ``GET /health`` reports: which model answers and over how many items."""

    method: str
    bits: int
    encoder: str
    items: int
    name: str = ""  # e.g. the index folder's name or dataset; free text for people
    studies: bool = False  # whether studies can be searched (``StudyEngine``)


@runtime_checkable
class SearchEngine(Protocol):
    """What the service needs. Methods may be called from several threads at once: an engine that is not
    thread-safe must serialise itself (e.g. a lock around model inference)."""

    def info(self) -> EngineInfo: ...

    def search_text(self, query: str, k: int, per_study: int | None = None, hybrid: bool | None = None) -> list[Hit]:
        """The ``k`` nearest items to a text query, closest first (ties in a stable order); ``per_study``: hits
        shown per study with duplicate texts folded (``mcmfh.diversify``; 0: raw; None: the engine's default);
        ``hybrid``: fused with the report-text ranking (None: the archive's default)."""
        ...

    def search_image(self, image: Image.Image, k: int, per_study: int | None = None) -> list[Hit]:
        """The ``k`` nearest items to an RGB image query, closest first (``per_study`` as for text)."""
        ...

    def get_item(self, item_id: str) -> Item | None: ...

    def image_path(self, item_id: str) -> Path | None:
        """The item's image file, resolved and verified to lie inside the index's data; None when it has none."""
        ...

    def study_metadata(self, item_ids: list[str]) -> dict[str, dict[str, str]]:
        """Study-aware metadata of items synced from a PACS (study_uid, series_uid, sop_uid, modality, body_part,
        study_date), by item id; items without any are absent (an archive built from files has none)."""
        ...

    def facets(self) -> dict[str, list[str]]:
        """The values results can be filtered by (``modality``, ``body_part``); empty lists when there are none."""
        ...


@runtime_checkable
class StudyEngine(SearchEngine, Protocol):
    """An engine that can also rank whole studies (``"target": "studies"``); ``info().studies`` says whether its
    archive has any."""

    def search_studies_text(self, query: str, k: int, hybrid: bool | None = None) -> list[StudyHit]:
        """The ``k`` nearest studies to a text query, closest first, each with its member items (``hybrid``: as
        ``search_text``)."""
        ...

    def search_studies_image(self, image: Image.Image, k: int) -> list[StudyHit]:
        """The ``k`` nearest studies to an RGB image query, closest first."""
        ...


@runtime_checkable
class WritableEngine(SearchEngine, Protocol):
    """An engine that can also change its items (the optional write endpoints). Writes may block on another
    writer's lock and then raise ``mcmfh.locking.LockTimeout``."""

    def add_records(self, records: list[Item]) -> int:
        """Add items (their image paths already checked by the service); returns how many were new."""
        ...

    def remove(self, item_ids: list[str]) -> int:
        """Remove items by id; returns how many there were."""
        ...
