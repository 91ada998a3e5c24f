"""Run folders: fit any registered method on a feature cache into one, and load it back (``model/trainer.py`` is
MCMFH's own two-stage training loop; this module is the method-independent part).

A run folder holds the fitted method (``method.json`` + ``weights.safetensors``, see ``HashMethod.save``),
``train_log.json`` (the method's log plus ``train_seconds``) and ``manifest.json`` (kind "run": method, bits, seed,
options, the weights' SHA-256 -- checked on every load -- and the identity of the feature cache it was trained on).
It is written into a temp folder renamed into place, so a folder with a manifest is complete. Evaluating a run
on features of another encoder is refused.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcmfh.evaluation.code_health import method_code_health, strip_bits
from mcmfh.factory import create_method, load_method
from mcmfh.features import FeatureSet
from mcmfh.io import atomic_dir, atomic_write_json
from mcmfh.manifest import new_manifest, read_manifest, require_match
from mcmfh.method import HashMethod, weights_sha256
from mcmfh.progress import SILENT, Progress

# Feature-cache manifest fields copied into a run's manifest; the first group must match at evaluation.
FEATURE_KEYS = (
    "dataset",
    "label_set",
    "encoder",
    "encoder_version",
    "image_dim",
    "text_dim",
    "fingerprint",
    "input_fingerprint",
    "cache_key",
)
MATCH_KEYS = ("encoder", "encoder_version", "image_dim", "text_dim")
TRAIN_LOG_NAME = "train_log.json"


def feature_identity(features: FeatureSet) -> dict[str, Any]:
    """The feature cache's identity fields (dims are taken from the arrays when the manifest lacks them)."""
    out = {k: features.manifest.get(k) for k in FEATURE_KEYS}
    out["image_dim"] = features.image_dim
    out["text_dim"] = features.text_dim
    return out


def fit_method(
    features: FeatureSet,
    method: str,
    bits: int,
    seed: int,
    options: Mapping[str, Any] | None = None,
    progress: Progress = SILENT,
) -> tuple[HashMethod, dict[str, Any]]:
    """Fit on the ``train`` split (``dev`` is passed for model choice); returns the method and its log. Methods
    with epochs report them to ``progress``."""
    m = create_method(method, bits=bits, seed=seed, **dict(options or {}))
    m.progress = progress
    train, dev = features.splits("train"), features.splits("dev")
    t0 = time.perf_counter()
    log = m.fit(train, dev if len(dev) else None)
    log = {**(log or {}), "train_seconds": time.perf_counter() - t0, "n_train": len(train), "n_dev": len(dev)}
    if not m.continuous:  # the codes an archive of train + dev would hold: collapse is reported at training time
        db = features.splits("train", "dev")
        images = db.image[db.has_image]
        health = method_code_health(m.encode_images(images), m.encode_texts(db.text), images, db.text)
        log["code_health"] = {k: strip_bits(v) for k, v in health.items()}
    return m, log


def save_run(out_dir: str | Path, m: HashMethod, log: Mapping[str, Any], features: FeatureSet) -> Path:
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        m.save(tmp)
        atomic_write_json(tmp / TRAIN_LOG_NAME, dict(log))
        manifest = new_manifest(
            "run",
            method=m.name,
            bits=m.bits,
            seed=m.seed,
            options=m.options,
            weights_sha256=weights_sha256(tmp),
            **feature_identity(features),
        )
        atomic_write_json(tmp / "manifest.json", manifest)  # last: its presence marks a complete run
    return out_dir


def train_run(
    features_dir: str | Path,
    method: str,
    bits: int,
    seed: int,
    out_dir: str | Path,
    options: Mapping[str, Any] | None = None,
    progress: Progress = SILENT,
) -> Path:
    """Load features, fit ``method`` on train (dev for model choice), save the run folder; returns its path."""
    features = FeatureSet.load(features_dir)
    m, log = fit_method(features, method, bits, seed, options, progress)
    return save_run(out_dir, m, log, features)


def load_run(run_dir: str | Path) -> tuple[HashMethod, dict[str, Any]]:
    """The fitted method of a run folder and its manifest; the weights must match the manifest's checksum (runs
    written before checksums were recorded load unchecked)."""
    manifest = read_manifest(run_dir, kind="run")
    return load_method(run_dir, manifest.get("weights_sha256")), manifest


def check_features(manifest: Mapping[str, Any], features: FeatureSet, run_dir: str | Path) -> None:
    """Refuse features made by another encoder (or of other widths) than the run was trained on."""
    require_match(manifest, feature_identity(features), MATCH_KEYS, f"run {run_dir} vs features")
