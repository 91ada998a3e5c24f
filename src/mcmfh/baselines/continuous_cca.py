"""Continuous ceiling: cosine ranking in the CCA space of ``bits`` dims, no hashing — what sign() tries to keep."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcmfh.baselines.linear import LinearHashMethod, fit_cca
from mcmfh.method import register_method


@register_method("continuous-cca")
class ContinuousCCA(LinearHashMethod):
    continuous = True

    def _fit_projections(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        a, b, corr = fit_cca(x, y, self.bits, self.opts.ridge)
        return a, b, {"canonical_correlations": corr.tolist()}
