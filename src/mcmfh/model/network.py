"""The whole MCMFH network: input preprocessing -> DV-MLP -> MoE fusion transformer -> hashing MLP, per modality.

Preprocessing (centering, optional PCA whitening) is fitted on the training features and kept as buffers, so it is
saved with the model and applied identically at inference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mcmfh.model.config import ModelConfig
from mcmfh.model.dv_mlp import DropoutVotingMLP
from mcmfh.model.fusion import IMAGE, TEXT, FusionTransformer
from mcmfh.model.hashing import HashHead
from mcmfh.model.study import StudyFusion


class InputTransform(nn.Module):
    """x -> (x - mean) @ W, with W a PCA-whitening matrix (d_in, k) or none; fitted on train features."""

    def __init__(self, d_in: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_dim = min(cfg.whiten_dim, d_in) if cfg.whiten_dim > 0 else d_in
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("proj", torch.eye(d_in, self.out_dim) if cfg.whiten_dim > 0 else torch.zeros(0, 0))

    @torch.no_grad()
    def fit(self, x_n_d: torch.Tensor) -> None:
        if self.cfg.center:
            self.mean = x_n_d.mean(dim=0)
        if self.cfg.whiten_dim > 0:
            xc = x_n_d.double() - self.mean.double()
            evals, evecs = torch.linalg.eigh(xc.T @ xc / x_n_d.shape[0])
            evals, evecs = evals.flip(0)[: self.out_dim], evecs.flip(1)[:, : self.out_dim]
            # Ridge relative to the top eigenvalue: directions of near-zero variance are not blown up into noise.
            scale = (evals.clamp_min(0) + self.cfg.whiten_eps * evals[0]).rsqrt()
            self.proj = (evecs * scale).float()

    def forward(self, x_n_d: torch.Tensor) -> torch.Tensor:
        x_n_d = x_n_d - self.mean
        return x_n_d @ self.proj if self.proj.numel() else x_n_d


class MCMFHNet(nn.Module):
    def __init__(self, cfg: ModelConfig, image_dim: int, text_dim: int, bits: int, with_study: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.pre_img = InputTransform(image_dim, cfg)
        self.pre_txt = InputTransform(text_dim, cfg)
        votes = cfg.dv_votes if cfg.dropout_voting else 1
        dv = (cfg.dv_hidden, cfg.width, cfg.dv_dropout, votes, cfg.dropout_voting)
        self.dv_img = DropoutVotingMLP(self.pre_img.out_dim, *dv)
        self.dv_txt = DropoutVotingMLP(self.pre_txt.out_dim, *dv)
        self.fusion = FusionTransformer(cfg)
        self.hash_img = HashHead(cfg.width, cfg.hash_hidden, bits, cfg.hash_dropout)
        self.hash_txt = HashHead(cfg.width, cfg.hash_hidden, bits, cfg.hash_dropout)
        # The study encoder (stage 3), when the model is fitted on data with studies; None otherwise. Its init draws
        # from a fork of the RNG, so the item model trains exactly as it would without it (same codes).
        self.study: StudyFusion | None = None
        if with_study:
            with torch.random.fork_rng(devices=[]):
                self.study = StudyFusion(cfg, bits)

    def dv_tokens(self, image: torch.Tensor | None, text: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """DV-MLP outputs (input dropout applies in training only)."""
        p = self.cfg.input_dropout
        out_img = self.dv_img(F.dropout(self.pre_img(image), p, self.training)) if image is not None else None
        out_txt = self.dv_txt(F.dropout(self.pre_txt(text), p, self.training)) if text is not None else None
        return out_img, out_txt

    def vote_views(
        self, image: torch.Tensor, text: torch.Tensor, k: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training views of the frozen DV tokens: per item the mean of ``k`` of its T stored votes, drawn anew, over
        its input with input dropout (as stage 1 saw it). Inference always uses the full vote (``dv_tokens``)."""
        p = self.cfg.input_dropout
        views = []
        for pre, dv, x in ((self.pre_img, self.dv_img, image), (self.pre_txt, self.dv_txt, text)):
            pick_n_k = torch.rand(x.shape[0], dv.masks.shape[0], generator=generator).argsort(dim=1)[:, :k]
            views.append(dv.vote_view(F.dropout(pre(x), p, training=True), pick_n_k))
        return views[0], views[1]

    def single_tokens(self, dv_n_d: torch.Tensor, modality: int) -> tuple[torch.Tensor, list]:
        return self.fusion.encode_single(dv_n_d, modality)

    @torch.no_grad()
    def image_tokens(self, image_n_d: torch.Tensor) -> torch.Tensor:
        """Fused (N, width) image tokens from images alone: the real-valued space the hashing MLP codes."""
        return self.fusion.encode_single(self.dv_tokens(image_n_d, None)[0], IMAGE)[0]

    @torch.no_grad()
    def text_tokens(self, text_n_d: torch.Tensor) -> torch.Tensor:
        return self.fusion.encode_single(self.dv_tokens(None, text_n_d)[1], TEXT)[0]

    @torch.no_grad()
    def image_codes(self, image_n_d: torch.Tensor) -> torch.Tensor:
        return self.hash_img.codes(self.image_tokens(image_n_d))

    @torch.no_grad()
    def text_codes(self, text_n_d: torch.Tensor) -> torch.Tensor:
        return self.hash_txt.codes(self.text_tokens(text_n_d))
