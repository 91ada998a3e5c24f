"""MoE Fusion Transformer over the two-token sequence [image token, text token].

Each of L pre-LayerNorm layers: x + SelfAttention(LN x), then x + FFN(LN x), where FFN is the MoE block (or a dense
FFN for the no-MoE ablation). A learned modality-type embedding is added to each token.

Single-item rule (the documented answer to "what if the other modality is missing?"):
  "absent" (default): the missing modality's slot holds a learned "absent" token, so an image alone is the sequence
           [image, ABSENT_text] and its code is read from position 0; a text alone is [ABSENT_image, text], read
           from position 1. Training uses exactly these single-modality sequences for the hash losses, and applies
           modality dropout (a token replaced by "absent") in the pair pass, so they are in distribution.
  "alone":  the modality token alone, a sequence of length 1.
Nothing in a layer mixes items (attention runs within one item's sequence, the MoE has no capacity limit), so an
item's code depends neither on its pair nor on its batch-mates.

``encode_set`` runs the same layers over a padded *set* of tokens (a study: several images and reports; see
``mcmfh.model.study``): padding is masked out of attention and skipped by the feed-forward, so it changes neither
the other tokens nor the MoE's auxiliary losses.
"""

from __future__ import annotations

import torch
from torch import nn

from mcmfh.model.config import ModelConfig
from mcmfh.model.moe import DenseFeedForward, MoEFeedForward

IMAGE, TEXT = 0, 1


class FusionLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width)
        self.attn = nn.MultiheadAttention(cfg.width, cfg.heads, dropout=cfg.attn_dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.ffn: MoEFeedForward | DenseFeedForward
        if cfg.use_moe:
            self.ffn = MoEFeedForward(
                cfg.width,
                cfg.ffn_hidden,
                cfg.experts,
                cfg.top_k,
                gate=cfg.gate,
                blend=cfg.gate_blend,
                dropout=cfg.ffn_dropout,
                router_noise=cfg.router_noise,
            )
        else:
            self.ffn = DenseFeedForward(cfg.width, cfg.ffn_hidden, dropout=cfg.ffn_dropout)

    def forward(
        self, x_n_s_d: torch.Tensor, pad_n_s: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.norm1(x_n_s_d)
        x_n_s_d = x_n_s_d + self.attn(h, h, h, key_padding_mask=pad_n_s, need_weights=False)[0]
        if pad_n_s is None:
            ffn_out, aux = self.ffn(self.norm2(x_n_s_d))
            return x_n_s_d + ffn_out, aux
        keep = ~pad_n_s
        ffn_out, aux = self.ffn(self.norm2(x_n_s_d[keep]))  # real tokens only: padding stays out of the gate
        out = x_n_s_d.clone()
        out[keep] = x_n_s_d[keep] + ffn_out
        return out, aux


class FusionTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.rule = cfg.single_rule
        self.modality_dropout = cfg.modality_dropout
        self.type_emb_2_d = nn.Parameter(torch.randn(2, cfg.width) * 0.02)
        self.absent_2_d = nn.Parameter(torch.randn(2, cfg.width) * 0.02)  # learned "absent" image / text tokens
        self.layers = nn.ModuleList(FusionLayer(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)

    def _run(
        self, x_n_s_d: torch.Tensor, pad_n_s: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        aux = []
        for layer in self.layers:
            x_n_s_d, layer_aux = layer(x_n_s_d, pad_n_s)
            aux.append(layer_aux)
        return self.norm(x_n_s_d), aux

    def _absent(self, modality: int, n: int) -> torch.Tensor:
        return self.absent_2_d[modality].expand(n, -1)

    def encode_single(
        self, token_n_d: torch.Tensor, modality: int
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Fused token of one modality from that modality alone (the single-item rule)."""
        own = token_n_d + self.type_emb_2_d[modality]
        if self.rule == "alone":
            out, aux = self._run(own[:, None, :])
            return out[:, 0], aux
        other = self._absent(1 - modality, token_n_d.shape[0]) + self.type_emb_2_d[1 - modality]
        seq = torch.stack([own, other] if modality == IMAGE else [other, own], dim=1)
        out, aux = self._run(seq)
        return out[:, modality], aux

    def encode_pair(
        self, img_n_d: torch.Tensor, txt_n_d: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Fused (N, 2, d) tokens of full pairs; in training a share of pairs has one token replaced by "absent"."""
        if self.training and self.rule == "absent" and self.modality_dropout > 0:
            n = img_n_d.shape[0]
            drop_n = torch.rand(n, generator=generator) < self.modality_dropout
            which_n = torch.rand(n, generator=generator) < 0.5  # True: drop the image token, else the text token
            img_n_d = torch.where((drop_n & which_n)[:, None], self._absent(IMAGE, n), img_n_d)
            txt_n_d = torch.where((drop_n & ~which_n)[:, None], self._absent(TEXT, n), txt_n_d)
        seq = torch.stack([img_n_d, txt_n_d], dim=1) + self.type_emb_2_d
        return self._run(seq)

    def encode_set(
        self, tokens_n_s_d: torch.Tensor, modality_n_s: torch.Tensor, pad_n_s: torch.Tensor
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """(N, d) mean of the fused outputs of each padded token set; a set lacking a modality gets its "absent"
        token, as a single item does (with the "alone" rule too: a study with no report is not a report)."""
        n = tokens_n_s_d.shape[0]
        present = [((modality_n_s == m) & ~pad_n_s).any(dim=1) for m in (IMAGE, TEXT)]
        absent_n_2_d = self.absent_2_d.expand(n, -1, -1) + self.type_emb_2_d
        seq = torch.cat([tokens_n_s_d + self.type_emb_2_d[modality_n_s], absent_n_2_d], dim=1)
        pad = torch.cat([pad_n_s, torch.stack(present, dim=1)], dim=1)  # an absent slot is used only when needed
        out_n_s_d, aux = self._run(seq, pad)
        keep = (~pad).unsqueeze(-1).to(out_n_s_d.dtype)
        return (out_n_s_d * keep).sum(dim=1) / keep.sum(dim=1), aux
