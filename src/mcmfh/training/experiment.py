"""Experiments: methods x bits x seeds from a YAML config, resumable, with results.json, results.md and plots.

Each finished row is saved on its own (``DIR/rows/<method>-<bits>-<seed>.json``, atomically) together with a key of
everything that determines it (feature identity, method options, protocol), so a second run skips rows that are done
and recomputes only rows whose inputs changed. Features come from ``features:`` (an existing cache) or are encoded
once through the feature cache (``cache_dir``, default ``DIR/features``) and never recomputed when they match.
Relative paths in the config resolve against the config file's folder.

``rerank:`` adds the two-stage ranking (``mcmfh.evaluation.rerank_eval``) to every row of a hashing method with a
relaxed output:
``{payloads: [int8], k: 100, oversample: 10}`` (the default when the key is absent: ``DEFAULT_PAYLOAD``), or
``none`` to turn it off.
Rows of other methods (continuous, ``chance``, ``ucmfh``) get none. A row's two-stage settings are part of its
cache key only for methods it applies to, so a resumed experiment recomputes exactly the rows whose two-stage
figures are missing or were made with other settings, and keeps every other row.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcmfh.errors import MCMFHError
from mcmfh.evaluation.evaluate import evaluate_method, summary
from mcmfh.evaluation.metrics import RankingOptions
from mcmfh.evaluation.rerank_eval import RerankOptions, needed_code_bits
from mcmfh.evaluation.study_eval import PAIR_MODES, check_modes
from mcmfh.factory import available_methods, create_method
from mcmfh.features import FeatureSet
from mcmfh.io import atomic_dir, atomic_write_json
from mcmfh.manifest import MANIFEST_NAME, fingerprint, new_manifest
from mcmfh.progress import SILENT, Progress
from mcmfh.training.runs import feature_identity, fit_method, save_run

ROWS_DIR = "rows"
KIND = "experiment"
SPLITS = ("train", "dev", "test")


@dataclass
class ExperimentConfig:
    methods: list[str]
    dataset: str | None = None
    data_root: Path | None = None  # dataset folder, needed unless ``features`` is given
    features: Path | None = None  # an existing feature cache: used as is
    cache_dir: Path | None = None  # where features are encoded (default: <out>/features)
    encoder: str = "offline"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    encode_batch_size: int = 32
    dataset_options: dict[str, Any] = field(default_factory=dict)  # loader options, e.g. openi {layout: nlm}
    skip_bad: bool = False  # leave out (and list) bad items instead of failing; real archives have a few
    label_set: str | None = None
    queries: list[str] = field(default_factory=lambda: ["test"])
    database: list[str] = field(default_factory=lambda: ["train", "dev"])
    bits: list[int] = field(default_factory=lambda: [16, 32, 64])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    seeds_by_bits: dict[int, list[int]] = field(default_factory=dict)  # e.g. {64: [0]} to save time at long codes
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    map_k: int = 50
    plot_bits: int = 16  # bits of the all-methods PR-curve plot
    save_runs: bool = False  # also keep each fitted method as a run folder (UCMFH weighs ~90 MB)
    rerank: RerankOptions | None = field(default_factory=RerankOptions)  # None: one-stage only
    # Evaluation modes (mcmfh.evaluation.study_eval): i2t and t2i always; i2s / t2s (queries vs studies), i2i / t2t add
    # theirs.
    modes: list[str] = field(default_factory=lambda: list(PAIR_MODES))

    def grid(self) -> list[tuple[str, int, int]]:
        return [(m, b, s) for b in self.bits for m in self.methods for s in self.seeds_by_bits.get(b, self.seeds)]


def _err(path: Path, msg: str) -> MCMFHError:
    return MCMFHError(f"{path}: {msg}")


def _list(value: Any, typ: type, key: str, path: Path) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, typ) and not isinstance(v, bool) for v in items):
        raise _err(path, f"field {key!r}: expected a non-empty list of {typ.__name__}, got {value!r}")
    return items


PATH_FIELDS = ("data_root", "features", "cache_dir")
RERANK_KEYS = ("payloads", "k", "oversample")


def parse_rerank(value: Any, path: Path) -> RerankOptions | None:
    """The ``rerank:`` field: ``none`` / ``false`` / null (off), ``true`` (defaults), or a mapping of
    ``payloads`` (a name or a list), ``k`` and ``oversample``."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if value is True:
        return RerankOptions()
    if not isinstance(value, dict):
        raise _err(path, f"field 'rerank': expected none or a mapping {{payloads: [int8], k: 100}}, got {value!r}")
    unknown = sorted(set(value) - set(RERANK_KEYS))
    if unknown:
        raise _err(
            path, f"field 'rerank': unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(RERANK_KEYS)}"
        )
    kwargs: dict[str, Any] = {}
    if "payloads" in value:
        kwargs["payloads"] = tuple(_list(value["payloads"], str, "rerank.payloads", path))
    if "k" in value:
        k = value["k"]
        if not isinstance(k, int) or isinstance(k, bool):
            raise _err(path, f"field 'rerank.k': expected a positive integer, got {k!r}")
        kwargs["k"] = k
    if "oversample" in value:
        o = value["oversample"]
        if not isinstance(o, (int, float)) or isinstance(o, bool):
            raise _err(path, f"field 'rerank.oversample': expected a number >= 1, got {o!r}")
        kwargs["oversample"] = float(o)
    try:
        return RerankOptions(**kwargs)
    except MCMFHError as e:
        raise _err(path, f"field {e}") from e


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["data_root=/x", "bits=[16]", "method_options.mcmfh.epochs_stage2=2"]`` -> a mapping; values are YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MCMFHError(f"--set {item!r}: expected KEY=VALUE (e.g. data_root=../data/openi)")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise MCMFHError(f"--set {item!r}: value is not valid YAML ({e})") from e
    return out


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Set ``key`` or dotted ``key.sub.sub`` in the raw config; override paths are relative to the cwd, not the
    config's folder (they come from the command line)."""
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] in PATH_FIELDS and len(parts) == 1 and value is not None:
            value = str(Path(str(value)).resolve())
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise MCMFHError(f"override {key!r}: {part!r} is not a mapping in the config")
            node = child
        node[parts[-1]] = value


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Parse and validate an experiment YAML; every mistake is one error naming the file and the field.

    ``overrides`` (see ``parse_overrides``) replace config fields before validation, e.g. a ``data_root`` elsewhere.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise _err(path, f"cannot read config ({e})") from e
    except yaml.YAMLError as e:
        raise _err(path, f"not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise _err(path, "expected a mapping of config fields at the top level")
    _apply_overrides(raw, overrides or {})
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _err(path, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "methods" not in raw:
        raise _err(path, "field 'methods' is required")
    base = path.resolve().parent
    cfg = ExperimentConfig(methods=_list(raw.pop("methods"), str, "methods", path))
    for key, value in raw.items():
        if key in PATH_FIELDS:
            value = None if value is None else (base / str(value)).resolve()
        elif key in ("queries", "database"):
            value = _list(value, str, key, path)
            bad = sorted(set(value) - set(SPLITS))
            if bad:
                raise _err(path, f"field {key!r}: unknown split(s) {bad}; expected among {list(SPLITS)}")
        elif key in ("bits", "seeds"):
            value = _list(value, int, key, path)
        elif key == "seeds_by_bits":
            if not isinstance(value, dict):
                raise _err(path, "field 'seeds_by_bits': expected a mapping bits -> list of seeds")
            value = {int(b): _list(s, int, f"seeds_by_bits.{b}", path) for b, s in value.items()}
        elif key in ("encoder_options", "dataset_options"):
            if not isinstance(value, dict):
                raise _err(path, f"field {key!r}: expected a mapping of option -> value")
        elif key == "method_options":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise _err(path, "field 'method_options': expected a mapping method -> {option: value}")
        elif key in ("map_k", "plot_bits", "encode_batch_size"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _err(path, f"field {key!r}: expected a positive integer, got {value!r}")
        elif key == "rerank":
            value = parse_rerank(value, path)
        elif key == "modes":
            try:
                value = check_modes(_list(value, str, key, path))
            except MCMFHError as e:
                raise _err(path, f"field 'modes': {e}") from e
        elif key in ("save_runs", "skip_bad"):
            if not isinstance(value, bool):
                raise _err(path, f"field {key!r}: expected true or false, got {value!r}")
        elif value is not None and not isinstance(value, str):
            raise _err(path, f"field {key!r}: expected a string, got {value!r}")
        setattr(cfg, key, value)
    if cfg.features is None and (cfg.dataset is None or cfg.data_root is None):
        raise _err(path, "give either 'features' (an existing feature cache) or both 'dataset' and 'data_root'")
    registered = set(available_methods())
    missing = [m for m in cfg.methods if m not in registered]
    if missing:
        raise _err(path, f"field 'methods': not registered: {missing}; available: {sorted(registered)}")
    if "methods" in (overrides or {}):  # narrowing a config's methods from the command line keeps only theirs
        cfg.method_options = {k: v for k, v in cfg.method_options.items() if k in cfg.methods}
    stray = sorted(set(cfg.method_options) - set(cfg.methods))
    if stray:
        raise _err(path, f"field 'method_options': options for methods not in 'methods': {stray}")
    for name, opts in cfg.method_options.items():
        try:  # options are checked now, not after an hour of other rows
            create_method(name, bits=cfg.bits[0], seed=0, **opts)
        except MCMFHError as e:
            raise _err(path, f"field 'method_options.{name}': {e}") from e
    return cfg


def get_features(
    cfg: ExperimentConfig, out_dir: Path, log: Callable[[str], None] = print, progress: Progress = SILENT
) -> FeatureSet:
    """The experiment's features: the given cache, or encoded once through the feature cache."""
    if cfg.features is not None:
        features = FeatureSet.load(cfg.features)
    else:
        from mcmfh.data import load_dataset
        from mcmfh.encode_features import encode_dataset
        from mcmfh.encoders import get_encoder

        assert cfg.dataset is not None and cfg.data_root is not None
        cache = (cfg.cache_dir or out_dir / "features") / f"{cfg.dataset}-{cfg.encoder}-{cfg.label_set or 'default'}"
        log(f"features: {cache} (encoded with {cfg.encoder!r} unless already cached)")
        dataset = load_dataset(
            cfg.dataset, cfg.data_root, label_set=cfg.label_set, skip_bad=cfg.skip_bad, **cfg.dataset_options
        )
        if dataset.report.skipped:
            log(
                f"{cfg.dataset}: left out {len(dataset.report.skipped)} bad item(s) (skip_bad), first: "
                f"{dataset.report.skipped[0]}"
            )
        encoder = get_encoder(cfg.encoder, **cfg.encoder_options)
        features = encode_dataset(dataset, encoder, cache, batch_size=cfg.encode_batch_size, progress=progress)
    if cfg.label_set is not None and features.manifest.get("label_set") not in (None, cfg.label_set):
        raise MCMFHError(
            f"features label set {features.manifest.get('label_set')!r} != config label_set {cfg.label_set!r}"
        )
    return features


def rerank_applies(cfg: ExperimentConfig, method: str, bits: int) -> bool:
    """Whether rows of ``method`` get two-stage figures: rerank is on and the method has a relaxed output."""
    if cfg.rerank is None:
        return False
    m = create_method(method, bits=bits, seed=0, **cfg.method_options.get(method, {}))
    return not m.continuous and m.has_relaxed


def rerank_settings(options: RerankOptions) -> dict[str, Any]:
    """The two-stage settings as stored in a row (``rerank``) and in its cache key."""
    return {"payloads": list(options.payloads), "k": int(options.k), "oversample": float(options.oversample)}


def _row_key(
    cfg: ExperimentConfig, features: FeatureSet, method: str, bits: int, seed: int, with_rerank: bool = True
) -> str:
    parts: list[Any] = [
        feature_identity(features),
        len(features),
        method,
        bits,
        seed,
        cfg.method_options.get(method, {}),
        create_method(method, bits, seed, **cfg.method_options.get(method, {})).recipe(),
        cfg.queries,
        cfg.database,
        cfg.map_k,
    ]
    if with_rerank and cfg.rerank is not None and rerank_applies(cfg, method, bits):
        # Only where it applies: rows of other methods (and every row with rerank off) keep their old keys.
        parts.append({"rerank": rerank_settings(cfg.rerank)})
    if set(cfg.modes) - set(PAIR_MODES):  # likewise: rows of the default modes keep their old keys
        parts.append({"modes": sorted(cfg.modes)})
    return fingerprint(*parts)


def run_row(
    cfg: ExperimentConfig,
    features: FeatureSet,
    method: str,
    bits: int,
    seed: int,
    out: Path,
    progress: Progress = SILENT,
) -> dict:
    """Fit and evaluate one (method, bits, seed); returns the row (metrics summary + curves)."""
    opts = cfg.method_options.get(method, {})
    m, log = fit_method(features, method, bits, seed, opts, progress)
    rerank = cfg.rerank if cfg.rerank is not None and not m.continuous and m.has_relaxed else None
    # ``code<B>`` payloads re-score with the same method fitted at B bits (same seed and options).
    companions = {b: fit_method(features, method, b, seed, opts)[0] for b in needed_code_bits(rerank) if b != bits}
    metrics = evaluate_method(
        m,
        features,
        cfg.queries,
        cfg.database,
        RankingOptions(map_k=cfg.map_k),
        rerank=rerank,
        companions=companions,
        modes=cfg.modes,
    )
    if cfg.save_runs:
        save_run(out / "runs" / f"{method}-{bits}-{seed}", m, log, features)
    s = summary(metrics)
    ident = feature_identity(features)
    row = {k: v for k, v in s.items() if k not in ("i2t", "t2i")}
    row.update(
        train_seconds=float(log["train_seconds"]),
        dataset=ident["dataset"],
        label_set=ident["label_set"],
        encoder=ident["encoder"],
        options=cfg.method_options.get(method, {}),
        curves={d: {"pr_curve": s[d]["pr_curve"], "p_at_k": s[d]["p_at_k"]} for d in ("i2t", "t2i")},
        queries_without_relevant={d: s[d]["queries_without_relevant"] for d in ("i2t", "t2i")},
        n_queries={d: s[d]["n_queries"] for d in ("i2t", "t2i")},
        n_database={d: s[d]["n_database"] for d in ("i2t", "t2i")},
        rerank=None if rerank is None else rerank_settings(rerank),
    )
    # the dev choice of methods that pick an epoch themselves (the deep baselines), so a table can show it
    dev_choice = {k: log[k] for k in ("chosen_epoch", "dev_epochs", "dev_map_tie_aware") if k in log}
    if dev_choice:
        row["dev_choice"] = dev_choice
    # what a rerun needs to match this row: the fit's float sums depend on its thread count, and a supervised fit may
    # keep a scaled-down label weight (its back-off)
    fit = {k: log[k] for k in ("torch_threads", "label_weight_scale") if k in log}
    if fit:
        row["fit"] = fit
    return row


def two_stage_log(row: Mapping[str, Any]) -> str:
    """The log's two-stage part (bounded depth, e.g. ``| two-stage int8 i2t 0.412 t2i 0.405``), or ""."""
    if not row.get("rerank"):
        return ""
    cells = [
        f"{p} i2t {row[f'i2t_map_2s_{p}']:.3f} t2i {row[f't2i_map_2s_{p}']:.3f}"
        for p in row["rerank"]["payloads"]
        if f"i2t_map_2s_{p}" in row
    ]
    return f"| two-stage {', '.join(cells)} " if cells else ""


def run_experiment(
    config_path: str | Path,
    out_dir: str | Path,
    log: Callable[[str], None] = print,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: Progress = SILENT,
) -> Path:
    """Run (or resume) the experiment; returns the path of ``results.json``. ``overrides``: see ``load_config``.
    ``progress`` counts rows done and left (and the epochs of the row being fitted).

    ``out_dir`` must be new, empty or an experiment folder (resumed); ``overwrite`` runs afresh in a folder beside
    it that replaces it once finished, so the old results stay until the new ones exist (see ``mcmfh.outputs``)."""
    from mcmfh.outputs import check_output

    cfg = load_config(config_path, overrides)
    out = Path(out_dir)
    plan = check_output(out, KIND, overwrite=overwrite, resumable=True)
    if plan == "replace":
        with atomic_dir(out) as tmp:
            _run(cfg, config_path, tmp, log, progress)
        return out / "results.json"
    out.mkdir(parents=True, exist_ok=True)
    if plan == "new":  # first file: marks the folder as ours, so a rerun resumes into it
        atomic_write_json(out / MANIFEST_NAME, new_manifest(KIND, config=str(config_path)))
    return _run(cfg, config_path, out, log, progress)


def _run(
    cfg: ExperimentConfig, config_path: str | Path, out: Path, log: Callable[[str], None], progress: Progress
) -> Path:
    if not (out / MANIFEST_NAME).is_file():
        atomic_write_json(out / MANIFEST_NAME, new_manifest(KIND, config=str(config_path)))
    features = get_features(cfg, out, log, progress)
    rows = []
    grid = cfg.grid()
    task = progress.task("experiment", total=len(grid), unit="row")
    for i, (method, bits, seed) in enumerate(grid, 1):
        path = out / ROWS_DIR / f"{method}-{bits}-{seed}.json"
        key = _row_key(cfg, features, method, bits, seed)
        if path.is_file():
            try:
                row = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                row = {}
            if row.get("row_key") == key:
                log(f"[{i}/{len(grid)}] {method} {bits} bits seed {seed}: done, skipped")
                rows.append(row)
                task.update(1)
                continue
            if row.get("row_key") == _row_key(cfg, features, method, bits, seed, with_rerank=False):
                log(
                    f"[{i}/{len(grid)}] {method} {bits} bits seed {seed}: two-stage figures missing or made with "
                    "other rerank settings, recomputing the row"
                )
        row = {**run_row(cfg, features, method, bits, seed, out, progress), "row_key": key}
        atomic_write_json(path, row)
        rows.append(row)
        log(
            f"[{i}/{len(grid)}] {method} {bits} bits seed {seed}: mAP i2t {row['i2t_map']:.3f} "
            f"t2i {row['t2i_map']:.3f} (stable order {row['i2t_map_all']:.3f} / {row['t2i_map_all']:.3f}) "
            f"{two_stage_log(row)}"
            f"({row['train_seconds']:.1f}s){' COLLAPSED' if (row.get('code_health') or {}).get('collapsed') else ''}"
        )
        task.update(1)
    task.close()
    atomic_write_json(out / "results.json", {"rows": rows})
    from mcmfh.evaluation.report import run_info, write_report

    write_report(rows, out, plot_bits=cfg.plot_bits, map_k=cfg.map_k, info=run_info(config_path))
    return out / "results.json"
