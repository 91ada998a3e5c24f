"""Mixture-of-Experts feed-forward block with a softmax router, top-k routing and the hybrid gate.

Gate per token (router logits -> softmax probabilities P):
  dense  = P                                       (every expert, softly)
  sparse = top-k of P, renormalised to sum to 1    (k experts)
  hybrid = a * dense + (1 - a) * sparse            (mcmfh.md: "dense softmax gate blended with the sparse top-k")
Every expert is computed for every token and weighted by the gate (a zero weight drops it exactly): with E = 4 and
two tokens per item this is cheaper than gathering, and there is no capacity limit, so a token's output never
depends on its batch-mates. The block returns its auxiliary losses (load-balancing, router z-loss) with its output.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mcmfh.training.losses import load_balancing_loss, router_z_loss


class MoEFeedForward(nn.Module):
    def __init__(
        self,
        width: int,
        hidden: int,
        experts: int,
        top_k: int,
        gate: str = "hybrid",
        blend: float = 0.5,
        dropout: float = 0.0,
        router_noise: float = 0.0,
    ) -> None:
        super().__init__()
        if gate not in ("hybrid", "dense", "sparse"):
            raise ValueError(f"gate must be hybrid, dense or sparse, got {gate!r}")
        self.experts, self.top_k, self.gate, self.blend = experts, top_k, gate, blend
        self.router_noise = router_noise
        self.dropout = nn.Dropout(dropout)
        self.router = nn.Linear(width, experts, bias=False)
        bound1, bound2 = 1 / math.sqrt(width), 1 / math.sqrt(hidden)
        self.w1_e_d_h = nn.Parameter(torch.empty(experts, width, hidden).uniform_(-bound1, bound1))
        self.b1_e_h = nn.Parameter(torch.zeros(experts, hidden))
        self.w2_e_h_d = nn.Parameter(torch.empty(experts, hidden, width).uniform_(-bound2, bound2))
        self.b2_e_d = nn.Parameter(torch.zeros(experts, width))
        self.last_topk: torch.Tensor | None = None  # (tokens, k) expert ids of the last call, for inspection

    def gates(self, logits_n_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gate weights (N, E), softmax probabilities (N, E), top-k expert ids (N, k))."""
        probs_n_e = logits_n_e.softmax(dim=-1)
        topv_n_k, topi_n_k = probs_n_e.topk(self.top_k, dim=-1)
        sparse_n_e = torch.zeros_like(probs_n_e).scatter(-1, topi_n_k, topv_n_k / topv_n_k.sum(-1, keepdim=True))
        if self.gate == "dense":
            gate_n_e = probs_n_e
        elif self.gate == "sparse":
            gate_n_e = sparse_n_e
        else:
            gate_n_e = self.blend * probs_n_e + (1.0 - self.blend) * sparse_n_e
        return gate_n_e, probs_n_e, topi_n_k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        shape = x.shape
        x_n_d = x.reshape(-1, shape[-1])
        logits_n_e = self.router(x_n_d)
        if self.training and self.router_noise > 0:
            logits_n_e = logits_n_e + self.router_noise * torch.randn_like(logits_n_e)
        gate_n_e, probs_n_e, topi_n_k = self.gates(logits_n_e)
        self.last_topk = topi_n_k.detach()
        h_n_e_h = F.gelu(torch.einsum("nd,edh->neh", x_n_d, self.w1_e_d_h) + self.b1_e_h)
        y_n_e_d = torch.einsum("neh,ehd->ned", self.dropout(h_n_e_h), self.w2_e_h_d) + self.b2_e_d
        out_n_d = torch.einsum("ne,ned->nd", gate_n_e, y_n_e_d)
        aux = {
            "balance": load_balancing_loss(probs_n_e, topi_n_k),
            "z": router_z_loss(logits_n_e),
        }
        return out_n_d.reshape(shape), aux


class DenseFeedForward(nn.Module):
    """The no-MoE ablation: one GELU MLP, same hidden width as an expert; no auxiliary losses."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.net(x), {}
