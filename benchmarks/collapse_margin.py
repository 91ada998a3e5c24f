"""How close a fit came to collapse: per seed, the share of MCMFH's stage-2 epochs whose codes were collapsed, whether
the collapse rescue ran and which pass it kept, and the test figures (docs/model.md, "Collapse rescue").

Health-first model choice (mcmfh.training.selection) keeps a healthy epoch whenever one exists; this script shows how
many existed. A suite row says "no collapsed seed" on three seeds; a setting whose epochs were collapsed 80% of the
time can still end collapsed on a fourth. Usage (the settings of ``benchmarks/robustness.py``):

    python benchmarks/collapse_margin.py --features FEATS --vqa-rad ../shared/data/vqa_rad --setting vqa-rad \\
        --seeds 0,1,2,3,4,5,6,7,8 --out DIR [--options '{"hash_on_codes": true}'] [--method mcmfh-no-moe]

Prints a table and writes ``DIR/collapse_margin_<setting>.json``. The tie-aware mAP and paired R@10 are those of
``benchmarks/robustness.py`` (queries = test, database = train + dev).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from mcmfh.evaluation.evaluate import evaluate_method, summary
from mcmfh.features import FeatureSet
from mcmfh.io import atomic_write_json
from mcmfh.manifest import source_digest
from mcmfh.training.runs import fit_method
from mcmfh.training.selection import collapsed_share
from robustness import SETTINGS, add_data_arguments, add_method_arguments, build_setting, method_options

FIGURES = ("i2t_map_all_tie_aware", "t2i_map_all_tie_aware", "i2t_paired_r10", "t2i_paired_r10")


def seed_row(fs: FeatureSet, method: str, bits: int, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    m, log = fit_method(fs, method, bits, seed, options)
    stage2 = log["stage2"]
    rescue = stage2.get("rescue")
    s = summary(evaluate_method(m, fs))
    return {
        "seed": seed,
        "collapsed_share": collapsed_share(stage2["history"]),
        "rescue": None if rescue is None else ("second pass kept" if rescue["chosen"] else "first pass kept"),
        "rescue_collapsed_share": None if rescue is None else collapsed_share(rescue["history"]),
        "chosen_epoch": stage2["chosen_epoch"],
        "chosen_collapsed": bool(stage2["collapsed"]),
        "test_collapsed": bool((s.get("code_health") or {}).get("collapsed", False)),
        **{k: float(s[k]) for k in FIGURES},
    }


def table(rows: list[dict[str, Any]]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.0%}"

    head = "| seed | collapsed epochs | rescue (its collapsed epochs) | chosen epoch | ends collapsed | mAP i2t / t2i "
    lines = [head + "| paired R@10 i2t / t2i |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        rescue = "-" if r["rescue"] is None else f"{r['rescue']} ({pct(r['rescue_collapsed_share'])})"
        lines.append(
            f"| {r['seed']} | {pct(r['collapsed_share'])} | {rescue} | {r['chosen_epoch']} | "
            f"{'**yes**' if r['test_collapsed'] else 'no'} | {r[FIGURES[0]]:.3f} / {r[FIGURES[1]]:.3f} | "
            f"{r[FIGURES[2]]:.3f} / {r[FIGURES[3]]:.3f} |"
        )
    mean = {k: float(np.mean([r[k] for r in rows])) for k in FIGURES}
    shares = [r["collapsed_share"] for r in rows if r["collapsed_share"] is not None]
    lines.append(
        f"| mean | {pct(float(np.mean(shares)) if shares else None)} | "
        f"{sum(r['rescue'] is not None for r in rows)} of {len(rows)} ran | | "
        f"{sum(r['test_collapsed'] for r in rows)} of {len(rows)} | {mean[FIGURES[0]]:.3f} / {mean[FIGURES[1]]:.3f} | "
        f"{mean[FIGURES[2]]:.3f} / {mean[FIGURES[3]]:.3f} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(ap)
    ap.add_argument("--setting", required=True, choices=SETTINGS)
    add_method_arguments(ap, "mcmfh, an ablation or mcmfh-supervised", seeds="0,1,2,3,4,5,6,7,8")
    args = ap.parse_args(argv)
    options = method_options(args)
    fs = build_setting(args.setting, FeatureSet.load(args.features), args.data_root, args.out, args.vqa_rad)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows.append(seed_row(fs, args.method, args.bits, seed, options))
        print(f"{args.setting} {args.method} seed {seed}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    text = table(rows)
    print(f"{args.setting}, {args.method}, {args.bits} bits, options {json.dumps(options)}\n\n{text}")
    atomic_write_json(
        args.out / f"collapse_margin_{args.setting}.json",
        {
            "setting": args.setting,
            "method": args.method,
            "bits": args.bits,
            "options": options,
            "code_digest": source_digest(),
            "rows": rows,
        },  # fmt: skip
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
