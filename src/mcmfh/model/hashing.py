"""Hashing MLP, one per modality: Linear -> ReLU -> Dropout -> Linear(bits) -> tanh; codes = sign at inference."""

from __future__ import annotations

import torch
from torch import nn

from mcmfh.errors import MCMFHError

SUPPORTED_BITS = (16, 32, 64, 128)


class HashHead(nn.Module):
    def __init__(self, width: int, hidden: int, bits: int, dropout: float) -> None:
        super().__init__()
        if bits not in SUPPORTED_BITS:
            raise MCMFHError(f"mcmfh: bits must be one of {SUPPORTED_BITS}, got {bits}")
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, bits))

    def forward(self, token_n_d: torch.Tensor) -> torch.Tensor:
        """Relaxed codes in (-1, 1): what the training losses see."""
        return torch.tanh(self.net(token_n_d))

    @torch.no_grad()
    def codes(self, token_n_d: torch.Tensor) -> torch.Tensor:
        """Binary codes (N, bits) bool: bit set where the pre-activation is > 0 (sign; tanh keeps the sign)."""
        return self.net(token_n_d) > 0
