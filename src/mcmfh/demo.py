"""The whole chain in one call: data -> frozen features -> 16-bit models -> honest metrics -> example searches.

With no dataset given it generates a small built-in one (synthetic scans with findings, captions that describe them,
and labels), so it runs on a fresh machine with no network and no ../shared. Every step goes through the same
caches and artefacts as the individual commands, so a second run reuses the features.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.archive import Archive
from mcmfh.data import load_dataset
from mcmfh.data.records import Dataset
from mcmfh.data.synthetic import make_synthetic_dataset
from mcmfh.encode_features import encode_dataset
from mcmfh.encoders import get_encoder
from mcmfh.evaluation.evaluate import evaluate_method
from mcmfh.features import FeatureSet
from mcmfh.io import atomic_write_json
from mcmfh.manifest import MANIFEST_NAME, new_manifest
from mcmfh.progress import SILENT, Progress
from mcmfh.training.runs import load_run, train_run

KIND = "demo"
FIT_WORKERS_MAX = 2  # the demo's 2-core target; more processes would only add torch start-ups
ONE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


@dataclass
class DemoConfig:
    out: Path = Path("mcmfh-demo")
    dataset: str | None = None  # None: the built-in synthetic dataset
    data_root: Path | None = None
    encoder: str = "offline"
    methods: Sequence[str] = ("mcmfh", "cca-itq")
    bits: int = 16
    seed: int = 0  # data generation, examples, and the first training seed
    n_seeds: int = 3  # training seeds seed .. seed + n_seeds - 1: the table shows mean ± std (one seed is noisy)
    # Fits run in this many processes at once, one torch thread each (0: one per core, at most FIT_WORKERS_MAX);
    # 1 fits in this process, in turn.
    workers: int = 0
    n_synthetic: int = 600
    n_examples: int = 2  # example queries per direction
    top: int = 3  # results shown per example
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method name, e.g. {"mcmfh": {...}}


def _dataset(cfg: DemoConfig, log: Callable[[str], None]) -> Dataset:
    if cfg.data_root is None:
        root = cfg.out / "data"
        if not (root / "synthetic.csv").is_file():
            log(f"generating the built-in dataset ({cfg.n_synthetic} synthetic scans with captions) in {root}")
            make_synthetic_dataset(root, n=cfg.n_synthetic, seed=cfg.seed)
        return load_dataset("csv", root)
    return load_dataset(cfg.dataset or "csv", cfg.data_root, skip_bad=True)


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print, progress: Progress = SILENT) -> dict[str, Any]:
    """Run the chain and return the summary that is also written to ``out/demo.json``; ``progress`` counts the
    encoded items and the fits."""
    from mcmfh.outputs import check_output

    t_start = time.perf_counter()
    # A demo folder is rerun in place (features reused, runs and archive each replaced atomically); anything
    # else at --out is refused. Its artefacts name their own paths, so it is not rebuilt elsewhere and swapped.
    if check_output(cfg.out, KIND, resumable=True) == "new":
        cfg.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cfg.out / MANIFEST_NAME, new_manifest(KIND))
    ds = _dataset(cfg, log)
    log(f"dataset {ds.name}: {len(ds)} items {ds.split_counts()}, {len(ds.label_vocab)} labels ({ds.label_set})")

    t0 = time.perf_counter()
    features = encode_dataset(ds, get_encoder(cfg.encoder), cfg.out / f"features-{cfg.encoder}", progress=progress)
    log(f"features ({cfg.encoder}: image {features.image_dim}-d, text {features.text_dim}-d) "
        f"ready in {time.perf_counter() - t0:.1f}s")  # fmt: skip

    seeds = [cfg.seed + i for i in range(max(1, cfg.n_seeds))]
    fits = [_Fit(cfg.out / f"features-{cfg.encoder}", name, cfg.bits, seed,
                 cfg.out / "runs" / f"{name}-{cfg.bits}-s{seed}", cfg.method_options.get(name, {}))
            for name in cfg.methods for seed in seeds]  # fmt: skip
    t0 = time.perf_counter()
    _fit_all(fits, cfg.workers, progress)
    log(f"{len(fits)} fits ({len(cfg.methods)} method(s) x {len(seeds)} seeds) in {time.perf_counter() - t0:.1f}s")
    rows = []
    for name in cfg.methods:
        per_seed = []
        for fit in (f for f in fits if f.method == name):
            method, _ = load_run(fit.out)
            per_seed.append((evaluate_method(method, features), _read_json(fit.out / "train_log.json"), fit.out))
        rows.append(_row(name, cfg.bits, seeds, per_seed))
    log("")
    log(format_table(rows))
    line = verdict(rows, builtin=cfg.data_root is None)
    if line:
        log(line)

    best = rows[0]
    archive_dir = cfg.out / "archive"
    with Archive.build(best["run"], features, archive_dir, overwrite=True) as archive:
        examples = _examples(archive, ds, features, cfg)
    for ex in examples:
        log("")
        log(f"{ex['direction']}  query {ex['query_id']} [{', '.join(ex['query_labels'])}]: {ex['query']}")
        for h in ex["hits"]:
            mark = "+" if h["relevant"] else " "
            score = "" if h["score"] is None else f"s={h['score']:.2f} "
            log(f"  {mark} {score}d={h['distance']:<2} {h['id']:<12} [{', '.join(h['labels'])}] {h['text'][:80]}")
    summary = {"rows": rows, "verdict": line, "examples": examples, "archive": str(archive_dir),
               "seconds": time.perf_counter() - t_start}  # fmt: skip
    atomic_write_json(cfg.out / "demo.json", summary)
    log("")
    log(f"('+' = shares a label with the query; d = Hamming distance of the codes, s = re-scored similarity). "
        f"Done in {summary['seconds']:.0f}s; archive at {archive_dir}")  # fmt: skip
    return summary


@dataclass(frozen=True)
class _Fit:
    """One training run of the demo: what ``train_run`` needs (picklable, for a worker process)."""

    features: Path
    method: str
    bits: int
    seed: int
    out: Path
    options: dict[str, Any]


def _fit_one(fit: _Fit, threads: int | None) -> Path:
    if threads:
        import torch

        torch.set_num_threads(threads)  # the process's whole share of the cores
    return train_run(fit.features, fit.method, fit.bits, fit.seed, fit.out, fit.options)


def _fit_all(fits: Sequence[_Fit], workers: int, progress: Progress) -> None:
    """Train every fit; with more than one worker, in parallel processes of one torch thread each. The demo's fits
    are small (a 16-bit MCMFH on 420 pairs: about 10 s on one thread, 8.5 s on two idle cores); one thread per
    process keeps both cores busy and does not slow down when other work shares them, as two threads of one fit do
    (OpenMP threads wait for each other at every operation)."""
    import os

    n = workers or min(FIT_WORKERS_MAX, os.cpu_count() or 1, len(fits))
    with progress.task("demo fits", total=len(fits), unit="fit") as task:
        if n <= 1:
            for fit in fits:
                _fit_one(fit, None)
                task.update(1, last=f"{fit.method} s{fit.seed}")
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: this process has loaded torch and ONNX Runtime (their thread pools do not survive a fork). The
        # workers start with one BLAS thread too (read when numpy loads, so set in the environment they inherit):
        # with OpenBLAS's default of one per core, a CCA-ITQ fit of the demo set took 23 s, with one 4.8 s (load 7).
        saved = {k: os.environ.get(k) for k in ONE_THREAD_ENV}
        os.environ.update(ONE_THREAD_ENV)
        try:
            with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_fit_one, fit, 1): fit for fit in fits}
                for future in as_completed(futures):
                    future.result()  # a failed fit raises here, as it would in turn
                    task.update(1, last=f"{futures[future].method} s{futures[future].seed}")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _row(name: str, bits: int, seeds: list[int], per_seed: list[tuple[dict, dict, Path]]) -> dict[str, Any]:
    """One table row: figures averaged over the seeds (with their std); code health and the run of the first."""

    def mean(key: str) -> float:
        return float(np.mean([m[key] for m, _, _ in per_seed]))

    first, _, run_dir = per_seed[0]
    row: dict[str, Any] = {"method": name, "bits": bits, "seeds": seeds}
    for key in ("i2t_map", "t2i_map", "i2t_map_all", "t2i_map_all", "i2t_map_all_tie_aware", "t2i_map_all_tie_aware"):
        row[key] = mean(key)
    for d in ("i2t", "t2i"):
        row[f"{d}_map_std"] = float(np.std([m[f"{d}_map"] for m, _, _ in per_seed]))
        row[f"{d}_paired_r10"] = mean(f"{d}_paired_r10")
    row["chance_map"] = float(np.mean([m["i2t"]["chance_map"] for m, _, _ in per_seed]))
    row["code_health"] = summary_health(first["code_health"])
    row["train_seconds"] = float(np.mean([log.get("train_seconds") or 0.0 for _, log, _ in per_seed]))
    row["run"] = str(run_dir)
    return row


def verdict(rows: Sequence[dict[str, Any]], builtin: bool) -> str | None:
    """One line on where MCMFH stands against the other methods shown, said plainly when it is behind."""
    ours = next((r for r in rows if r["method"] == "mcmfh"), None)
    others = [r for r in rows if r is not ours]
    if ours is None or not others:
        return None
    figures = {"map": "mAP", "paired_r10": "paired R@10"}
    behind = [
        (r["method"], d, name)
        for key, name in figures.items()
        for r in others
        for d in ("i2t", "t2i")
        if r[f"{d}_{key}"] > ours[f"{d}_{key}"]
    ]
    if not behind:
        return "mcmfh leads every other method shown, in both directions (tie-aware mAP and paired R@10)."
    which = ", ".join(f"{m} {d} {name}" for m, d, name in behind)
    why = (
        " This synthetic set has templated captions and 20 region x finding classes in 420 training pairs; why "
        "MCMFH trails here is not yet established. On real reports it leads (README, MedPix 2.0)."
        if builtin
        else ""
    )
    return f"mcmfh is below {which} on this dataset (tie-aware, mean over seeds).{why}"


def summary_health(health: dict[str, Any] | None) -> dict[str, Any] | None:
    """Code health without the per-bit lists (what the demo table shows)."""
    if health is None:
        return None
    return {k: ({kk: vv for kk, vv in v.items() if kk != "bit_balance"} if isinstance(v, dict) else v)
            for k, v in health.items()}  # fmt: skip


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Headline first: tie-aware mAP (order-independent, mean ± std over seeds), then paired R@10 (does an image
    find its own report, and back: collapse cannot game it); stable-order figures secondary; code health of the
    first seed."""
    head = (
        "| method | bits | i2t mAP | t2i mAP | chance | i2t / t2i paired R@10 | codes image / text (effective bits) | "
        "i2t / t2i mAP stable order | train s |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        h = r.get("code_health")
        codes = (
            "–"
            if not h
            else (
                f"{h['image']['distinct']} ({h['image']['effective_bits']:.1f}) / "
                f"{h['text']['distinct']} ({h['text']['effective_bits']:.1f})"
                + (" **collapsed**" if h["collapsed"] else "")
            )
        )
        spread = {d: f" ± {r[f'{d}_map_std']:.3f}" if f"{d}_map_std" in r else "" for d in ("i2t", "t2i")}
        lines.append(
            f"| {r['method']} | {r['bits']} | {r['i2t_map']:.3f}{spread['i2t']} | {r['t2i_map']:.3f}{spread['t2i']} | "
            f"{r['chance_map']:.3f} | {r['i2t_paired_r10']:.3f} / {r['t2i_paired_r10']:.3f} | "
            f"{codes} | {r['i2t_map_all']:.3f} / {r['t2i_map_all']:.3f} | {r['train_seconds']:.1f} |"
        )
    return "\n".join(lines)


def _examples(archive: Archive, ds: Dataset, features: FeatureSet, cfg: DemoConfig) -> list[dict[str, Any]]:
    """A few test queries per direction, picked with a fixed seed, with their top results."""
    by_id = {r.id: r for r in ds.records}
    test = [by_id[i] for i in features.splits("test").ids]
    rng = np.random.default_rng(cfg.seed)
    picks = [test[i] for i in rng.choice(len(test), size=min(2 * cfg.n_examples, len(test)), replace=False)]
    out = []
    for j, rec in enumerate(picks):
        if j % 2 == 0 and rec.image is not None:
            direction, query, hits = "image->text", str(rec.image.name), archive.search_image(rec.image, cfg.top)
        else:
            direction, query, hits = "text->image", rec.text, archive.search_text(rec.text, cfg.top)
        out.append({
            "direction": direction,
            "query_id": rec.id,
            "query": query,
            "query_labels": list(rec.labels),
            "hits": [{"id": h.item.id, "distance": h.distance, "score": h.score, "labels": list(h.item.labels),
                      "text": h.item.text, "relevant": bool(set(h.item.labels) & set(rec.labels))}
                     for h in hits],
        })  # fmt: skip
    return out


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
