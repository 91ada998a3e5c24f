"""Shared fixtures. Real data lives in ../shared/data (never copied into the repo); tests that read it are
marked ``realdata`` and skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# The real-server fixtures (Milvus, PostgreSQL, Ray) are registered once here, so each server starts once per session.
pytest_plugins = ["scale_servers"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI sets it (mcmfh.cli.main): spinning threads starve
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MCMFH_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def make_features(n: int = 120, di: int = 24, dt: int = 16, n_labels: int = 5, seed: int = 0):
    """Generated paired features with label structure: each label has an image and a text direction."""
    from mcmfh.features import FeatureSet

    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_labels)) < 0.3).astype(np.uint8)
    labels[labels.sum(1) == 0, 0] = 1
    ci, ct = rng.normal(size=(n_labels, di)), rng.normal(size=(n_labels, dt))
    image = labels @ ci + 0.5 * rng.normal(size=(n, di))
    text = labels @ ct + 0.5 * rng.normal(size=(n, dt))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    split = np.array(["train"] * (n - n // 5 - n // 10) + ["dev"] * (n // 10) + ["test"] * (n // 5))
    return FeatureSet(
        ids=[f"item{i}" for i in range(n)],
        image=image,
        text=text,
        labels=labels,
        label_vocab=[f"tag{j}" for j in range(n_labels)],
        split=split,
        manifest={"kind": "features", "encoder": "generated", "encoder_version": "0", "dataset": "generated"},
    )


@pytest.fixture
def features():
    return make_features()
