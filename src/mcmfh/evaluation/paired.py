"""Instance-level retrieval: does an image find *its own* report, and a report its own images?

Label mAP counts any item that shares a tag as a hit. With a few coarse tags a model that puts every head image into
one bucket scores high while it cannot rank within the tag at all; paired recall cannot be gamed that way
(reference/evaluation.md, "Instance-level retrieval"; docs/evaluation.md).

Gallery: the query split, 1:1. **Identical captions are one text**, so image→text ranks the split's distinct texts
(each image's correct text is its own caption), and text→image has one query per distinct text, whose correct items
are all images that carry it. Texts are identical when their embeddings are bit-identical (a deterministic encoder
gives equal captions equal embeddings), so no raw text is needed.

Every figure is **tie-aware**: the exact expectation over uniformly random orders inside groups of equal distance.
If ``c`` gallery items are strictly closer than the best-ranked correct one, and its tie group holds ``t`` items of
which ``cc`` are correct, then with ``m = K - c``:
R@K = 0 if m <= 0; 1 if m > t - cc; else 1 - C(t - cc, m) / C(t, m); the expected rank of the first correct item is
c + (t + 1) / (cc + 1). Collapsed codes put everything in one tie group, so they score what random ranking scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import comb

import numpy as np

from mcmfh.errors import MCMFHError

RECALL_AT = (1, 5, 10)  # the reported cut-offs: R@1, R@5, R@10


def tie_aware_recall(dist: np.ndarray, correct: np.ndarray, ks: Sequence[int] = RECALL_AT) -> dict[str, np.ndarray]:
    """Per query: tie-aware R@K for each K in ``ks`` (key ``r<K>``) and the expected rank of the first correct item
    (key ``rank``). ``dist`` (Q, G) distances, ascending = closer; ``correct`` (Q, G) bool, >= 1 per row."""
    dist, correct = np.asarray(dist), np.asarray(correct, dtype=bool)
    if dist.shape != correct.shape or dist.ndim != 2:
        raise MCMFHError(f"paired recall: distances {dist.shape} and correct {correct.shape} must be equal (Q, G)")
    if len(correct) and not correct.any(1).all():
        raise MCMFHError("paired recall: every query needs at least one correct gallery item")
    q = dist.shape[0]
    best = np.where(correct, dist, np.inf).min(1) if q else np.zeros(0)
    closer = (dist < best[:, None]).sum(1)
    tied = dist == best[:, None]
    t, cc = tied.sum(1), (tied & correct).sum(1)
    out = {f"r{k}": np.zeros(q) for k in ks}
    for i in range(q):
        wrong = int(t[i] - cc[i])
        for k in ks:
            m = int(k - closer[i])
            if m <= 0:
                continue
            out[f"r{k}"][i] = 1.0 if m > wrong else 1.0 - comb(wrong, m) / comb(int(t[i]), m)
    out["rank"] = closer + (t + 1) / (cc + 1)
    return out


@dataclass(frozen=True)
class PairedGallery:
    """The 1:1 gallery of one split: per item, its text group (identical captions share one group)."""

    text_group: np.ndarray  # (N,) int: group of each item's text
    first_of_group: np.ndarray  # (G,) int: an item index holding each distinct text
    has_image: np.ndarray  # (N,) bool

    @classmethod
    def of(cls, text: np.ndarray, has_image: np.ndarray) -> PairedGallery:
        rows = np.ascontiguousarray(np.asarray(text, dtype=np.float32))
        keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
        _, first, group = np.unique(keys, return_index=True, return_inverse=True)
        return cls(group.ravel().astype(np.int64), first.astype(np.int64), np.asarray(has_image, bool))

    @property
    def n_texts(self) -> int:
        return len(self.first_of_group)


Distances = Callable[[np.ndarray, np.ndarray], np.ndarray]


def paired_recall(
    gallery: PairedGallery,
    image_codes: np.ndarray,
    text_codes: np.ndarray,
    distances: Distances,
    ks: Sequence[int] = RECALL_AT,
    queries: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Both directions' mean tie-aware R@K and median expected rank of the true pair, from the gallery's codes (or
    real-valued outputs: ``distances`` decides). ``image_codes`` rows are the items with an image, in order;
    ``text_codes`` rows are all items. ``queries`` (bool per item, default all) restricts the queries to some items
    while the whole gallery stays the candidates (model choice: dev queries among dev + train items)."""
    img_items = np.flatnonzero(gallery.has_image)
    if len(image_codes) != len(img_items) or len(text_codes) != len(gallery.text_group):
        raise MCMFHError("paired recall: codes do not match the gallery's items")
    asked = np.ones(len(gallery.text_group), bool) if queries is None else np.asarray(queries, bool)
    texts = np.asarray(text_codes)[gallery.first_of_group]
    # (images, distinct texts): an image's correct text is its own caption's group
    correct = gallery.text_group[img_items][:, None] == np.arange(gallery.n_texts)[None, :]
    image_queries = asked[img_items]
    text_queries = np.zeros(gallery.n_texts, bool)
    text_queries[gallery.text_group[asked]] = True
    text_queries &= correct.any(0)  # a text whose items all lack an image has nothing to find
    out = {}
    for name, rows in (("i2t", image_queries), ("t2i", text_queries)):
        if not rows.any():
            continue
        if name == "i2t":
            dist, right = distances(np.asarray(image_codes)[rows], texts), correct[rows]
        else:
            dist, right = distances(texts[rows], image_codes), correct.T[rows]
        per_query = tie_aware_recall(dist, right, ks)
        figures = {k: float(v.mean()) for k, v in per_query.items() if k != "rank"}
        figures["median_rank"] = float(np.median(per_query["rank"]))
        figures["queries"] = int(rows.sum())
        figures["gallery"] = int(right.shape[1])
        out[name] = figures
    return out


def chance_recall(n_gallery: int, n_correct: int = 1, k: int = 10) -> float:
    """R@K of a random ranking of ``n_gallery`` items of which ``n_correct`` are correct (the floor to compare to)."""
    if k >= n_gallery - n_correct + 1:
        return 1.0
    return 1.0 - comb(n_gallery - n_correct, k) / comb(n_gallery, k)
