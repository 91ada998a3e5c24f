"""DJSRH (Su, Zhong, Zhang, ICCV 2019: Deep Joint-Semantics Reconstructing Hashing), re-implemented from the paper.

Loss (paper, Sec. 3.2-3.3): per batch of m pairs with input features F_I, F_T,
  S_I = cos(F_I, F_I), S_T = cos(F_T, F_T),  S~ = beta * S_I + (1 - beta) * S_T,
  S = (1 - eta) * S~ + eta * S~ S~^T / m                      (joint-semantics affinity, with its diffusion term)
  L = ||mu S - cos(B_I, B_T)||^2 + lambda1 ||mu S - cos(B_I, B_I)||^2 + lambda2 ||mu S - cos(B_T, B_T)||^2
(squared norms taken as means over the m^2 entries, which only rescales the learning rate). B = tanh outputs.
Paper values (MIRFlickr): beta = 0.6, eta = 0.4, mu = 1.5, lambda1 = lambda2 = 0.1. Deviations: frozen features
and our shared towers (deep_common) instead of AlexNet/MLP, Adam instead of SGD, the epoch chosen on dev.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcmfh.baselines.deep_common import Batch, DeepHashMethod, DeepHashOptions, cosine_matrix
from mcmfh.method import register_method


@dataclass
class DJSRHOptions(DeepHashOptions):
    beta: float = 0.6
    eta: float = 0.4
    mu: float = 1.5
    lambda1: float = 0.1
    lambda2: float = 0.1


def djsrh_affinity(xi: torch.Tensor, xt: torch.Tensor, beta: float, eta: float) -> torch.Tensor:
    s = beta * cosine_matrix(xi, xi) + (1 - beta) * cosine_matrix(xt, xt)
    return (1 - eta) * s + eta * (s @ s.T) / len(s)


def djsrh_loss(hi: torch.Tensor, ht: torch.Tensor, xi: torch.Tensor, xt: torch.Tensor, o: DJSRHOptions) -> torch.Tensor:
    target = o.mu * djsrh_affinity(xi, xt, o.beta, o.eta)
    return (
        F.mse_loss(cosine_matrix(hi, ht), target)
        + o.lambda1 * F.mse_loss(cosine_matrix(hi, hi), target)
        + o.lambda2 * F.mse_loss(cosine_matrix(ht, ht), target)
    )


@register_method("djsrh")
class DJSRH(DeepHashMethod):
    options_class = DJSRHOptions

    def batch_loss(self, b: Batch, epoch: int) -> torch.Tensor:
        return djsrh_loss(b.hi, b.ht, b.xi, b.xt, self.opts)
