"""DCMHT's hashing head and loss (Tu et al., ACM MM 2022: Differentiable Cross-modal Hashing via Multimodal
Transformers), on frozen features — supervised (the loss reads training labels).

Scope: DCMHT fine-tunes CLIP end to end; that part is out of scope here (same frozen features as every other method),
so only its hashing layer and objective are reproduced. The *selection mechanism* hash layer gives each bit two
logits (for -1 and +1) and outputs the soft selection p(+1) - p(-1) = tanh((z+ - z-) / 2): the same function class
as our tanh towers, so the towers of deep_common are used unchanged. Objective (our reading of the paper): pairwise
label similarity S_ij = 1 when i and j share a label, else 0; positives pulled to cosine 1, negatives pushed below
``margin``, cross-modal plus ``intra``-weighted intra-modal terms, plus a ``quant`` weighted quantisation term
mean (|h| - 1)^2. Weights (intra 1, margin 0, quant 0.1) are our choices, not tuned on test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mcmfh.baselines.deep_common import Batch, DeepHashMethod, DeepHashOptions, cosine_matrix
from mcmfh.method import register_method
from mcmfh.training.losses import label_similarity, pair_margin_loss


@dataclass
class DCMHTOptions(DeepHashOptions):
    intra: float = 1.0
    margin: float = 0.0
    quant: float = 0.1


def label_pairs(la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    return label_similarity(la, lb)


def dcmht_loss(hi: torch.Tensor, ht: torch.Tensor, labels: torch.Tensor, o: DCMHTOptions) -> torch.Tensor:
    s = label_pairs(labels, labels)
    loss = pair_margin_loss(cosine_matrix(hi, ht), s, o.margin)
    loss = loss + o.intra * (
        pair_margin_loss(cosine_matrix(hi, hi), s, o.margin) + pair_margin_loss(cosine_matrix(ht, ht), s, o.margin)
    )
    quant = (hi.abs() - 1).pow(2).mean() + (ht.abs() - 1).pow(2).mean()
    return loss + o.quant * quant


@register_method("dcmht-head")
class DCMHTHead(DeepHashMethod):
    options_class = DCMHTOptions
    supervised = True

    def batch_loss(self, b: Batch, epoch: int) -> torch.Tensor:
        return dcmht_loss(b.hi, b.ht, b.labels, self.opts)
