"""Model choice on dev: one order-independent rule for every method, which collapse cannot game.

Every dev-based choice (an epoch, a hyperparameter, a stage) is made on dev queries against the train set as
database, in both directions, by two figures:

- **health first**: an epoch whose codes are collapsed (``mcmfh.evaluation.code_health.is_collapsed`` on the codes of
the train
  + dev items, the database an archive would hold) never beats a healthy one. A collapsed epoch can have the higher
  label mAP (with a few coarse labels, one bucket per label is what label mAP rewards), so without this rule model
  choice itself picks collapse (reference/evaluation.md);
- **then the score**, ``select_on``: ``dev_map`` = tie-aware mAP@all; ``dev_map_recall`` = the mean of tie-aware
  mAP@all and the instance-level paired R@10 of dev queries among the dev + train items (``mcmfh.evaluation.paired``),
  so an
  epoch that still groups by label but no longer tells a report from its neighbours loses too.

The stable-order mAP is never used to choose: when the database order follows the labels it rewards collapsed codes.
If no epoch is healthy the best-scoring one is kept and the fit says so (``collapsed`` in its log).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcmfh.evaluation.code_health import method_code_health
from mcmfh.evaluation.metrics import cosine_distances, hamming_distances, map_all_tie_aware, relevance
from mcmfh.evaluation.paired import PairedGallery, paired_recall

SCORES = ("dev_map", "dev_map_recall")
RECALL_K = 10  # the paired recall cut-off model choice uses (R@10: the first screen of a search)


@dataclass(frozen=True)
class DevScore:
    i2t: float
    t2i: float

    @property
    def mean(self) -> float:
        return 0.5 * (self.i2t + self.t2i)


@dataclass(frozen=True)
class DevEvaluation:
    """One dev evaluation: the score to maximise, whether the codes are healthy, and the figures to log."""

    score: float
    healthy: bool = True
    figures: dict[str, Any] = field(default_factory=dict)

    def beats(self, best: DevEvaluation | None) -> bool:
        """Lexicographic: healthy before collapsed, then a strictly higher score (ties keep the earlier epoch)."""
        if best is None:
            return True
        if self.healthy != best.healthy:
            return self.healthy
        return self.score > best.score


def collapsed_share(history: list[dict[str, Any]]) -> float | None:
    """Share of a stage's evaluated epochs (rows of its log ``history``) whose codes were collapsed; None when no
    epoch was evaluated on codes. How many healthy epochs health-first choice had to choose from."""
    flags = [bool(row["collapsed"]) for row in history if "collapsed" in row]
    return sum(flags) / len(flags) if flags else None


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


def evaluate_dev(
    query: tuple[np.ndarray, np.ndarray],
    database: tuple[np.ndarray, np.ndarray],
    labels: tuple[np.ndarray, np.ndarray],
    texts: tuple[np.ndarray, np.ndarray],
    binary: bool = True,
    select_on: str = "dev_map",
    images: tuple[np.ndarray, np.ndarray] | None = None,
) -> DevEvaluation:
    """The dev evaluation of one epoch. ``query`` / ``database``: (image, text) outputs of the dev pairs and of the
    train pairs (bool codes when ``binary``, else real vectors); ``labels``: (dev, train) multi-hot labels;
    ``texts``: (dev, train) input text embeddings, which tell identical captions apart (paired recall, and the
    ceiling of the text codes' health); ``images``: (dev, train) input image embeddings, likewise."""
    (q_img, q_txt), (db_img, db_txt) = query, database
    label_map = dev_map(q_img, q_txt, db_img, db_txt, *labels, binary=binary)
    figures: dict[str, Any] = {"dev_map": round(label_map.mean, 5)}
    score = label_map.mean
    if select_on == "dev_map_recall":
        n_dev = len(q_txt)
        gallery = PairedGallery.of(np.concatenate(texts), np.ones(n_dev + len(db_txt), bool))
        asked = np.arange(n_dev + len(db_txt)) < n_dev
        dist = hamming_distances if binary else cosine_distances
        rec = paired_recall(gallery, np.concatenate([q_img, db_img]), np.concatenate([q_txt, db_txt]), dist,
                            (RECALL_K,), asked)  # fmt: skip
        recall = float(np.mean([rec[d][f"r{RECALL_K}"] for d in rec])) if rec else 0.0
        figures[f"dev_paired_r{RECALL_K}"] = round(recall, 5)
        score = 0.5 * (label_map.mean + recall)
    healthy = True
    if binary:  # health of the codes an archive would hold: train + dev
        image_inputs = None if images is None else np.concatenate([images[1], images[0]])
        health = method_code_health(np.concatenate([db_img, q_img]), np.concatenate([db_txt, q_txt]), image_inputs,
                                    np.concatenate([texts[1], texts[0]]))  # fmt: skip
        healthy = not health["collapsed"]
        figures.update(
            codes_image=health["image"]["distinct"],
            codes_text=health["text"]["distinct"],
            effective_bits_image=health["image"]["effective_bits"],
            effective_bits_text=health["text"]["effective_bits"],
            collapsed=health["collapsed"],
        )
    return DevEvaluation(float(score), healthy, figures)
