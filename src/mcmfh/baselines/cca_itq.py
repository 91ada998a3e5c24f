"""CCA-ITQ: CCA to ``bits`` dims, then one ITQ rotation learned on both modalities' projections, sign."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mcmfh.baselines.linear import CCAOptions, LinearHashMethod, fit_cca, itq_rotation
from mcmfh.method import register_method


@dataclass
class ITQOptions(CCAOptions):
    itq_iterations: int = 50


@register_method("cca-itq")
class CCAITQ(LinearHashMethod):
    options_class = ITQOptions

    def _fit_projections(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        a, b, corr = fit_cca(x, y, self.bits, self.opts.ridge)
        # One rotation for both modalities keeps their codes in the same Hamming space.
        r = itq_rotation(np.vstack([x @ a, y @ b]), self.opts.itq_iterations, np.random.default_rng(self.seed))
        return a @ r, b @ r, {"canonical_correlations": corr.tolist()}
