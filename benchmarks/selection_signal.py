"""Can model choice on dev buy a figure on test? Per stage-2 epoch of MCMFH's fits, the dev and the test figures side
by side, and how well the first predicts the second (docs/model.md, "What dev can choose").

Model choice keeps the epoch with the best dev score (``mcmfh.training.selection``). That can only buy a test figure
whose differences between epochs dev can see. For every evaluated stage-2 epoch (both passes when the collapse rescue
runs) this script reads, with the live network after the epoch:

- dev: tie-aware mAP of dev queries against the train set (the score model choice uses) and paired R@10 of the dev
  split as its own 1:1 gallery;
- test: the suite's figures (``benchmarks/robustness.py``: queries = test, database = train + dev), and the health
  of the train + dev codes (those model choice reads).

Per setting it prints, over the healthy epochs of each seed (means over seeds): the correlation of dev and test mAP,
of dev and test paired R@10, the spread of test paired R@10 over epochs beside its sampling error (binomial, over the
test split's queries), and the test figures of three choices: the default (health first, then dev mAP), dev mAP +
dev paired R@10, and the best test epoch (an oracle: no rule can reach it; it bounds what any choice could buy).
Usage (the settings of ``benchmarks/robustness.py``):

    python benchmarks/selection_signal.py --features FEATS --vqa-rad ../shared/data/vqa_rad \\
        --settings vqa-rad,stress-panels,medpix-train60 --seeds 0,1,2 --out DIR

Writes ``DIR/selection_signal.json`` (every epoch's figures) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from mcmfh.evaluation.evaluate import evaluate_method, summary
from mcmfh.factory import create_method
from mcmfh.features import FeatureSet
from mcmfh.io import atomic_write_json
from mcmfh.manifest import source_digest
from robustness import SETTINGS, add_data_arguments, add_method_arguments, build_setting, method_options

FIGURES = ("i2t_map_all_tie_aware", "t2i_map_all_tie_aware", "i2t_paired_r10", "t2i_paired_r10")


def epoch_figures(m: Any, fs: FeatureSet) -> dict[str, float]:
    """Dev (queries dev, database train) and test (queries test, database train + dev) figures of the live model."""
    dev = summary(evaluate_method(m, fs, queries=("dev",), database=("train",)))
    test = summary(evaluate_method(m, fs))
    return {
        # the codes of train + dev, the items whose health model choice reads (mcmfh.training.selection)
        "healthy": not (test.get("code_health") or {}).get("collapsed", False),
        "dev_map": 0.5 * (dev[FIGURES[0]] + dev[FIGURES[1]]),
        "dev_r10": 0.5 * (dev[FIGURES[2]] + dev[FIGURES[3]]),
        **{f"test_{k}": float(test[k]) for k in FIGURES},
    }


def fit_seed(fs: FeatureSet, method: str, bits: int, seed: int, options: dict[str, Any]) -> list[dict[str, Any]]:
    """One fit; its stage-2 epochs in the order they ran (a rescue pass and label-weight back-off fits included),
    each with its figures."""
    m = create_method(method, bits=bits, seed=seed, **options)
    seen: list[dict[str, Any]] = []

    def callback(stage: int, epoch: int) -> None:
        if stage == 2:
            seen.append({"epoch": epoch, **epoch_figures(m, fs)})

    m.callback = callback
    m.fit(fs.splits("train"), fs.splits("dev"))
    return seen


def healthy(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The epochs model choice can keep: the healthy ones, or all when none is (mcmfh.training.selection)."""
    return [r for r in rows if r["healthy"]] or rows


def choose(rows: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The epoch a rule keeps: health first, then ``dev_map``, ``dev_map_recall`` (their sum) or ``oracle`` (the
    best mean test mAP + paired R@10: a bound, not a rule)."""
    keys = {
        "dev_map": lambda r: r["dev_map"],
        "dev_map_recall": lambda r: r["dev_map"] + r["dev_r10"],
        "oracle": lambda r: sum(r[f"test_{k}"] for k in FIGURES),
    }
    return max(healthy(rows), key=keys[rule])


def correlation(a: list[float], b: list[float]) -> float:
    """Pearson's r; 0 when either side does not vary (nothing to predict, or no signal)."""
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def signal(seeds: dict[int, list[dict[str, Any]]], n_test: int) -> dict[str, Any]:
    """Per setting, means over seeds of: dev-test correlations, test R@10 spread over epochs and its sampling error,
    and the test figures of each rule."""
    per_seed = []
    for rows in seeds.values():
        ok = healthy(rows)
        test_map = [0.5 * (r[f"test_{FIGURES[0]}"] + r[f"test_{FIGURES[1]}"]) for r in ok]
        test_r10 = [0.5 * (r[f"test_{FIGURES[2]}"] + r[f"test_{FIGURES[3]}"]) for r in ok]
        p = float(np.mean(test_r10))
        per_seed.append({
            "healthy_epochs": len(ok),
            "corr_map": correlation([r["dev_map"] for r in ok], test_map),
            "corr_r10": correlation([r["dev_r10"] for r in ok], test_r10),
            "r10_spread": float(np.std(test_r10)),
            "r10_sampling_error": float(np.sqrt(p * (1 - p) / max(n_test, 1))),
        })  # fmt: skip
    out: dict[str, Any] = {k: float(np.mean([s[k] for s in per_seed])) for k in per_seed[0]}
    for rule in ("dev_map", "dev_map_recall", "oracle"):
        picked = [choose(rows, rule) for rows in seeds.values()]
        out[rule] = [float(np.mean([r[f"test_{k}"] for r in picked])) for k in FIGURES]
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| setting | healthy epochs | r(dev, test) mAP | r(dev, test) paired R@10 | test R@10 spread over epochs "
        "(sampling error) | dev mAP (default): mAP i2t / t2i, R@10 i2t / t2i | dev mAP + R@10 | best test epoch "
        "(oracle) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def figs(x: list[float]) -> str:
        return f"{x[0]:.3f} / {x[1]:.3f}, {x[2]:.3f} / {x[3]:.3f}"

    for setting, s in results.items():
        lines.append(
            f"| {setting} | {s['healthy_epochs']:.0f} | {s['corr_map']:+.2f} | {s['corr_r10']:+.2f} | "
            f"{s['r10_spread']:.3f} ({s['r10_sampling_error']:.3f}) | {figs(s['dev_map'])} | "
            f"{figs(s['dev_map_recall'])} | {figs(s['oracle'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(ap)
    ap.add_argument("--settings", default="vqa-rad,stress-panels,medpix-train60")
    add_method_arguments(ap, "mcmfh or an ablation", seeds="0,1,2")
    args = ap.parse_args(argv)
    if args.method == "mcmfh-supervised":  # its label-weight back-off refits other instances, which the callback misses
        ap.error("--method: mcmfh or one of its ablations, not mcmfh-supervised")
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        ap.error(f"--settings: unknown {', '.join(unknown)}; expected some of {', '.join(SETTINGS)}")
    options = method_options(args)
    features = FeatureSet.load(args.features)
    epochs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    results: dict[str, dict[str, Any]] = {}
    for setting in settings:
        fs = build_setting(setting, features, args.data_root, args.out, args.vqa_rad)
        epochs[setting] = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            epochs[setting][seed] = fit_seed(fs, args.method, args.bits, seed, options)
            print(f"{setting} seed {seed}: {len(epochs[setting][seed])} epochs", file=sys.stderr, flush=True)
        results[setting] = signal(epochs[setting], len(fs.splits("test")))
    print(f"{args.method}, {args.bits} bits, seeds {args.seeds}, options {json.dumps(options)}\n\n{table(results)}")
    atomic_write_json(
        args.out / "selection_signal.json",
        {"method": args.method, "bits": args.bits, "options": options, "code_digest": source_digest(),
         "results": results, "epochs": {s: {str(k): v for k, v in e.items()} for s, e in epochs.items()}},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
