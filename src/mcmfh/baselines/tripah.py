"""TriPAH's hashing objective (Bian et al., ICME 2026: Imbalance-Aware Tri-Prompt Affinity Hashing for Cross-Modal
Medical Retrieval), on frozen features — supervised (the loss reads training labels).

Scope: TriPAH fine-tunes the last blocks of a MetaCLIP ViT-B/16, adds a third "prompt" view built from
ontology-grounded patient context, and fuses image, text and prompt with Mamba–Transformer blocks. None of that
applies here: every method gets the same frozen features, our data has no patient-context prompts, and its fusion
codes an image *together with its paired text* (the public code's ``FuseMamba(img, txt)`` runs at coding time too),
which a single-modality query does not have. What does apply without the backbone is its imbalance-aware multi-task
hashing objective, reproduced on the tanh towers of ``deep_common`` (our reading of the public code,
github Medical-Multi-Agent-AI/TriPAH, ``train_asym.py``, Apache-2.0):

- **affinity** (``bayesian_loss``): a pairwise likelihood against a buffer holding every training item's latest
  output (updated with the batch, no gradient): mean over (n, b) of softplus(θ) − S θ, θ = ½ ⟨buffer_n, h_b⟩, S = 1
  when the items share a label. Intra-modal (image buffer × image batch, text × text) weighted ``intra`` (0.005)
  and cross-modal (image buffer × text batch + text buffer × image batch) weighted ``inter`` (5);
- **quantisation** against unified codes B = sign(image buffer + text buffer), refreshed at each epoch's end:
  ‖h − B‖² / (batch · bits), weight ``quant`` (1) — for the image branch annealed 1 → 2× over the first third of
  training and back to 1× at the end (TriPAH's "asymmetric progressive quantisation");
- **class-balanced BCE**: a linear classifier per modality, multi-label BCE with pos_weight_c = (N − n_c) / n_c,
  weight ``cbce`` (0.3). Deviation: the classifiers read the tanh outputs (TriPAH reads its 512-d features before
  the hash layer; our towers have none to share). The classifiers are used in training only.

Weights and the learning rate are the public code's argument defaults (``utils/get_args.py``); Adam here (TriPAH:
BertAdam with warm-up and cosine decay). Left out: the prompt view and its alignment
losses, the fusion, and the auxiliary 256-bit branch with its reconstruction term (it trains extra code lengths
jointly; one code length per fit here, as for every other method).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcmfh.baselines.deep_common import Batch, DeepHashMethod, DeepHashOptions
from mcmfh.method import register_method
from mcmfh.training.losses import label_similarity


@dataclass
class TriPAHOptions(DeepHashOptions):
    lr: float = 2e-3  # the public code's --lr default (its hash modules' rate); at 1e-3 it barely moved in 60 epochs
    intra: float = 0.005
    inter: float = 5.0
    quant: float = 1.0
    cbce: float = 0.3


def affinity_loss(buffer_n_b: torch.Tensor, h_m_b: torch.Tensor, sim_n_m: torch.Tensor) -> torch.Tensor:
    """TriPAH's (DCMH-style) pairwise likelihood: mean of softplus(θ) − S θ, θ = ½ buffer hᵀ (clamped to ±64)."""
    theta = 0.5 * (buffer_n_b @ h_m_b.T).clamp(-64, 64)
    return (F.softplus(theta) - sim_n_m * theta).mean()


def image_quant_weight(progress: float) -> float:
    """TriPAH's schedule of the image branch's quantisation weight over training progress in [0, 1]: 1 → 2 over the
    first third, then linearly back to 1 at the end (the text branch stays at 1)."""
    if progress <= 1 / 3:
        return 1.0 + 3 * progress
    return 1.0 + max(0.0, 1.0 - (progress - 1 / 3) / (2 / 3))


def class_balanced_pos_weight(labels_n_c: torch.Tensor) -> torch.Tensor:
    """pos_weight of the class-balanced BCE: (N − n_c) / n_c per label (rare labels weigh more)."""
    counts = labels_n_c.sum(0)
    return ((len(labels_n_c) - counts) / (counts + 1e-6)).clamp_min(0)


@register_method("tripah-head")
class TriPAHHead(DeepHashMethod):
    options_class = TriPAHOptions
    supervised = True

    def prepare(self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> None:
        gen = torch.Generator().manual_seed(self.seed + 1)
        self.buf_image = torch.randn(len(x), self.bits, generator=gen)
        self.buf_text = torch.randn(len(x), self.bits, generator=gen)
        self.unified = torch.sign(self.buf_image + self.buf_text)
        self.train_labels = labels
        self.pos_weight = class_balanced_pos_weight(labels)
        self.cls_image = nn.Linear(self.bits, labels.shape[1])
        self.cls_text = nn.Linear(self.bits, labels.shape[1])
        self.epoch_seen = 0

    def extra_parameters(self) -> list[nn.Parameter]:
        return [*self.cls_image.parameters(), *self.cls_text.parameters()]

    def batch_loss(self, b: Batch, epoch: int) -> torch.Tensor:
        o = self.opts
        if epoch != self.epoch_seen:  # an epoch ended: the unified codes follow the buffers (TriPAH refreshes B there)
            self.unified = torch.sign(self.buf_image + self.buf_text)
            self.epoch_seen = epoch
        with torch.no_grad():
            self.buf_image[b.idx] = b.hi.detach()
            self.buf_text[b.idx] = b.ht.detach()
        sim = label_similarity(self.train_labels, b.labels)
        loss = o.intra * (affinity_loss(self.buf_image, b.hi, sim) + affinity_loss(self.buf_text, b.ht, sim))
        loss = loss + o.inter * (affinity_loss(self.buf_image, b.ht, sim) + affinity_loss(self.buf_text, b.hi, sim))
        target = self.unified[b.idx]
        quant_i = (b.hi - target).pow(2).sum() / (len(b.hi) * self.bits)
        quant_t = (b.ht - target).pow(2).sum() / (len(b.ht) * self.bits)
        loss = loss + o.quant * (image_quant_weight(epoch / o.epochs) * quant_i + quant_t)
        pw = self.pos_weight
        bce = F.binary_cross_entropy_with_logits(self.cls_image(b.hi), b.labels, pos_weight=pw)
        bce = bce + F.binary_cross_entropy_with_logits(self.cls_text(b.ht), b.labels, pos_weight=pw)
        return loss + o.cbce * bce
