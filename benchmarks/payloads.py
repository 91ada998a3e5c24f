"""Which payload should two-stage search re-score 16-bit Hamming candidates with? (issue 25, item 4)

    python benchmarks/payloads.py --set medpix2=FEATS_MEDPIX --set vqa_rad=FEATS_VQA --work DIR --json OUT.json

For each feature cache and seed, a 16-bit MCMFH run and a 64-bit companion (same recipe and seed) are trained into
``--work`` (reused when present). The 16-bit codes pick the candidates, as an archive does; each payload re-scores
them:

- ``relaxed int8`` / ``relaxed int4``: the 16-bit hash head's relaxed output tanh(h) (int8: the default);
- ``tokens int8``: MCMFH's fused single-modality token (the fusion transformer's 128-d output, before the hash head);
- ``wide64 int8``: the 64-bit companion's relaxed output, a wider relaxed output trained by the same losses;
- ``code64``: the companion's 64-bit code.

Metrics, test queries against the train + dev database (labels: shared tag): tie-aware mAP@all and P@10 of the
ranking a search for k = 100 shows (``mcmfh.evaluation.rerank_eval``), and paired R@10 in the test split (does an
image find its own report; every gallery item re-scored, ties broken by Hamming distance). bytes/item = the 2-byte
code + the payload. merged images / texts: distinct database inputs that share their code + payload row with another
(grouped search folds those as copies of one item).

What it does not show: the search latency of wider payloads (re-scoring is a gather + dot product over at most
``RERANK_FLOOR`` candidates), and the companion's own training cost (a second model per archive).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.evaluation.metrics import RankingOptions, hamming_distances, ranking_metrics, relevance
from mcmfh.evaluation.paired import PairedGallery, paired_recall
from mcmfh.evaluation.rerank_eval import TwoStageRanker
from mcmfh.features import FeatureSet
from mcmfh.index.codes import pack_codes
from mcmfh.index.payload import PayloadCodec, make_codec
from mcmfh.index.rerank import rescored_ranking
from mcmfh.method import HashMethod
from mcmfh.training.runs import load_run, train_run

BITS, WIDE_BITS, K = 16, 64, 100
# (name, vector source, codec): the source reads (model, companion, features, is_image)
Source = Callable[[HashMethod, HashMethod, np.ndarray, bool], np.ndarray]
PAYLOADS: list[tuple[str, Source, str]] = [
    ("relaxed int8", lambda m, c, x, img: m.relaxed_images(x) if img else m.relaxed_texts(x), "int8"),
    ("relaxed int4", lambda m, c, x, img: m.relaxed_images(x) if img else m.relaxed_texts(x), "int4"),
    ("tokens int8", lambda m, c, x, img: m.image_tokens(x) if img else m.text_tokens(x), "int8"),
    ("wide64 int8", lambda m, c, x, img: c.relaxed_images(x) if img else c.relaxed_texts(x), "int8"),
    ("code64", lambda m, c, x, img: c.encode_images(x) if img else c.encode_texts(x), f"code{WIDE_BITS}"),
]


def run_of(work: Path, name: str, features: Path, bits: int, seed: int) -> HashMethod:
    out = work / f"{name}-{bits}-s{seed}"
    if not (out / "manifest.json").exists():
        train_run(features, "mcmfh", bits, seed, out, {"num_threads": 1})
    return load_run(out)[0]


def rescored_distances(codec: PayloadCodec, bits: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Distances for paired recall from rows [code | payload vector]: every item re-scored, ties by Hamming."""

    def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ham = hamming_distances(pack_codes(a[:, :bits] > 0.5), pack_codes(b[:, :bits] > 0.5))
        rows = codec.encode(b[:, bits:] > 0.5 if codec.binary else b[:, bits:])
        sims = codec.score(codec.prepare_queries(a[:, bits:]), np.broadcast_to(rows, (len(a), *rows.shape)))
        return rescored_ranking(ham, sims, np.ones(ham.shape, bool)).astype(np.float64)

    return distances


def merged(inputs: np.ndarray, codes: np.ndarray, rows: np.ndarray) -> float:
    """Distinct database inputs that share their code + payload with another one: grouped search folds such items
    as copies (``mcmfh.diversify.copy_key``), so a payload that merges distinct inputs hides them."""
    distinct = len(np.unique(inputs, axis=0))
    return float(distinct - len(np.unique(np.hstack([pack_codes(codes), rows]), axis=0)))


def measure(m: HashMethod, comp: HashMethod, fs: FeatureSet) -> dict[str, dict[str, float]]:
    q, db = fs.splits("test"), fs.splits("train", "dev")
    qi, dbi = q.subset(q.has_image), db.subset(db.has_image)
    inputs = {"qi": (qi.image, True), "qt": (q.text, False), "dbi": (dbi.image, True), "dbt": (db.text, False)}
    codes = {side: m.encode_images(x) if image else m.encode_texts(x) for side, (x, image) in inputs.items()}
    directions = (
        ("i2t", "qi", "dbt", relevance(qi.labels, db.labels)),
        ("t2i", "qt", "dbi", relevance(q.labels, dbi.labels)),
    )
    gallery = PairedGallery.of(q.text, q.has_image)
    out: dict[str, dict[str, float]] = {}
    for name, source, codec_name in PAYLOADS:
        vec = {side: source(m, comp, x, image) for side, (x, image) in inputs.items()}
        codec = make_codec(codec_name, vec["dbt"].shape[1])
        row: dict[str, float] = {"bytes": float(BITS // 8 + codec.bytes_per_item)}
        for d, qs, ds, rel in directions:
            ranker = TwoStageRanker(codes[qs], codes[ds], vec[qs], vec[ds], codec)
            keys, _ = ranker.rank(min(K, len(codes[ds])))
            figures = ranking_metrics(keys, rel, RankingOptions(p_at_k=(10,), radius=None))
            row[f"{d}_map"], row[f"{d}_p10"] = float(figures["map"]), float(figures["p_at_k"]["10"])
        stacked = {s_: np.hstack([codes[s_].astype(np.float32), vec[s_].astype(np.float32)]) for s_ in ("qi", "qt")}
        paired = paired_recall(gallery, stacked["qi"], stacked["qt"], rescored_distances(codec, BITS))
        row["i2t_r10"], row["t2i_r10"] = paired["i2t"]["r10"], paired["t2i"]["r10"]
        for side, key in (("dbi", "merged_i"), ("dbt", "merged_t")):
            rows = codec.encode(vec[side] > 0.5 if codec.binary else vec[side])
            row[key] = merged(inputs[side][0], codes[side], rows)
        out[name] = row
    return out


COLUMNS = ("bytes", "i2t_map", "t2i_map", "i2t_p10", "t2i_p10", "i2t_r10", "t2i_r10", "merged_i", "merged_t")


HEADER = (
    "| set | payload | bytes/item | mAP i2t | mAP t2i | P@10 i2t | P@10 t2i | paired R@10 i2t | paired R@10 t2i "
    "| merged images | merged texts |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def cell(values: np.ndarray, col: str) -> str:
    if col == "bytes":
        return f"{values.mean():.0f}"
    if col.startswith("merged"):
        return f"{values.mean():.1f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}"


def table(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    lines = [HEADER]
    for set_name, per_payload in results.items():
        for name, rows in per_payload.items():
            cells = [cell(np.array([r[col] for r in rows]), col) for col in COLUMNS]
            lines.append(f"| {set_name} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", required=True, metavar="NAME=FEATURES", help="a feature cache")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, required=True, help="folder for the trained runs (reused)")
    ap.add_argument("--json", type=Path, help="write the per-seed figures here")
    args = ap.parse_args(argv)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for spec in args.set:
        name, _, path = spec.partition("=")
        fs = FeatureSet.load(path)
        per: dict[str, list[dict[str, float]]] = {p[0]: [] for p in PAYLOADS}
        for seed in args.seeds:
            m = run_of(args.work, name, Path(path), BITS, seed)
            comp = run_of(args.work, name, Path(path), WIDE_BITS, seed)
            for payload, row in measure(m, comp, fs).items():
                per[payload].append({**row, "seed": seed})
            print(f"{name} seed {seed} done", file=sys.stderr, flush=True)
        results[name] = per
    print(table(results))
    if args.json:
        payload: dict[str, Any] = {
            "k": K,
            "bits": BITS,
            "wide_bits": WIDE_BITS,
            "seeds": args.seeds,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
