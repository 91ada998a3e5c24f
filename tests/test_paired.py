"""Instance-level paired recall (mcmfh.evaluation.paired): tie-aware R@K against brute force over every tie order,
identical
captions as one text, and that collapsed codes cannot score above random ranking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mcmfh.errors import MCMFHError
from mcmfh.evaluation.metrics import hamming_distances
from mcmfh.evaluation.paired import PairedGallery, chance_recall, paired_recall, tie_aware_recall


def _brute_force(dist: np.ndarray, correct: np.ndarray, ks: tuple[int, ...]) -> tuple[dict[int, float], float]:
    """Average over every order that sorts the distances (every order inside ties equally likely)."""
    hits, rank, count = dict.fromkeys(ks, 0.0), 0.0, 0
    for perm in itertools.permutations(range(len(dist))):
        d = dist[list(perm)]
        if np.any(d[:-1] > d[1:]):
            continue
        first = int(np.argmax(correct[list(perm)])) + 1
        for k in ks:
            hits[k] += first <= k
        rank, count = rank + first, count + 1
    return {k: v / count for k, v in hits.items()}, rank / count


def test_tie_aware_recall_equals_brute_force_over_tie_orders() -> None:
    rng = np.random.default_rng(0)
    for _ in range(150):
        g = int(rng.integers(2, 7))
        dist = rng.integers(0, 3, size=(1, g))
        correct = rng.random((1, g)) < 0.35
        correct[0, rng.integers(g)] = True
        got = tie_aware_recall(dist, correct, (1, 2, 3))
        want, want_rank = _brute_force(dist[0], correct[0], (1, 2, 3))
        for k in (1, 2, 3):
            assert got[f"r{k}"][0] == pytest.approx(want[k], abs=1e-12)
        assert got["rank"][0] == pytest.approx(want_rank, abs=1e-12)


def test_collapsed_codes_score_what_random_ranking_scores() -> None:
    g = 50
    dist = np.zeros((g, g), np.int32)  # one code for everything: a single tie group
    correct = np.eye(g, dtype=bool)
    got = tie_aware_recall(dist, correct, (1, 10))
    assert got["r10"].mean() == pytest.approx(chance_recall(g, 1, 10)) == pytest.approx(10 / g)
    assert got["r1"].mean() == pytest.approx(1 / g) and np.median(got["rank"]) == pytest.approx((g + 1) / 2)


def test_identical_captions_are_one_text_and_its_images_all_count() -> None:
    # 4 items: items 0 and 1 share a caption (one text), item 3 has no image.
    text = np.array([[1, 0], [1, 0], [0, 1], [0.5, 0.5]], np.float32)
    gallery = PairedGallery.of(text, np.array([True, True, True, False]))
    assert gallery.n_texts == 3 and gallery.text_group[0] == gallery.text_group[1] != gallery.text_group[2]
    image_codes = np.repeat(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], bool), 2, axis=1)  # items 0-2
    text_codes = np.repeat(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]], bool), 2, axis=1)
    out = paired_recall(gallery, image_codes, text_codes, hamming_distances, (1,))
    assert out["i2t"]["gallery"] == 3 and out["i2t"]["queries"] == 3 and out["i2t"]["r1"] == 1.0
    # text queries: the two captions that have images (the image-less one finds nothing and asks nothing)
    assert out["t2i"]["queries"] == 2 and out["t2i"]["r1"] == 1.0 and out["t2i"]["gallery"] == 3
    # only item 2 asks: the rest of the gallery still competes
    only = paired_recall(gallery, image_codes, text_codes, hamming_distances, (1,), np.array([0, 0, 1, 0], bool))
    assert only["i2t"]["queries"] == 1 and only["t2i"]["queries"] == 1


def test_bad_shapes_and_queries_without_a_correct_item_are_refused() -> None:
    with pytest.raises(MCMFHError, match="equal"):
        tie_aware_recall(np.zeros((2, 3)), np.ones((2, 2), bool))
    with pytest.raises(MCMFHError, match="at least one correct"):
        tie_aware_recall(np.zeros((1, 3)), np.zeros((1, 3), bool))
    gallery = PairedGallery.of(np.eye(3, dtype=np.float32), np.ones(3, bool))
    with pytest.raises(MCMFHError, match="do not match"):
        paired_recall(gallery, np.zeros((2, 8), bool), np.zeros((3, 8), bool), hamming_distances)
