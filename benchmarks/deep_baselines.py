"""The deep-baselines comparison table (docs/baselines.md) from an experiment's results.json; one command.

    mcmfh experiment configs/medpix2-deep-baselines.yaml --out DIR [--set features=FEATURE_CACHE]
    python benchmarks/deep_baselines.py DIR/results.json --out benchmarks/results/medpix2_deep_baselines

Writes ``OUT.md`` (per code length: tie-aware mAP mean ± std per direction, MCMFH's ratio to the method, train
seconds, bytes per item, the dev-chosen epochs, the database codes' effective bits and how many seeds fail the
code-health rule of ``mcmfh.evaluation.code_health``; then the verdict at 16 bits) and ``OUT.json`` (the same numbers
and each row's dev choice, without the curves). Works on a partial run: a method or code length that has no rows
yet is left out, and the number of seeds is shown.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mcmfh.evaluation.report import mean_std
from mcmfh.io import atomic_write_json, atomic_write_text

UNSUPERVISED = ("djsrh", "jdsh", "dgcpn", "ucch")
SUPERVISED = ("dcmht-head", "dsph-head", "tripah-head", "mcmfh-supervised")
REFERENCE = ("mcmfh", "cca-itq")
TARGET_RATIO = 1.15  # issue 15: MCMFH >= 1.15x the best unsupervised method at 16 bits, both directions
DIRECTIONS = ("i2t", "t2i")


def block(method: str) -> str:
    return "supervised" if method in SUPERVISED else "unsupervised" if method in UNSUPERVISED else "reference"


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (method, bits): means, stds, seeds, train seconds, bytes/item, chosen epochs."""
    order = [*REFERENCE, *UNSUPERVISED, *SUPERVISED]
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], int(r["bits"])), []).append(r)
    out = []
    for (method, bits), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], _rank(order, kv[0][0]))):
        rs = sorted(rs, key=lambda r: r["seed"])
        entry: dict[str, Any] = {"method": method, "bits": bits, "block": block(method)}
        entry["seeds"] = [r["seed"] for r in rs]
        for d in DIRECTIONS:
            entry[f"{d}_mean"], entry[f"{d}_std"] = mean_std([float(r[f"{d}_map"]) for r in rs])
        entry["train_seconds"] = mean_std([float(r["train_seconds"]) for r in rs])[0]
        entry["bytes_per_item"] = rs[0]["bytes_per_item"]
        entry["chosen_epochs"] = [(r.get("dev_choice") or {}).get("chosen_epoch") for r in rs]
        health = [r["code_health"] for r in rs if r.get("code_health")]
        entry["collapsed_seeds"] = sum(bool(h.get("collapsed")) for h in health)
        entry["effective_bits"] = {  # mean over seeds of the database codes' entropy, image / text
            m: mean_std([float(h[m]["effective_bits"]) for h in health])[0] if health else None
            for m in ("image", "text")
        }
        out.append(entry)
    return out


def _rank(order: Sequence[str], method: str) -> int:
    return order.index(method) if method in order else len(order)


def _ratio(mc: Mapping[str, Any] | None, e: Mapping[str, Any], d: str) -> str:
    if mc is None or e["method"] == "mcmfh" or e[f"{d}_mean"] <= 0:
        return "–"
    return f"×{mc[f'{d}_mean'] / e[f'{d}_mean']:.2f}"


def markdown(entries: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for bits in sorted({e["bits"] for e in entries}):
        at = [e for e in entries if e["bits"] == bits]
        mc = next((e for e in at if e["method"] == "mcmfh"), None)
        lines += [
            f"### {bits} bits",
            "",
            "| method | block | seeds | i2t mAP | t2i mAP | mcmfh ÷ method i2t / t2i | train s | bytes/item | "
            "dev epoch | effective bits i / t | collapsed |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in at:
            cells = [f"{e[f'{d}_mean']:.3f} ± {e[f'{d}_std']:.3f}" for d in DIRECTIONS]
            epochs = ", ".join(str(x) for x in e["chosen_epochs"] if x is not None) or "–"
            eff = e["effective_bits"]
            eff_cell = "–" if eff["image"] is None else f"{eff['image']:.1f} / {eff['text']:.1f}"
            collapsed = f"{e['collapsed_seeds']} of {len(e['seeds'])}" if e["collapsed_seeds"] else ""
            lines.append(
                f"| {e['method']} | {e['block']} | {len(e['seeds'])} | {cells[0]} | {cells[1]} | "
                f"{_ratio(mc, e, 'i2t')} / {_ratio(mc, e, 't2i')} | {e['train_seconds']:.1f} | "
                f"{e['bytes_per_item']} | {epochs} | {eff_cell} | {collapsed} |"
            )
        lines.append("")
    lines += verdict(entries)
    return "\n".join(lines)


def verdict(entries: Sequence[Mapping[str, Any]], bits: int = 16) -> list[str]:
    """MCMFH against the best unsupervised deep baseline at ``bits``, per direction, and the target ratio."""
    at = {e["method"]: e for e in entries if e["bits"] == bits}
    mc = at.get("mcmfh")
    rivals = [at[m] for m in UNSUPERVISED if m in at]
    if mc is None or not rivals:
        return [f"Verdict at {bits} bits: not available (needs mcmfh and at least one unsupervised deep baseline)."]
    out = [f"Verdict at {bits} bits (target: mcmfh ≥ ×{TARGET_RATIO:.2f} the best unsupervised method, both ways):"]
    for d in DIRECTIONS:
        best = max(rivals, key=lambda e: e[f"{d}_mean"])
        ratio = mc[f"{d}_mean"] / best[f"{d}_mean"]
        out.append(
            f"- {d}: mcmfh {mc[f'{d}_mean']:.3f} vs best unsupervised {best['method']} {best[f'{d}_mean']:.3f}: "
            f"×{ratio:.2f} — {'meets' if ratio >= TARGET_RATIO else 'misses'} the target"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="results.json of a deep-baselines experiment")
    ap.add_argument("--out", type=Path, required=True, help="output stem: writes OUT.md and OUT.json")
    args = ap.parse_args(argv)
    try:
        rows = json.loads(args.results.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"{args.results}: not an experiment results.json ({e})")
    entries = summarise(rows)
    md = markdown(entries)
    dev = [{k: r.get(k) for k in ("method", "bits", "seed", "dev_choice")} for r in rows if r.get("dev_choice")]
    atomic_write_json(args.out.with_suffix(".json"), {"summary": entries, "dev_choice": dev})
    atomic_write_text(args.out.with_suffix(".md"), md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
