"""Dropout-Voting MLP: Linear -> GELU -> Dropout(p) -> Linear, one per modality.

Stage 1 trains it with ordinary (random) dropout. ``freeze()`` then draws T dropout masks once from a seeded
generator and stores them as buffers, so they travel with the checkpoint; from then on the output is the mean
("vote") of the T masked passes, in training and inference alike: deterministic, and an item's output never changes
between runs. With ``voting=False`` (the no-dv ablation) it is a plain MLP: random dropout in training, the usual
eval pass at inference (T = 1), and it stays trainable.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DropoutVotingMLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int, p: float, votes: int, voting: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)
        self.p = p
        self.votes = votes
        self.voting = voting
        # Stored masks (T, hidden), already scaled by 1/(1-p); empty until freeze(). A buffer, so it is saved.
        self.register_buffer("masks", torch.zeros(0, hidden))

    @property
    def frozen(self) -> bool:
        return self.masks.shape[0] > 0

    def freeze(self, generator: torch.Generator) -> None:
        """Draw the T vote masks once and stop training this module."""
        if not self.voting or self.frozen:
            return  # the masks are drawn once only (a resumed fit has them from its checkpoint)
        keep = 1.0 - self.p
        bern = torch.rand(self.votes, self.fc1.out_features, generator=generator) < keep
        self.masks = bern.float() / keep
        for param in self.parameters():
            param.requires_grad_(False)

    def forward(self, x_n_din: torch.Tensor) -> torch.Tensor:
        h_n_h = F.gelu(self.fc1(x_n_din))
        if self.frozen:
            # One pass per stored mask, then the vote (mean). fc2 is linear, so this equals fc2 of the mean mask;
            # it is written per vote to say what it is (T·N·hidden is small).
            h_t_n_h = torch.einsum("nh,th->tnh", h_n_h, self.masks)
            return self.fc2(h_t_n_h).mean(dim=0)
        return self.fc2(F.dropout(h_n_h, self.p, self.training))

    def vote_view(self, x_n_din: torch.Tensor, pick_n_k: torch.Tensor) -> torch.Tensor:
        """(N, d_out): per item, the mean of the stored votes it picks (indices into the T masks); all T picks give
        ``forward``. The training views of stage 2 on small training sets (``TrainConfig.views_for``)."""
        h_n_h = F.gelu(self.fc1(x_n_din))
        return self.fc2(h_n_h * self.masks[pick_n_k].mean(dim=1))
