"""Hybrid text search against its two channels, text→image and text→study, on a built archive.

    python benchmarks/hybrid_search.py ARCHIVE FEATURES --json OUT.json     # queries: FEATURES' test split

Queries are the held-out split's captions (the archive holds the train+dev items it was built from); each is coded
from its cached text embedding by the archive's own query coder (the numbers a query through the archive gets,
without loading the text encoder) and searched three ways, each returning its top ``--depth`` (the depth hybrid
search fuses):

- ``cross-modal``: the archive's search (two-stage when it has a payload): the query's code against image codes /
  study codes;
- ``lexical``: BM25 over the stored captions (``mcmfh.index.text_index``); studies by their best-matching member;
- ``hybrid``: both fused by reciprocal rank fusion (``mcmfh.archive.hybrid``, k = ``mcmfh.fusion.RRF_K``).

``cross-modal (all)`` ranks the whole database by Hamming distance (the evaluation's own protocol) for reference.
Metrics: tie-aware mAP over the whole database (the items a list does not return tie below it: a truncated list is
scored as if the rest came in random order) and tie-aware P@10 (``mcmfh.evaluation.metrics``; relevance: a shared label,
for a study with any member). Every list's ties (equal distance and similarity, equal BM25, equal fused score) share
their mean rank, so no figure depends on insertion order.

What this does not show: lexical and hybrid read the database's report text, so they are not cross-modal figures
(a database of images without reports has no lexical channel). On MedPix, captions of one case are often alike and
the labels are curated per case, so the lexical channel finds a query's case-mates easily where the split puts a
case in both the queries and the database (``shared_studies`` counts those queries).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.archive import Archive
from mcmfh.archive.hybrid import HYBRID_DEPTH, hybrid_items, hybrid_studies, lexical_studies
from mcmfh.archive.search import rerank_mode, search_items, search_studies
from mcmfh.data import dataset_from_source
from mcmfh.evaluation.metrics import RankingOptions, ranking_metrics
from mcmfh.features import FeatureSet
from mcmfh.fusion import RRF_K, tie_ranks
from mcmfh.index.codes import hamming_matrix, pack_codes
from mcmfh.io import atomic_write_json

CHANNELS = ("cross-modal", "lexical", "hybrid")


def ranked_row(ranked: Sequence[tuple[str, Any]], column: dict[str, int], n: int) -> np.ndarray:
    """A (n,) distance row from a list ranked best first as (id, tie key): its tie ranks, the rest tied below."""
    row = np.full(n, float(len(ranked) + 1))
    for (i, _), r in zip(ranked, tie_ranks([key for _, key in ranked]), strict=True):
        row[column[i]] = r
    return row


def scores(dist: np.ndarray, rel: np.ndarray) -> dict[str, float]:
    m = ranking_metrics(dist, rel, RankingOptions(p_at_k=(10,), radius=None))
    return {"map": float(m["map"]), "p_at_10": float(m["p_at_k"]["10"])}  # type: ignore[index]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archive", type=Path, help="an archive folder (with a text index: `mcmfh index repair` adds one)")
    ap.add_argument("features", type=Path, help="the feature cache the archive's run was trained on")
    ap.add_argument("--split", default="test", help="the query split (default: test)")
    ap.add_argument("--depth", type=int, default=HYBRID_DEPTH,
                    help="the top n each search returns and fuses (0: the whole database)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="write the table here")
    args = ap.parse_args(argv)

    archive = Archive.open(args.archive)
    feats = FeatureSet.load(args.features)
    if feats.manifest.get("encoder_version") != archive.manifest["encoder_version"]:
        sys.exit(f"error: {args.features}: encoded by another encoder than the archive's run")
    queries = feats.splits(args.split)
    if not len(queries):
        sys.exit(f"error: {args.features}: no items in split {args.split!r}")
    records = {r.id: r for r in dataset_from_source(feats.manifest.get("source", {})).records}
    captions = [records[i].text for i in queries.ids]
    vocab = {name: j for j, name in enumerate(feats.label_vocab)}
    codes, relaxed = archive.coder.hash_arrays("texts", queries.text)
    mode, codec = rerank_mode(archive.payload_codec, None), archive.payload_codec

    def multi_hot(label_sets: Sequence[Sequence[str]]) -> np.ndarray:
        out = np.zeros((len(label_sets), len(vocab)), bool)
        for row, labels in enumerate(label_sets):
            out[row, [vocab[x] for x in labels if x in vocab]] = True
        return out

    q_labels = queries.labels.astype(bool)
    images, texts = archive.indexes["images"], archive.indexes["texts"]
    img_items = images.get(images.info().keys)
    img_col = {it.id: j for j, it in enumerate(img_items)}
    img_rel = (q_labels.astype(np.float32) @ multi_hot([it.labels for it in img_items]).T.astype(np.float32)) > 0
    members: dict[str, list[Any]] = {}
    for it in texts.get(texts.info().keys):
        members.setdefault(it.study_id or it.id, []).append(it)
    study_ids = sorted(members)
    study_col = {s: j for j, s in enumerate(study_ids)}
    study_labels = multi_hot([sorted({x for it in members[s] for x in it.labels}) for s in study_ids])
    study_rel = (q_labels.astype(np.float32) @ study_labels.T.astype(np.float32)) > 0

    nq, depth = len(queries), args.depth or max(len(img_col), len(study_ids))
    dist = {(d, c): np.zeros((nq, len(img_col) if d == "t2i" else len(study_ids))) for d in ("t2i", "t2s")
            for c in CHANNELS}  # fmt: skip
    start = time.perf_counter()
    for q in range(nq):
        code, rel_q = codes[q], None if relaxed is None else relaxed[q]
        cross = search_items(images, code, rel_q, codec, mode, depth)
        lists = {
            "cross-modal": [(h.item.id, (h.distance, -(h.score or 0.0))) for h in cross],
            "lexical": [(it.id, -s) for it, s in images.lexical(captions[q], depth)],
            "hybrid": [(h.item.id, -(h.score or 0.0)) for h in
                       hybrid_items(images, captions[q], code, rel_q, codec, mode, depth)],
        }  # fmt: skip
        for c, ranked in lists.items():
            dist["t2i", c][q] = ranked_row(ranked, img_col, len(img_col))
        if archive.study_rule is None:
            continue
        cross_s = search_studies(archive.indexes, archive.study_rule, code, depth)
        lists = {
            "cross-modal": [(h.study_id, (h.distance, -(h.score or 0.0))) for h in cross_s],
            "lexical": [(s, -v) for s, v in lexical_studies(texts, captions[q], depth)],
            "hybrid": [(h.study_id, -(h.score or 0.0)) for h in
                       hybrid_studies(archive.indexes, archive.study_rule, captions[q], code, depth, cross_s)],
        }  # fmt: skip
        for c, ranked in lists.items():
            dist["t2s", c][q] = ranked_row(ranked, study_col, len(study_ids))
    took = time.perf_counter() - start

    rows = []
    full = hamming_matrix(pack_codes(codes), images.info().codes)  # its rows follow info().keys, as img_items does
    rows.append({"direction": "t2i", "channel": "cross-modal (all)", **scores(full, img_rel)})
    for d, rel in (("t2i", img_rel), ("t2s", study_rel)):
        if d == "t2s" and archive.study_rule is None:
            continue
        rows += [{"direction": d, "channel": c, **scores(dist[d, c], rel)} for c in CHANNELS]
    q_studies = set(queries.study_ids())
    shared = int(sum(1 for s in queries.study_ids() if s in members))
    result = {
        "archive": args.archive.name, "features": args.features.name, "split": args.split, "n_queries": nq,
        "n_images": len(img_col), "n_studies": len(study_ids), "depth": depth, "rrf_k": RRF_K,
        "rerank": mode, "shared_studies": shared, "query_studies": len(q_studies),
        "seconds_per_query": took / nq, "rows": rows,
    }  # fmt: skip
    print(f"{args.archive.name}: {nq} {args.split} captions -> {len(img_col)} images / {len(study_ids)} studies "
          f"(depth {depth}, RRF k {RRF_K:g}, rerank {mode}; {shared} queries' studies in the database)")  # fmt: skip
    print(f"{'direction':<10}{'channel':<20}{'mAP':>8}{'P@10':>8}")
    for r in rows:
        print(f"{r['direction']:<10}{r['channel']:<20}{r['map']:>8.4f}{r['p_at_10']:>8.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
