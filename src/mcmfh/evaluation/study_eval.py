"""Evaluation modes beyond image→text / text→image: queries against studies, and within one modality.

Modes (``mcmfh.evaluation.evaluate.evaluate_method(modes=...)``, the experiment's ``modes:``):
- ``i2s`` / ``t2s``: an image / a text query, coded alone as always, against the database *studies*
  (``FeatureSet.study_ids``; relevance: the query shares a label with any member, i.e. with the union). Variants:
  ``fused`` — the method's own study code (``HashMethod.encode_studies``; MCMFH's study head, 2 bytes at 16 bits);
  ``min`` — the smallest distance to any member's image or text code (no fusion, every member's two codes kept);
  ``sum`` — the smallest, over members, of the member's image distance plus its text distance (a text-only member
  counts its text distance twice); ``fused_2s`` — two-stage search over the fused study codes as an archive runs
  it (``mcmfh.evaluation.rerank_eval``: the first ``RERANK_FLOOR`` studies in Hamming order re-scored by the study
  head's relaxed output at ``DEFAULT_PAYLOAD`` against the query's own relaxed output; methods with a study head
  and relaxed outputs). Each variant reports tie-aware mAP@all and P@10. ``<mode>_map`` is the fused code where the
  method has one, else ``min``: a fixed rule, never the better of the two on test.
- ``i2i`` / ``t2t``: image→image and text→text over the database items.
A query is never matched with itself: a database item with the query's id, or a study that holds it, is left out of
that query's ranking. It is put after every other candidate and marked not relevant, which leaves every AP-type
figure exactly as if it were removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.evaluation.metrics import RankingOptions, cosine_distances, hamming_distances, ranking_metrics, relevance
from mcmfh.evaluation.rerank_eval import TwoStageRanker
from mcmfh.features import FeatureSet
from mcmfh.index.payload import DEFAULT_PAYLOAD, make_codec
from mcmfh.method import HashMethod
from mcmfh.studies import Studies

PAIR_MODES = ("i2t", "t2i")
STUDY_MODES = ("i2s", "t2s")
SAME_MODES = ("i2i", "t2t")
MODES = PAIR_MODES + STUDY_MODES + SAME_MODES
REPORTED = ("map", "map_all", "map_all_tie_aware", "p10")  # per mode and variant, as flat row keys
# The number of results an archive's study search asks for; at or below RERANK_FLOOR / oversample its budget does
# not depend on it (mcmfh.index.rerank), so the ranking evaluated is the one every page of results is a prefix of.
STUDY_SEARCH_K = 10


def check_modes(modes: Sequence[str]) -> list[str]:
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise MCMFHError(f"unknown evaluation mode(s) {bad}; known: {list(MODES)}")
    return list(dict.fromkeys(modes))


def _distances(method: HashMethod, q: np.ndarray, db: np.ndarray) -> np.ndarray:
    return (cosine_distances if method.continuous else hamming_distances)(q, db).astype(np.float64)


def _exclude(dist: np.ndarray, rel: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put the (Q, N) ``own`` entries last and not relevant: AP is then as if they were not in the database."""
    if own.any():
        dist = np.where(own, dist.max(initial=0.0) + 1.0, dist)
        rel = rel & ~own
    return dist, rel


def _per_study_min(dist_q_n: np.ndarray, member_cols: list[np.ndarray]) -> np.ndarray:
    """(Q, S): per study, the minimum over its columns (+inf for a study with none)."""
    out = np.full((dist_q_n.shape[0], len(member_cols)), np.inf)
    sizes = np.array([len(c) for c in member_cols])
    nonempty = np.flatnonzero(sizes)
    if len(nonempty):
        cols = np.concatenate([member_cols[s] for s in nonempty])
        starts = np.concatenate([[0], np.cumsum(sizes[nonempty])[:-1]])
        out[:, nonempty] = np.minimum.reduceat(dist_q_n[:, cols], starts, axis=1)
    return out


@dataclass
class _StudyDatabase:
    """What both study modes rank against, computed once: the database studies, their labels and study codes, and
    where each item's image code sits among the image codes."""

    studies: Studies
    labels: np.ndarray
    item_study: np.ndarray
    row_of: dict[str, int]
    img_col: np.ndarray  # per database item, its column among the image codes (-1: no image)
    img_cols: list[np.ndarray]  # per study, its members' image columns
    codes: np.ndarray | None  # the method's own study codes, if it has a study head
    relaxed: np.ndarray | None  # their relaxed outputs (two-stage payload), if the method has them

    @classmethod
    def of(cls, method: HashMethod, db: FeatureSet, db_img_rows: np.ndarray) -> _StudyDatabase:
        studies = Studies.group(db.study_ids())
        img_col = np.full(len(db), -1)
        img_col[db_img_rows] = np.arange(len(db_img_rows))
        codes = relaxed = None
        if method.has_study_codes:
            coded, codes = method.encode_studies(db)
            if coded.ids != studies.ids:
                raise MCMFHError(f"{method.name}: encode_studies grouped the database differently")
            if method.has_relaxed and not method.continuous:
                inputs = method.study_inputs(db.image, db.text)
                relaxed = method.relaxed_study_inputs(inputs, db.has_image, db.study_ids())[1]
        return cls(
            studies=studies,
            labels=studies.labels(db.labels),
            item_study=studies.item_study(len(db)),
            row_of={i: r for r, i in enumerate(db.ids)},
            img_col=img_col,
            img_cols=[img_col[m][img_col[m] >= 0] for m in studies.members],
            codes=codes,
            relaxed=relaxed,
        )


def _metrics(prefix: str, dist: np.ndarray, rel: np.ndarray, opts: RankingOptions) -> dict[str, Any]:
    m = ranking_metrics(dist, rel, RankingOptions(opts.map_k, (10,), opts.pr_points, opts.radius))
    m["p10"] = m["p_at_k"].get("10")  # tie-aware expected P@10 (None: fewer than 10 studies)
    return {f"{prefix}_{k}": m[k] for k in REPORTED} | {f"{prefix}_n_queries": m["n_queries"]}


def evaluate_modes(
    method: HashMethod,
    features: FeatureSet,
    queries: Sequence[str],
    database: Sequence[str],
    modes: Sequence[str],
    options: RankingOptions | None = None,
) -> dict[str, Any]:
    """Flat keys ``<mode>_map`` / ``_map_all`` / ``_map_all_tie_aware`` (and ``<mode>_<variant>_*`` for study
    modes) for each of ``modes`` other than i2t / t2i (``mcmfh.evaluation.evaluate`` computes those)."""
    opts = options or RankingOptions()
    if method.continuous:
        opts = RankingOptions(opts.map_k, opts.p_at_k, opts.pr_points, radius=None)
    q, db = features.splits(*queries), features.splits(*database)
    q_img = q.subset(q.has_image)
    q_codes = {"i": method.encode_images(q_img.image), "t": method.encode_texts(q.text)}
    q_sets = {"i": q_img, "t": q}
    db_img_rows = np.flatnonzero(db.has_image)
    db_image, db_text = method.encode_images(db.image[db_img_rows]), method.encode_texts(db.text)
    modes = check_modes(modes)
    db_side = _StudyDatabase.of(method, db, db_img_rows) if set(modes) & set(STUDY_MODES) else None
    out: dict[str, Any] = {}
    for mode in modes:
        if mode in PAIR_MODES:
            continue
        qm = mode[0]
        codes, qs = q_codes[qm], q_sets[qm]
        if len(qs) == 0:
            continue  # no image queries (a text-only query split): nothing to rank
        if mode in SAME_MODES:
            rows = db_img_rows if qm == "i" else np.arange(len(db))
            db_codes = db_image if qm == "i" else db_text
            db_ids, db_labels = np.asarray(db.ids)[rows], db.labels[rows]
            dist = _distances(method, codes, db_codes)
            own = np.asarray(qs.ids)[:, None] == db_ids[None, :]
            out |= _metrics(mode, *_exclude(dist, relevance(qs.labels, db_labels), own), opts)
            continue
        assert db_side is not None
        studies = db_side.studies
        rel = relevance(qs.labels, db_side.labels)
        own = np.zeros((len(qs), len(studies)), dtype=bool)
        for qi, item in enumerate(qs.ids):
            r = db_side.row_of.get(item)
            if r is not None:
                own[qi, db_side.item_study[r]] = True
        d_img = _distances(method, codes, db_image)  # (Q, items with an image)
        d_txt = _distances(method, codes, db_text)  # (Q, all items)
        variants = {"min": np.minimum(_per_study_min(d_img, db_side.img_cols), _per_study_min(d_txt, studies.members))}
        d_img_full = np.where(db.has_image[None, :], d_img[:, np.maximum(db_side.img_col, 0)], d_txt)
        variants["sum"] = _per_study_min(d_img_full + d_txt, studies.members)
        if db_side.codes is not None:
            variants["fused"] = _distances(method, codes, db_side.codes)
        if db_side.codes is not None and db_side.relaxed is not None:
            q_vec = method.relaxed_images(qs.image) if qm == "i" else method.relaxed_texts(qs.text)
            codec = make_codec(DEFAULT_PAYLOAD, db_side.relaxed.shape[1])
            ranker = TwoStageRanker(codes, db_side.codes, q_vec, db_side.relaxed, codec)
            variants["fused_2s"] = ranker.rank(min(STUDY_SEARCH_K, len(studies)))[0].astype(np.float64)
        for name, dist in variants.items():
            out |= _metrics(f"{mode}_{name}", *_exclude(dist, rel, own), opts)
        headline = "fused" if "fused" in variants else "min"
        out |= {f"{mode}_{k}": out[f"{mode}_{headline}_{k}"] for k in REPORTED}
        out[f"{mode}_headline"] = headline
        out[f"{mode}_n_queries"] = len(qs)
        out[f"{mode}_n_studies"] = len(studies)
    return out
