"""MCMFH and its ablations on cached MedPix 2.0 features: dev and test mAP@all, 3 seeds, 16/32/64 bits.

Protocol (../shared/reference/evaluation.md): train on `train`; model choice inside fit on `dev` (dev queries vs the
train set as database); reported: dev (dev queries vs train database) and test (test queries vs train + dev
database), mAP@all by Hamming ranking, ties broken by database order (stable sort), relevance = >= 1 shared label.
Each run is one JSON file under OUT/rows/ (rerunning skips finished runs, so shards can run in parallel); `--table`
prints the Markdown table (mean ± std over seeds).

    mcmfh encode --dataset medpix2 --data-root ../shared/data/medpix2 --encoder offline --out runs/medpix2-feats
    PYTHONPATH=src python benchmarks/mcmfh_medpix2.py --features runs/medpix2-feats \
        --out runs/mcmfh-bench --methods mcmfh,mcmfh-no-moe --bits 16,32,64 --seeds 0,1,2 --threads 1
    PYTHONPATH=src python benchmarks/mcmfh_medpix2.py --out runs/mcmfh-bench --table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mcmfh.evaluation.metrics import map_all, relevance
from mcmfh.factory import create_method
from mcmfh.features import FeatureSet
from mcmfh.index.codes import hamming_matrix, pack_codes
from mcmfh.io import atomic_write_json


def evaluate(method, queries: FeatureSet, database: FeatureSet) -> tuple[float, float]:
    q_img, q_txt = pack_codes(method.encode_images(queries.image)), pack_codes(method.encode_texts(queries.text))
    d_img, d_txt = pack_codes(method.encode_images(database.image)), pack_codes(method.encode_texts(database.text))
    rel = relevance(queries.labels, database.labels)
    i2t, t2i = map_all(hamming_matrix(q_img, d_txt), rel), map_all(hamming_matrix(q_txt, d_img), rel)
    return i2t, t2i


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    fs = FeatureSet.load(args.features)
    train, dev, test = fs.splits("train"), fs.splits("dev"), fs.splits("test")
    database = fs.splits("train", "dev")
    options = json.loads(args.options)
    rows = Path(args.out) / "rows"
    for method_name in args.methods.split(","):
        for bits in (int(b) for b in args.bits.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                path = rows / f"{method_name}-{bits}-{seed}.json"
                if path.exists():
                    continue
                method = create_method(method_name, bits=bits, seed=seed, **options)
                t0 = time.perf_counter()
                log = method.fit(train, dev)
                seconds = time.perf_counter() - t0
                dev_i2t, dev_t2i = evaluate(method, dev, train)
                test_i2t, test_t2i = evaluate(method, test, database)
                row = {
                    "method": method_name,
                    "bits": bits,
                    "seed": seed,
                    "options": options,
                    "dev_i2t_map_all": dev_i2t,
                    "dev_t2i_map_all": dev_t2i,
                    "i2t_map_all": test_i2t,
                    "t2i_map_all": test_t2i,
                    "train_seconds": round(seconds, 2),
                    "threads": args.threads,
                    "chosen_epochs": [log["stage1"]["chosen_epoch"], log["stage2"]["chosen_epoch"]],
                }
                atomic_write_json(path, row)
                print(json.dumps(row), flush=True)


def _cell(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows]
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def table(out: str) -> str:
    rows = [json.loads(p.read_text()) for p in sorted((Path(out) / "rows").glob("*.json"))]
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["bits"]), []).append(r)
    lines = [
        "| method | bits | seeds | dev i2t | dev t2i | test i2t | test t2i | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (method, bits), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        secs = np.mean([r["train_seconds"] for r in rs])
        lines.append(
            f"| {method} | {bits} | {len(rs)} | {_cell(rs, 'dev_i2t_map_all')} | {_cell(rs, 'dev_t2i_map_all')} | "
            f"{_cell(rs, 'i2t_map_all')} | {_cell(rs, 't2i_map_all')} | {secs:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", help="a MedPix 2.0 feature cache (mcmfh encode); needed unless --table")
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default="mcmfh,mcmfh-no-moe,mcmfh-no-dv,mcmfh-no-gateloss")
    ap.add_argument("--bits", default="16,32,64")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--options", default="{}", help="JSON dict of MCMFHConfig overrides (default: the recipe)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="only print the table of finished runs")
    args = ap.parse_args()
    if args.table:
        print(table(args.out))
    elif not args.features:
        ap.error("--features FOLDER is needed to run (a MedPix 2.0 feature cache made by mcmfh encode)")
    else:
        run(args)


if __name__ == "__main__":
    main()
