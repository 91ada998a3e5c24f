"""Commands that train and evaluate methods: ``train``, ``evaluate`` and ``experiment``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mcmfh.cli.app import app
from mcmfh.cli.inputs import QUIET_HELP, progress_for
from mcmfh.errors import MCMFHError
from mcmfh.index.payload import DEFAULT_PAYLOAD


def parse_kv(pairs: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; values stay strings (each method coerces its own types)."""
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise MCMFHError(f"--option {p!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


@app.command()
def train(
    features: Path = typer.Option(..., "--features", help="Feature cache folder (from `mcmfh encode`)."),
    method: str = typer.Option(..., "--method", help="Registered method name (e.g. mcmfh, ucmfh, cca-itq)."),
    bits: int = typer.Option(16, "--bits", help="Code length."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Random seed (numpy accepts 0 to 2**32-1)."),
    out: Path = typer.Option(..., "--out", help="Run folder to write (must not exist, or be a run: see --overwrite)."),
    option: list[str] = typer.Option([], "--option", help="Method option key=value (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder (atomically)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Fit a method on the train split (dev for model choice) and save it as a run folder."""
    from mcmfh.evaluation.code_health import collapse_warning
    from mcmfh.model.trainer import rescue_line
    from mcmfh.outputs import check_output
    from mcmfh.training.advice import training_size_note
    from mcmfh.training.runs import train_run

    check_output(out, "run", overwrite=overwrite)  # before the slow fit

    run = train_run(features, method, bits, seed, out, parse_kv(option), progress_for(quiet))
    log = json.loads((run / "train_log.json").read_text(encoding="utf-8"))
    typer.echo(f"trained {method} ({bits} bits, seed {seed}) in {log['train_seconds']:.1f}s -> {run}")
    if "labelled_train_items" in log:  # supervised mode: say which labels it read and what it did without them
        label_set = json.loads((run / "manifest.json").read_text(encoding="utf-8")).get("label_set")
        typer.echo(
            f"supervised: read the labels of label set {label_set!r} on {log['labelled_train_items']} of "
            f"{log['n_train']} training items (items without labels trained the pairing terms only)"
        )
    warning = collapse_warning(log.get("code_health") or {}, "the codes of train + dev")
    for line in (rescue_line(log), warning, training_size_note(method, int(log["n_train"]))):
        if line:
            typer.echo(line, err=True)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="Run folder from `mcmfh train`."),
    features: Path = typer.Option(..., "--features", help="Feature cache to evaluate on (same encoder as training)."),
    out: Path | None = typer.Option(None, "--out", help="Metrics JSON (default: RUN_DIR/metrics.json)."),
    queries: str = typer.Option("test", "--queries", help="Query splits, comma-separated."),
    database: str = typer.Option("train,dev", "--database", help="Database splits, comma-separated."),
    k: int = typer.Option(50, "--k", help="K of mAP@K (UCMFH definition)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out metrics JSON."),
    rerank: str = typer.Option(
        DEFAULT_PAYLOAD,
        "--rerank",
        help="Two-stage payloads, comma-separated (int8, int4, float16, float32, code64), or none. Hashing methods "
        "with a relaxed output only; others are evaluated one-stage.",
    ),
    rerank_k: int = typer.Option(100, "--rerank-k", help="Results per query of the bounded two-stage search."),
    oversample: float = typer.Option(10.0, "--oversample", help="Stage-1 candidate budget, in multiples of k."),
    modes: str = typer.Option(
        "i2t,t2i",
        "--modes",
        help="Evaluation modes, comma-separated: i2t, t2i (always), i2s, t2s (queries against the database's "
        "studies), i2i, t2t.",
    ),
) -> None:
    """Evaluate a run: metrics JSON plus PR and P@K plots (PNG) in the run folder."""
    from mcmfh.evaluation.code_health import health_line
    from mcmfh.evaluation.evaluate import evaluate_method, plot_curves
    from mcmfh.evaluation.metrics import RankingOptions
    from mcmfh.evaluation.rerank_eval import RerankOptions
    from mcmfh.evaluation.study_eval import PAIR_MODES, check_modes
    from mcmfh.features import FeatureSet
    from mcmfh.index.payload import code_bits
    from mcmfh.io import atomic_write_json
    from mcmfh.training.runs import check_features, load_run

    mode_list = check_modes([m.strip() for m in modes.split(",") if m.strip()])  # before anything is read

    payloads = [p.strip() for p in rerank.split(",") if p.strip()]
    if not payloads:
        raise MCMFHError("--rerank: give payload names (e.g. int8) or none")
    options = None if payloads == ["none"] else RerankOptions(tuple(payloads), rerank_k, oversample)
    if out is not None:
        _check_json_out(out, overwrite)
    method, manifest = load_run(run_dir)
    for p in payloads:
        b = code_bits(p)
        if b is not None and b != method.bits:  # before the features are read
            raise MCMFHError(
                f"--rerank {p}: needs the same method fitted at {b} bits; `mcmfh experiment` fits it "
                f"(rerank: {{payloads: [{p}]}})"
            )
    feats = FeatureSet.load(features)
    check_features(manifest, feats, run_dir)
    if method.continuous or not method.has_relaxed:
        options = None  # nothing to re-score with: one-stage only (said below)
    metrics = evaluate_method(
        method,
        feats,
        tuple(queries.split(",")),
        tuple(database.split(",")),
        RankingOptions(map_k=k),
        rerank=options,
        modes=mode_list,
    )
    atomic_write_json(out or run_dir / "metrics.json", metrics)
    plot_curves({method.name: metrics}, run_dir, title=f"{method.name} {method.bits} bits")
    typer.echo(
        f"{method.name} {method.bits} bits: mAP (tie-aware) i2t {metrics['i2t_map']:.4f} t2i {metrics['t2i_map']:.4f}"
        f" | mAP@{k} (UCMFH, tie-aware) {metrics[f'i2t_map_{k}_tie_aware']:.4f} / "
        f"{metrics[f't2i_map_{k}_tie_aware']:.4f}"
        f" | chance {metrics['i2t_chance_map']:.4f}"
        f" | stable-order mAP@all {metrics['i2t_map_all']:.4f} / {metrics['t2i_map_all']:.4f}"
    )
    for d in ("i2t", "t2i"):
        p = metrics["paired"].get(d)
        if p:
            typer.echo(
                f"paired {d} (own report / own images among {p['gallery']} in the query split, tie-aware): "
                f"R@1 {p['r1']:.3f} R@5 {p['r5']:.3f} R@10 {p['r10']:.3f}, median rank {p['median_rank']:.1f}"
            )
    if metrics.get("code_health"):
        typer.echo(f"codes: {health_line(metrics['code_health'])}")
    for name in metrics.get("two_stage", {}):
        typer.echo(
            f"two-stage {name} ({metrics[f'bytes_2s_{name}']} bytes/item, k {rerank_k}, oversample {oversample:g}):"
            f" mAP i2t {metrics[f'i2t_map_2s_{name}']:.4f} t2i {metrics[f't2i_map_2s_{name}']:.4f}"
            f" | P@10 {metrics[f'i2t_p10_2s_{name}']:.4f} / {metrics[f't2i_p10_2s_{name}']:.4f}"
            f" | P@20 {metrics[f'i2t_p20_2s_{name}']:.4f} / {metrics[f't2i_p20_2s_{name}']:.4f}"
            f" | every item re-scored {metrics[f'i2t_map_2s_{name}_all']:.4f} / {metrics[f't2i_map_2s_{name}_all']:.4f}"
        )
    for mode in (m for m in mode_list if m not in PAIR_MODES and f"{m}_map" in metrics):
        rules = [r for r in ("fused", "fused_2s", "min", "sum") if f"{mode}_{r}_map" in metrics]
        detail = ", ".join(f"{r} {metrics[f'{mode}_{r}_map']:.4f}" for r in rules)
        p10 = [(r, metrics.get(f"{mode}_{r}_p10")) for r in rules]
        detail += "; P@10 " + ", ".join(f"{r} {v:.4f}" for r, v in p10 if v is not None) if rules else ""
        typer.echo(f"{mode}: mAP (tie-aware) {metrics[f'{mode}_map']:.4f}" + (f" ({detail})" if detail else ""))
    if payloads != ["none"] and "two_stage" not in metrics:
        typer.echo(f"two-stage: none ({method.name} has no relaxed output to re-score with)")


def _check_json_out(path: Path, overwrite: bool) -> None:
    """A metrics file is replaced only with --overwrite, and only if it is a JSON object (what we write)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise MCMFHError(f"--out {path}: exists and is not a file; choose another --out (nothing was changed)")
    if not path.exists():
        return
    if not overwrite:
        raise MCMFHError(f"--out {path}: already exists; pass --overwrite to replace it")
    try:
        ok = isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise MCMFHError(f"--out {path}: is not a metrics JSON file; choose another --out (it is never replaced)")


@app.command()
def experiment(
    config: Path = typer.Argument(..., help="Experiment YAML (e.g. configs/medpix2.yaml)."),
    out: Path = typer.Option(..., "--out", help="Output folder; rerunning resumes and skips finished rows."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config field, KEY=VALUE (YAML value; dotted keys for nested), repeatable."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start afresh: build a new experiment beside --out and swap it in when done."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Run methods x bits x seeds from a config; writes results.json, results.md and plots."""
    from mcmfh.training.experiment import parse_overrides, run_experiment

    path = run_experiment(config, out, log=typer.echo, overrides=parse_overrides(set_), overwrite=overwrite,
                          progress=progress_for(quiet))  # fmt: skip
    typer.echo(f"results: {path.resolve()}\nresults.md: {(path.parent / 'results.md').resolve()}")
