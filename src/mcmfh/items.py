"""One item from the loaders to the HTTP edge (``Item``), and what a search returns (``Hit``, ``StudyHit``).

A loader makes items from its files (``split`` set, no ``key``); an archive stores them (a store gives each an
int64 ``key`` and keeps its ``source``); searches return them inside hits; the HTTP API shapes them into JSON only
at its edge (``mcmfh.service.schemas``). The report or caption is ``text``, the study ``study_id`` and the case
title ``title`` throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Item:
    """One image–report item. ``image`` is None for a text-only item (e.g. an Open-i report without images).

    ``study_id``: the study (exam, case) the item belongs to; None when the source groups nothing (the item is then
    a study of its own wherever studies are asked for). ``split`` is what a loader read (not stored); ``source`` the
    dataset or channel an archive added it from; ``key`` the store's int64 key (-1 until stored). ``title``: the
    case title or diagnosis a clinician recognises the item by, where the source has one (MedPix: the case title;
    a CSV/JSONL ``title`` column); None otherwise (e.g. vqa_rad, PACS sync) and in archives made before titles."""

    id: str
    image: Path | None
    text: str
    labels: tuple[str, ...] = ()
    split: str = ""
    study_id: str | None = None
    source: str = ""
    key: int = -1
    title: str | None = None


@dataclass(frozen=True)
class Hit:
    """One result: the item, its Hamming distance to the query code, and, after two-stage search, the re-scored
    similarity the results are ordered by (``None`` for one-stage search, or past the candidate budget).

    Diversified results (``mcmfh.diversify``) also carry ``others``: the other items of its study not shown
    themselves ("N more in this case"), and ``duplicates``: the ids of lower-ranked hits with the same text, or the
    same code and payload, folded under this one. Both are empty for a raw ranking. ``payload``: the stored payload
    row two-stage search re-scored the hit from (None for one-stage hits and past the candidate budget); the
    search's own, never shown."""

    item: Item
    distance: int
    score: float | None = None
    others: tuple[Item, ...] = ()
    duplicates: tuple[str, ...] = ()
    payload: bytes | None = None


@dataclass(frozen=True)
class StudyHit:
    """One study result, carried unchanged from the archive to the HTTP edge: the study id, the Hamming distance
    of the query code to the study (its fused study code, or for a method without a study head the nearest of its
    members' image and text codes), and its member items (ascending key)."""

    study_id: str
    distance: int
    members: tuple[Item, ...]
    score: float | None = None

    @property
    def title(self) -> str | None:
        """The study's case title: the first of its members' titles (None when no member has one)."""
        return next((it.title for it in self.members if it.title), None)
