"""LSH: seeded random hyperplanes on a shared CCA space, sign — the data-independent hashing reference.

The hyperplanes are random; only the shared space (CCA to ``cca_dim`` dims, default 128 as in evaluation.md's
reference row, capped by the smaller modality) is learned, because raw image and text features live in different
spaces and a random hyperplane there would not compare them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mcmfh.baselines.linear import CCAOptions, LinearHashMethod, fit_cca
from mcmfh.method import register_method


@dataclass
class LSHOptions(CCAOptions):
    cca_dim: int = 128


@register_method("lsh")
class CCALSH(LinearHashMethod):
    options_class = LSHOptions

    def _fit_projections(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        k = min(self.opts.cca_dim, x.shape[1], y.shape[1])
        a, b, _ = fit_cca(x, y, k, self.opts.ridge)
        h = np.random.default_rng(self.seed).normal(size=(k, self.bits))
        return a @ h, b @ h, {"cca_dim": k}
