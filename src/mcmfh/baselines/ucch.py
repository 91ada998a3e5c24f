"""UCCH (Hu et al., TPAMI 2022: Unsupervised Contrastive Cross-modal Hashing), re-implemented from the paper.

Two losses on the towers' outputs b_I, b_T (per batch of pairs, training indices idx):
- Contrastive hashing with a momentum memory bank (paper Sec. 3.2-3.3): the bank holds one unit vector per
  training item; the *signs* of bank entries are the contrast targets, so the codes are learned against binary
  vectors (the paper's "momentum optimizer" replacing a continuous relaxation). For each item: logits
  sign(M[j]) . b / T over j = [idx_i, K uniformly drawn items]; cross-entropy with the item's own entry as the
  positive, for the image and for the text output. After the step: M[idx] <- normalise(m M[idx] + (1 - m)
  normalise((b_I + b_T) / 2)). In the first (warm-up) epoch the targets are the batch's own outputs instead.
- Cross-modal ranking learning (CRL): S = b_I b_T^T; a pair (i, j) within ``margin`` of the positive score S_ii
  counts as it is, one further below is shifted down by ``shift``; L_r = mean_i[-S_ii + log sum_j exp(cost_ij) +
  margin] in both directions (rows: image queries, columns: text queries) — all negatives, not only the hardest.
- Total = alpha L_c + (1 - alpha) L_r.
Details read from the public code (github penghu-cs/UCCH, utils/config.py, NCE/NCEAverage.py, src/utils.py):
alpha = 0.9, margin 0.2, shift 1, momentum 0.4, K = 4096 negatives, temperature T = 0.9 * sqrt(bits) (the
code's ``T * sqrt(inputSize)``), one warm-up epoch, Adam lr 1e-4, weight decay 1e-6, batch 256, gradient norm
clipped at 1. Deviations: our shared towers on frozen features; the epoch chosen on dev (the public code picks the
best epoch on a slice of the retrieval set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcmfh.baselines.deep_common import Batch, DeepHashMethod, DeepHashOptions
from mcmfh.method import register_method


@dataclass
class UCCHOptions(DeepHashOptions):
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-6
    grad_clip: float = 1.0
    alpha: float = 0.9
    margin: float = 0.2
    shift: float = 1.0
    momentum: float = 0.4
    negatives: int = 4096
    temperature: float = 0.9  # multiplied by sqrt(bits)
    warmup_epochs: int = 1


def ranking_loss(bi: torch.Tensor, bt: torch.Tensor, margin: float, shift: float) -> torch.Tensor:
    """UCCH's cross-modal ranking loss (tau = 1), both directions."""
    s = bi @ bt.T
    diag = s.diagonal()
    row = torch.where(s >= (diag[:, None] - margin).detach(), s, s - shift)  # image query i vs texts j
    col = torch.where(s >= (diag[None, :] - margin).detach(), s, s - shift)  # text query j vs images i
    return (-diag + torch.logsumexp(row, dim=1) + margin).mean() + (-diag + torch.logsumexp(col, dim=0) + margin).mean()


def memory_contrast_loss(b: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of logits targets[i] . b_i / T, target index 0 (the item's own entry). targets: (B, K+1, bits)."""
    logits = torch.bmm(targets, b.unsqueeze(2)).squeeze(2) / temperature
    return F.cross_entropy(logits, torch.zeros(len(b), dtype=torch.long))


def indexed_contrast_loss(b: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, temperature: float) -> torch.Tensor:
    """``memory_contrast_loss(b, bank[index], T)`` computed without materialising the (B, K+1, bits) targets: the
    logits are gathered from b bank^T (B x N). Same values; with K = 4,096 negatives and N = 1,653 training items
    the full product is the cheaper one (it made UCCH ~7x faster a batch). index: (B, K+1), column 0 the positive."""
    logits = (b @ bank.T).gather(1, index) / temperature
    return F.cross_entropy(logits, torch.zeros(len(b), dtype=torch.long))


@register_method("ucch")
class UCCH(DeepHashMethod):
    options_class = UCCHOptions

    def prepare(self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> None:
        gen = torch.Generator().manual_seed(self.seed + 1)
        self.memory = F.normalize(torch.randn(len(x), self.bits, generator=gen).sign(), dim=1)
        self.sampler = torch.Generator().manual_seed(self.seed + 2)

    def batch_loss(self, b: Batch, epoch: int) -> torch.Tensor:
        o = self.opts
        n = len(b.hi)
        temp = o.temperature * math.sqrt(self.bits)
        if epoch < o.warmup_epochs:  # in-batch targets: own output first, then the rest of the batch
            mixed = ((b.hi + b.ht) / 2).detach()
            order = torch.stack(
                [torch.cat([torch.tensor([i]), torch.arange(n)[torch.arange(n) != i]]) for i in range(n)]
            )
            bank, index = mixed.sign(), order
            momentum = 0.0
        else:
            neg = torch.randint(len(self.memory), (n, o.negatives), generator=self.sampler)
            bank, index = self.memory.sign(), torch.cat([b.idx[:, None], neg], dim=1)
            momentum = o.momentum
        lc = indexed_contrast_loss(b.hi, bank, index, temp) + indexed_contrast_loss(b.ht, bank, index, temp)
        lr = ranking_loss(b.hi, b.ht, o.margin, o.shift)
        with torch.no_grad():
            new = F.normalize((b.hi + b.ht) / 2, dim=1)
            self.memory[b.idx] = F.normalize(momentum * self.memory[b.idx] + (1 - momentum) * new, dim=1)
        return o.alpha * lc + (1 - o.alpha) * lr
