"""Evaluate a fitted method on a feature set: both directions, every metric of ``mcmfh.evaluation.metrics``, and curve
plots.

Protocol (reference/evaluation.md): queries = ``queries`` splits, database = ``database`` splits; image->text ranks
the database texts for each image query, text->image ranks the database images for each text query. Items without
an image take part only as texts (never as image queries nor as database images). Every query is coded and counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.diversify import case_metrics
from mcmfh.errors import MCMFHError
from mcmfh.evaluation.code_health import method_code_health, strip_bits
from mcmfh.evaluation.metrics import RankingOptions, cosine_distances, hamming_distances, ranking_metrics, relevance
from mcmfh.evaluation.paired import PairedGallery, paired_recall
from mcmfh.evaluation.rerank_eval import (
    REPORTED_P_AT_K,
    RerankOptions,
    TwoStageRanker,
    evaluate_two_stage,
    strip_per_query,
)
from mcmfh.evaluation.rerank_eval import flat_keys as two_stage_flat_keys
from mcmfh.evaluation.study_eval import PAIR_MODES, evaluate_modes
from mcmfh.features import FeatureSet
from mcmfh.index.payload import DEFAULT_PAYLOAD, make_codec
from mcmfh.method import HashMethod

CASES_AT = 10  # P@K over distinct cases (issue 25): the first screen's worth of a diversified ranking

# Keys of one direction's metrics that are copied to the flat top level as "<dir>_<key>".
_FLAT = {
    "map": "map",  # the headline: tie-aware mAP@all, order-independent
    "map_all": "map_all",
    "map_all_tie_aware": "map_all_tie_aware",
    "map_at_k_ucmfh": "map_{k}",
    "map_at_k_ucmfh_tie_aware": "map_{k}_tie_aware",
    "precision_radius": "precision_radius",
    "chance_map": "chance_map",
}


def bytes_per_item(method: HashMethod, dim: int) -> int:
    """Memory of one coded item: bits / 8 for codes, 4 bytes per float32 dimension for continuous methods."""
    return 4 * dim if method.continuous else (method.bits + 7) // 8


def _direction(
    method: HashMethod,
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    options: RankingOptions,
) -> dict[str, Any]:
    if method.continuous:
        dist = cosine_distances(q_codes, db_codes)
        opts = RankingOptions(options.map_k, options.p_at_k, options.pr_points, radius=None)
    else:
        dist = hamming_distances(q_codes, db_codes)
        opts = options
    m = ranking_metrics(dist, relevance(q_labels, db_labels), opts)
    if getattr(method, "reports_exact_chance", False):
        # The chance row is the exact expectation over random rankings; the random codes' own score is kept beside.
        m["random_codes_map_all"] = m["map_all"]
        m["map"] = m["map_all"] = m["map_all_tie_aware"] = m["chance_map"]
        m["note"] = "chance: map_all is the exact expectation; the other metrics are the random codes' values"
    for key in ("ap_all", "ap_all_tie_aware", "ap_at_k_ucmfh", "ap_at_k_ucmfh_tie_aware"):
        m[key] = np.asarray(m[key]).tolist()
    return m


def evaluate_method(
    method: HashMethod,
    features: FeatureSet,
    queries: Sequence[str] = ("test",),
    database: Sequence[str] = ("train", "dev"),
    options: RankingOptions | None = None,
    rerank: RerankOptions | None = None,
    companions: Mapping[int, HashMethod] | None = None,
    modes: Sequence[str] = PAIR_MODES,
) -> dict[str, Any]:
    """Metrics of ``method`` for image->text and text->image, nested per direction plus flat summary keys.

    Flat keys: ``<dir>_map`` is the headline (tie-aware mAP@all); ``<dir>_map_all`` breaks ties by database order
    (stable, secondary); ``<dir>_map_all_tie_aware`` equals ``<dir>_map``; ``<dir>_map_<K>`` (stable) and
    ``<dir>_map_<K>_tie_aware`` are UCMFH's mAP@K. ``code_health`` describes the database codes (None for
    continuous methods). ``<dir>_p10`` / ``<dir>_p20`` are the tie-aware P@10 / P@20. ``paired`` and the flat
    ``<dir>_paired_r1`` / ``_r5`` / ``_r10`` / ``_median_rank`` are instance-level: the query split as a 1:1 gallery,
    tie-aware (``mcmfh.evaluation.paired``).

    With ``rerank`` (hashing methods with a relaxed output only), ``two_stage`` holds the two-stage ranking per
    payload (``mcmfh.evaluation.rerank_eval``) and flat keys ``<dir>_map_2s_<payload>`` etc. sit beside the one-stage
    ones;
    ``companions`` are the same method fitted at the code lengths of ``code<B>`` payloads.

    ``modes`` beyond i2t / t2i (always computed) add the study and same-modality modes of
    ``mcmfh.evaluation.study_eval``."""
    opts = options or RankingOptions()
    q = features.splits(*queries)
    db = features.splits(*database)
    if len(q) == 0 or len(db) == 0:
        raise MCMFHError(f"evaluate: no items in query splits {list(queries)} or database splits {list(database)}")
    q_img, db_img = q.subset(q.has_image), db.subset(db.has_image)
    db_text = method.encode_texts(db.text)
    db_image = method.encode_images(db_img.image)
    q_image_codes, q_text_codes = method.encode_images(q_img.image), method.encode_texts(q.text)
    i2t = _direction(method, q_image_codes, db_text, q_img.labels, db.labels, opts)
    t2i = _direction(method, q_text_codes, db_image, q.labels, db_img.labels, opts)
    out: dict[str, Any] = {
        "method": method.name,
        "bits": method.bits,
        "seed": method.seed,
        "continuous": bool(method.continuous),
        "queries": list(queries),
        "database": list(database),
        # Measured on what is stored: a continuous method's width need not equal ``bits`` (continuous-mcmfh).
        "bytes_per_item": bytes_per_item(method, int(np.asarray(db_text).shape[1])),
        "i2t": i2t,
        "t2i": t2i,
        # Of the database codes, per modality: a collapsed model shows here whatever its mAP
        # (mcmfh.evaluation.code_health).
        "code_health": None if method.continuous else method_code_health(db_image, db_text, db_img.image, db.text),
        # Instance level, in the query split as a 1:1 gallery: does an image find its own report
        # (mcmfh.evaluation.paired)?
        "paired": paired_recall(
            PairedGallery.of(q.text, q.has_image),
            q_image_codes,
            q_text_codes,
            cosine_distances if method.continuous else hamming_distances,
        ),
    }
    for direction, m in (("i2t", i2t), ("t2i", t2i)):
        for key, flat in _FLAT.items():
            out[f"{direction}_{flat.format(k=opts.map_k)}"] = m[key]
        for k in REPORTED_P_AT_K:
            if str(k) in m["p_at_k"]:
                out[f"{direction}_p{k}"] = m["p_at_k"][str(k)]
        for key, value in out["paired"].get(direction, {}).items():
            if key.startswith("r") or key == "median_rank":
                out[f"{direction}_paired_{key}"] = value
    if rerank is not None and not method.continuous and method.has_relaxed:
        codes = {"q_image": q_image_codes, "q_text": q_text_codes, "db_image": db_image, "db_text": db_text}
        rel_i2t, rel_t2i = relevance(q_img.labels, db.labels), relevance(q.labels, db_img.labels)
        two = evaluate_two_stage(
            method, q_img.image, q.text, db_img.image, db.text, rel_i2t, rel_t2i, codes, rerank, opts, companions
        )
        out["two_stage"] = two
        out.update(two_stage_flat_keys(two))
    if db.has_studies:
        dist = cosine_distances if method.continuous else hamming_distances
        two = rerank if "two_stage" in out and DEFAULT_PAYLOAD in out["two_stage"] else None
        i2t_vec = (method.relaxed_images(q_img.image), method.relaxed_texts(db.text)) if two else None
        t2i_vec = (method.relaxed_texts(q.text), method.relaxed_images(db_img.image)) if two else None
        out.update(_case_rows("i2t", q_image_codes, db_text, q_img.labels, db, dist, two, i2t_vec))
        out.update(_case_rows("t2i", q_text_codes, db_image, q.labels, db_img, dist, two, t2i_vec))
    if set(modes) - set(PAIR_MODES):
        out.update(evaluate_modes(method, features, queries, database, modes, opts))
    return out


def _case_rows(direction: str, q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db: FeatureSet,
               dist: Any, rerank: RerankOptions | None,
               vectors: tuple[np.ndarray, np.ndarray] | None) -> dict[str, float]:  # fmt: skip
    """The diversified ranking (``mcmfh.diversify``: one entry per case, repeated texts folded) of one direction:
    ``<dir>_p10_cases`` (P@10 over distinct cases), beside ``<dir>_p10_items_stable`` (the raw first 10 in the same
    order) and ``<dir>_cases_in_10`` (distinct cases among the raw first 10); ``..._2s_<DEFAULT_PAYLOAD>`` for the
    two-stage ranking. Stable order inside ties (database order), not tie-aware: a search shows one order."""
    _, groups = np.unique(np.asarray(db.study_ids(), dtype=str), return_inverse=True)
    texts = np.array([row.tobytes() for row in np.asarray(db.text)], dtype=object)
    rel = relevance(q_labels, db.labels)
    rankings = {"": dist(q_codes, db_codes)}
    if rerank is not None and vectors is not None:
        q_vec, db_vec = vectors
        ranker = TwoStageRanker(q_codes, db_codes, q_vec, db_vec, make_codec(DEFAULT_PAYLOAD, db_vec.shape[1]))
        rankings[f"_2s_{DEFAULT_PAYLOAD}"] = ranker.rank(min(rerank.k, len(db)), rerank.oversample)[0]
    out: dict[str, float] = {}
    for suffix, keys in rankings.items():
        m = case_metrics(np.asarray(keys), rel, groups, texts, CASES_AT)
        out |= {f"{direction}_p{CASES_AT}_cases{suffix}": m["p_cases"],
                f"{direction}_p{CASES_AT}_items_stable{suffix}": m["p_items"],
                f"{direction}_cases_in_{CASES_AT}{suffix}": m["cases_raw"]}  # fmt: skip
    return out


def summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics without per-query arrays (for results rows and printing)."""
    out = {}
    for k, v in metrics.items():
        if k in ("i2t", "t2i"):
            v = {kk: vv for kk, vv in v.items() if not kk.startswith("ap_")}
        elif k == "two_stage":
            v = strip_per_query(v)
        elif k == "code_health" and v is not None:  # per-bit lists stay in metrics.json, not in every row
            v = {m: strip_bits(h) for m, h in v.items()}
        out[k] = v
    return out


def save_figure(fig: Any, path: Path) -> None:
    import io

    from mcmfh.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(
    curves: Mapping[str, Mapping[str, Any]], out_dir: str | Path, title: str = "", suffix: str = ""
) -> list[Path]:
    """PR and P@K plots (one line per label, both directions side by side) from ``{label: metrics}``;
    written as ``pr_curve<suffix>.png`` and ``p_at_k<suffix>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = []
    for kind, fname in (("pr", f"pr_curve{suffix}.png"), ("pk", f"p_at_k{suffix}.png")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, direction in zip(axes, ("i2t", "t2i"), strict=True):
            for label, m in curves.items():
                d = m[direction]
                # Ceilings (named "continuous..." by convention) dashed: they also stay apart once colours repeat.
                style = "--" if "continuous" in label else "-"
                if kind == "pr":
                    recall, precision = d["pr_curve"]["recall"], d["pr_curve"]["precision"]
                    ax.plot(recall, precision, marker=".", linestyle=style, label=label)
                    ax.set_xlabel("recall")
                else:
                    ks = [int(k) for k in d["p_at_k"]]
                    ax.plot(ks, list(d["p_at_k"].values()), marker=".", linestyle=style, label=label)
                    ax.set_xscale("log")
                    ax.set_xlabel("K")
            ax.set_ylabel("precision")
            ax.set_title(f"{title} {'image→text' if direction == 'i2t' else 'text→image'}".strip())
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        save_figure(fig, out_dir / fname)
        plt.close(fig)
        paths.append(out_dir / fname)
    return paths
