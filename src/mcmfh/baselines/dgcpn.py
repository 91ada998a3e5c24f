"""DGCPN (Yu et al., AAAI 2021: Deep Graph-neighbor Coherence Preserving Network), re-implemented from the paper.

DGCPN's point is that two items are similar not only when their features are close but when their *neighbourhoods*
agree (graph-neighbour coherence), computed over the whole training set, not per batch:
  S_F = beta cos(X_I) + (1 - beta) cos(X_T)       (feature affinity, N x N, once before training)
  A   = k-nearest-neighbour indicator of S_F       (each row: its k most similar items, itself excluded)
  C   = A A^T / k                                  (share of neighbours two items have in common, in [0, 1])
  S   = (1 - gamma) S_F + gamma (2 C - 1)          (coherence-corrected target in [-1, 1])
  L   = sum over (u, v) in {(I,T), (I,I), (T,T)} of w_uv ||mu S_batch - cos(B_u, B_v)||^2   (means)
Our reading of the paper; beta = 0.5 (modalities equal), k = 20, gamma = 0.5, mu = 1.2, intra weight 0.1 are our
choices (the paper's neighbour counts are for 20k-item sets); the paper's extra loss between codes and the other
modality's real outputs is not reproduced (the tanh outputs already carry it). Epoch chosen on dev.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcmfh.baselines.deep_common import Batch, DeepHashMethod, DeepHashOptions, cosine_matrix
from mcmfh.method import register_method


@dataclass
class DGCPNOptions(DeepHashOptions):
    beta: float = 0.5
    k: int = 20
    gamma: float = 0.5
    mu: float = 1.2
    intra: float = 0.1


def coherence_target(xi: torch.Tensor, xt: torch.Tensor, beta: float, k: int, gamma: float) -> torch.Tensor:
    """S = (1 - gamma) S_F + gamma (2 C - 1) on all training items (N x N)."""
    s = beta * cosine_matrix(xi, xi) + (1 - beta) * cosine_matrix(xt, xt)
    n = len(s)
    k = max(1, min(k, n - 1))
    ranked = s.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    nbrs = torch.topk(ranked, k, dim=1).indices
    a = torch.zeros(n, n).scatter_(1, nbrs, 1.0)
    c = (a @ a.T) / k
    return (1 - gamma) * s + gamma * (2 * c - 1)


def dgcpn_loss(hi: torch.Tensor, ht: torch.Tensor, target: torch.Tensor, mu: float, intra: float) -> torch.Tensor:
    t = mu * target
    return (
        F.mse_loss(cosine_matrix(hi, ht), t)
        + intra * F.mse_loss(cosine_matrix(hi, hi), t)
        + intra * F.mse_loss(cosine_matrix(ht, ht), t)
    )


@register_method("dgcpn")
class DGCPN(DeepHashMethod):
    options_class = DGCPNOptions

    def prepare(self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> None:
        o = self.opts
        self.target = coherence_target(x, y, o.beta, o.k, o.gamma)

    def batch_loss(self, b: Batch, epoch: int) -> torch.Tensor:
        sub = self.target[b.idx][:, b.idx]
        return dgcpn_loss(b.hi, b.ht, sub, self.opts.mu, self.opts.intra)
