"""Shared pieces of the linear baselines: centring on train, ridge CCA, ITQ, and one linear-hash method base.

Every linear baseline codes an item as ``sign((x - mean_train) @ P)`` (or returns ``(x - mean) @ P`` for the
continuous ceiling), with one projection P per modality; only how P is fitted differs, so the encoding, state and
loading live here once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.method import HashMethod
from mcmfh.options import parse_options


def _inv_sqrt(cov: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(cov)
    return (vecs / np.sqrt(np.maximum(vals, 1e-12))) @ vecs.T


def fit_cca(x: np.ndarray, y: np.ndarray, k: int, ridge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge CCA of centred ``x`` (n, dx) and ``y`` (n, dy) to ``k`` dims: (A (dx, k), B (dy, k), correlations).

    ``ridge`` is added to the diagonal of each covariance (features are L2-normalised, so a per-dimension variance is
    about 1/d); it keeps the whitening stable when d is large next to n.
    """
    n = x.shape[0]
    if k > min(x.shape[1], y.shape[1]):
        raise MCMFHError(f"CCA: cannot project to {k} dims; the smaller modality has {min(x.shape[1], y.shape[1])}")
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    cxx = x64.T @ x64 / (n - 1) + ridge * np.eye(x.shape[1])
    cyy = y64.T @ y64 / (n - 1) + ridge * np.eye(y.shape[1])
    cxy = x64.T @ y64 / (n - 1)
    wx, wy = _inv_sqrt(cxx), _inv_sqrt(cyy)
    u, s, vt = np.linalg.svd(wx @ cxy @ wy, full_matrices=False)
    return wx @ u[:, :k], wy @ vt.T[:, :k], s[:k]


def itq_rotation(v: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """ITQ (Gong & Lazebnik 2011): orthogonal R (k, k) minimising ||sign(VR) - VR||, from a seeded random start."""
    k = v.shape[1]
    r, _ = np.linalg.qr(rng.normal(size=(k, k)))
    for _ in range(iterations):
        b = np.sign(v @ r)
        b[b == 0] = 1
        u, _, wt = np.linalg.svd(v.T @ b)  # orthogonal Procrustes: R = argmax tr(R^T V^T B)
        r = u @ wt
    return r


@dataclass
class CCAOptions:
    # Added to each covariance's diagonal. Each method's default was chosen on MedPix 2.0 dev (queries dev, database
    # train, mean of both directions at 16 and 64 bits, grid 1e-3 / 1e-2 / 1e-1), never on test.
    ridge: float = 1e-1


class LinearHashMethod(HashMethod):
    """Base for baselines of the form code = sign((x - mean) @ P); subclasses implement ``_fit_projections``."""

    options_class: type = CCAOptions

    def __init__(self, bits: int, seed: int = 0, **options: Any) -> None:
        super().__init__(bits, seed, **options)
        self.opts = parse_options(self.options_class, options, f"method {self.name!r}")
        self.mean_image: np.ndarray | None = None
        self.mean_text: np.ndarray | None = None
        self.proj_image: np.ndarray | None = None
        self.proj_text: np.ndarray | None = None

    def _fit_projections(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        raise NotImplementedError

    def recipe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.opts)

    def fit(self, train: FeatureSet, dev: FeatureSet | None = None) -> dict[str, Any]:
        # Image-less items would pair a zero image with a text and distort the covariances: train on real pairs.
        pairs = train.subset(train.has_image)
        if len(pairs) < 2:
            raise MCMFHError(f"method {self.name!r}: needs at least 2 training pairs with an image, got {len(pairs)}")
        self.mean_image = pairs.image.mean(0).astype(np.float64)
        self.mean_text = pairs.text.mean(0).astype(np.float64)
        pi, pt, log = self._fit_projections(pairs.image - self.mean_image, pairs.text - self.mean_text)
        self.proj_image, self.proj_text = pi.astype(np.float64), pt.astype(np.float64)
        return {"n_train_pairs": len(pairs), **log}

    def _encode(
        self, x: np.ndarray, mean: np.ndarray | None, proj: np.ndarray | None, relaxed: bool = False
    ) -> np.ndarray:
        if mean is None or proj is None:
            raise MCMFHError(f"method {self.name!r}: not fitted")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != proj.shape[0]:
            raise MCMFHError(f"method {self.name!r}: expected input (N, {proj.shape[0]}), got {x.shape}")
        z = (x - mean) @ proj
        return z.astype(np.float32) if self.continuous or relaxed else z > 0

    def encode_images(self, image: np.ndarray) -> np.ndarray:
        return self._encode(image, self.mean_image, self.proj_image)

    def encode_texts(self, text: np.ndarray) -> np.ndarray:
        return self._encode(text, self.mean_text, self.proj_text)

    @property
    def has_relaxed(self) -> bool:
        return not self.continuous  # a continuous baseline's output already is its real-valued vector

    def relaxed_images(self, image: np.ndarray) -> np.ndarray:
        """The pre-sign projection (x - mean) @ P, whose signs are the codes."""
        return self._encode(image, self.mean_image, self.proj_image, relaxed=True)

    def relaxed_texts(self, text: np.ndarray) -> np.ndarray:
        return self._encode(text, self.mean_text, self.proj_text, relaxed=True)

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.proj_image is None:
            raise MCMFHError(f"method {self.name!r}: not fitted")
        return {
            "mean_image": self.mean_image,
            "mean_text": self.mean_text,
            "proj_image": self.proj_image,
            "proj_text": self.proj_text,
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        missing = {"mean_image", "mean_text", "proj_image", "proj_text"} - set(state)
        if missing:
            raise MCMFHError(f"method {self.name!r}: state lacks {', '.join(sorted(missing))}")
        self.mean_image, self.mean_text = state["mean_image"], state["mean_text"]
        self.proj_image, self.proj_text = state["proj_image"], state["proj_text"]
