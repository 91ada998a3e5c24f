"""Model choice on dev: one order-independent figure for every method.

Every dev-based choice (an epoch, a hyperparameter, a stage) uses the tie-aware mAP@all of dev queries against the
train set as database, in both directions. The stable-order mAP is never used to choose: when the database order
follows the labels (real exports are often grouped by diagnosis), it rewards collapsed codes (reference/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcmfh.metrics import cosine_distances, hamming_distances, map_all_tie_aware, relevance


@dataclass(frozen=True)
class DevScore:
    i2t: float
    t2i: float

    @property
    def mean(self) -> float:
        return 0.5 * (self.i2t + self.t2i)


def dev_map(
    query_image: np.ndarray,
    query_text: np.ndarray,
    db_image: np.ndarray,
    db_text: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    binary: bool = True,
) -> DevScore:
    """Tie-aware mAP@all, image→text and text→image. ``binary``: bool codes (Hamming), else real vectors (cosine)."""
    dist = hamming_distances if binary else cosine_distances
    rel = relevance(query_labels, db_labels)
    return DevScore(
        i2t=map_all_tie_aware(dist(query_image, db_text), rel),
        t2i=map_all_tie_aware(dist(query_text, db_image), rel),
    )
