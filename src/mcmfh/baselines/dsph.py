"""DSPH's hashing loss (Huo et al., IEEE TCSVT 2023: Deep Semantic-aware Proxy Hashing), on frozen features —
supervised (the loss reads training labels).

Scope: DSPH fine-tunes CLIP end to end; that part is out of scope (same frozen features as every other method), so
only its hashing objective is reproduced on our tanh towers. Our reading of the paper: one learnable proxy per label
(C x bits), shared by both modalities; each output is pulled towards the proxies of its labels and pushed from the
others: L_p = mean_i [ mean_{c in Y_i} (1 - cos(h_i, p_c)) + mean_{c not in Y_i} relu(cos(h_i, p_c) - delta) ],
for the image and the text outputs; plus a cross-modal pairwise term (positives to cosine 1, negatives below 0)
weighted ``pair`` and a quantisation term mean (|h| - 1)^2 weighted ``quant``. delta = 0, pair = 0.5, quant = 0.1
are our choices. Proxies are used in training only; codes are sign(tower(x)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mcmfh.baselines.dcmht import label_pairs
from mcmfh.baselines.deep_common import Batch, DeepHashMethod, DeepHashOptions, cosine_matrix
from mcmfh.method import register_method
from mcmfh.training.losses import pair_margin_loss, proxy_loss


@dataclass
class DSPHOptions(DeepHashOptions):
    delta: float = 0.0
    pair: float = 0.5
    quant: float = 0.1


def dsph_loss(
    hi: torch.Tensor, ht: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor, o: DSPHOptions
) -> torch.Tensor:
    lp = proxy_loss(hi, proxies, labels, o.delta, False) + proxy_loss(ht, proxies, labels, o.delta, False)
    lpair = pair_margin_loss(cosine_matrix(hi, ht), label_pairs(labels, labels), 0.0)
    quant = (hi.abs() - 1).pow(2).mean() + (ht.abs() - 1).pow(2).mean()
    return lp + o.pair * lpair + o.quant * quant


@register_method("dsph-head")
class DSPHHead(DeepHashMethod):
    options_class = DSPHOptions
    supervised = True

    def prepare(self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> None:
        self.proxies = nn.Parameter(torch.randn(labels.shape[1], self.bits))  # seeded by fit's manual_seed

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.proxies]

    def batch_loss(self, b: Batch, epoch: int) -> torch.Tensor:
        return dsph_loss(b.hi, b.ht, self.proxies, b.labels, self.opts)
