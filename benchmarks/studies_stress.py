"""Study search off the happy path: where a fused study code should be checked before it is trusted.

MedPix cases are an easy case for one code per study: every member of a case carries the same labels. This script
re-groups a feature cache with studies and scores MCMFH's fused study code against the no-fusion rules
(``mcmfh.evaluation.study_eval``) in settings that real archives have:

- ``cases``: the studies as given (MedPix: its cases);
- ``shared_report``: every member of a study carries one report (the first member's text), as Open-i's frontal and
  lateral images share one report;
- ``merged_cases``: two studies of the same split merged into one, so a study is about two topics (the union of
  their labels), as an exam covering several findings.

Prints a table and writes JSON (and the table as Markdown beside it). Example::

    python benchmarks/studies_stress.py --features FEATS --out benchmarks/results/studies_stress_16bit.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mcmfh.evaluation.study_eval import evaluate_modes
from mcmfh.factory import create_method
from mcmfh.features import FeatureSet

SETTINGS = ("cases", "shared_report", "merged_cases")
RULES = ("fused", "min", "sum")


def regroup(fs: FeatureSet, setting: str, seed: int = 0) -> FeatureSet:
    study = fs.study_ids().copy()
    text = fs.text
    if setting == "shared_report":
        first: dict[str, int] = {}
        for i, s in enumerate(study):
            first.setdefault(str(s), i)
        text = fs.text[[first[str(s)] for s in study]]
    elif setting == "merged_cases":
        rng = np.random.default_rng(seed)
        for split in np.unique(fs.split):
            here = fs.split == split
            cases = sorted(set(study[here]))
            rng.shuffle(cases)
            merged = {c: f"{split}-merged{j // 2}" for j, c in enumerate(cases)}
            study[here] = [merged[c] for c in study[here]]
    elif setting != "cases":
        raise SystemExit(f"unknown setting {setting!r}; known: {', '.join(SETTINGS)}")
    return FeatureSet(
        fs.ids, fs.image, text, fs.labels, fs.label_vocab, fs.split, fs.has_image, fs.manifest, study=study
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", required=True, help="a feature cache with studies (mcmfh encode)")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--bits", type=int, default=16)
    ap.add_argument("--out", required=True, help="JSON to write (the Markdown table goes beside it)")
    args = ap.parse_args()
    fs = FeatureSet.load(args.features)
    if not fs.has_studies:
        raise SystemExit(f"{args.features}: the cache has no studies (encode a dataset with a study column)")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for setting in args.settings.split(","):
        data = regroup(fs, setting)
        for seed in seeds:
            m = create_method("mcmfh", args.bits, seed, num_threads=1)
            m.fit(data.splits("train"), data.splits("dev"))
            r = evaluate_modes(m, data, ["test"], ["train", "dev"], ["i2s", "t2s"])
            row = {"setting": setting, "seed": seed, **{k: v for k, v in r.items() if k.endswith("_map")}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = [
        f"| setting | {' | '.join(f'{m} {r}' for m in ('i2s', 't2s') for r in RULES)} |",
        "|" + "---|" * (1 + 2 * len(RULES)),
    ]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == setting]
        cells = []
        for mode in ("i2s", "t2s"):
            for rule in RULES:
                v = np.array([r[f"{mode}_{rule}_map"] for r in rs])
                cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}")
        lines.append(f"| {setting} | {' | '.join(cells)} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bits": args.bits, "seeds": seeds, "rows": rows}, indent=1), encoding="utf-8")
    header = (
        f"# Study search stress settings (MCMFH, {args.bits} bits, seeds {args.seeds}, tie-aware mAP@all)\n\n"
        "fused: one study code; min / sum: no fusion, every member's image and text code "
        "(benchmarks/studies_stress.py).\n\n"
    )
    out.with_suffix(".md").write_text(header + table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
