"""A dataset: the items a loader produced (``mcmfh.items.Item``, what the encoders read) and its label vocabulary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcmfh.errors import DataError
from mcmfh.items import Item

SPLITS = ("train", "dev", "test")


@dataclass
class LoadReport:
    """What a loader skipped or could not find; printed by the CLI and saved beside caches."""

    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    missing_images: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.skipped:
            first = "; ".join(f"{w}: {why}" for w, why in self.skipped[:3])
            parts.append(f"skipped {len(self.skipped)} bad item(s) (first: {first})")
        if self.missing_images:
            parts.append(
                f"{len(self.missing_images)} image(s) not on disk, kept as text-only "
                f"(first: {', '.join(self.missing_images[:5])})"
            )
        return "; ".join(parts) or "no problems"


@dataclass
class Dataset:
    """Items plus the dataset-level label vocabulary that turns tag names into multi-hot rows."""

    name: str
    records: list[Item]
    label_set: str
    label_vocab: list[str]
    report: LoadReport = field(default_factory=LoadReport)
    # How to load it again (loader name, resolved root, label set, options): caches record it so an index can
    # fetch captions and image paths later without the user repeating where the data lives.
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dupes = [i for i, c in Counter(r.id for r in self.records).items() if c > 1]
        if dupes:
            raise DataError(f"{self.name}: duplicate id(s) {dupes[:5]} ({len(dupes)} in all); ids must be unique")
        bad = sorted({r.split for r in self.records} - set(SPLITS))
        if bad:
            raise DataError(f"{self.name}: unknown split(s) {bad}; expected one of {list(SPLITS)}")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def has_studies(self) -> bool:
        """Whether the source grouped its items into studies (any record names one)."""
        return any(r.study_id for r in self.records)

    def studies(self) -> list[str]:
        """Per item, its study id; an item of no study is a study of its own (its id)."""
        return [r.study_id or r.id for r in self.records]

    def label_matrix(self) -> np.ndarray:
        """Multi-hot (N, C) uint8 over ``label_vocab``; tags outside the vocabulary are ignored."""
        index = {t: j for j, t in enumerate(self.label_vocab)}
        out = np.zeros((len(self.records), len(self.label_vocab)), dtype=np.uint8)
        for i, r in enumerate(self.records):
            for t in r.labels:
                j = index.get(t)
                if j is not None:
                    out[i, j] = 1
        return out

    def split_counts(self) -> dict[str, int]:
        c = Counter(r.split for r in self.records)
        return {s: c.get(s, 0) for s in SPLITS}


def build_vocab(label_lists: list[tuple[str, ...]], min_count: int = 1) -> list[str]:
    """Sorted tags that occur in at least ``min_count`` records."""
    counts = Counter(t for labels in label_lists for t in set(labels))
    return sorted(t for t, c in counts.items() if c >= min_count)
