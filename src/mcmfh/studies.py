"""Studies: the grouping of an archive's items into studies (exams, cases), one type from loader to HTTP edge.

A study is one or more items that belong together (``Item.study_id``, ``FeatureSet.study``; the ``study_id`` column
of the csv/jsonl loaders, MedPix's ``case_id``). An item of no study is a study of its own. A study is about every
label of its members (the union), and holds each distinct text once (a report shared by a study's images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Studies:
    """A grouping of N items into studies, in order of first appearance."""

    ids: list[str]
    members: list[np.ndarray]  # per study, the item rows (ascending)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def group(cls, study_of_item: Sequence[str] | np.ndarray) -> Studies:
        keys = np.asarray(study_of_item, dtype=str)
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rows = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
        by_key = np.split(rows, bounds)
        return cls(ids=[str(uniq[j]) for j in order], members=[by_key[j] for j in order])

    def item_study(self, n_items: int) -> np.ndarray:
        """(N,) study index of each item row."""
        out = np.full(n_items, -1, dtype=np.int64)
        for s, rows in enumerate(self.members):
            out[rows] = s
        return out

    def labels(self, item_labels: np.ndarray) -> np.ndarray:
        """(S, C) multi-hot: a study is about every label of its members (the union)."""
        return np.stack([item_labels[rows].max(axis=0) for rows in self.members]) if self.ids else item_labels[:0]


def distinct_texts(text: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows whose text embedding is the first of its value within ``rows`` (a shared report counts once)."""
    seen: set[bytes] = set()
    keep = []
    for r in rows:
        key = text[r].tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(r)
    return np.asarray(keep, dtype=np.int64)
