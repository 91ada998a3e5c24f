"""MCMFH losses: InfoNCE on fused tokens, contrastive loss on hash outputs, the hybrid gating loss, optional extras.

Each is written as matrix operations; tests/test_model_losses.py checks each against a direct loop over items.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def info_nce(a_n_d: torch.Tensor, b_n_d: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP form): row i of ``a`` and row i of ``b`` are a pair, other rows are negatives.

    L = ½ [mean_i −log softmax_j(cos(a_i, b_j)/τ)_i + mean_j −log softmax_i(cos(a_i, b_j)/τ)_j].
    """
    logits_n_n = F.normalize(a_n_d, dim=-1) @ F.normalize(b_n_d, dim=-1).T / temperature
    target = torch.arange(a_n_d.shape[0], device=a_n_d.device)
    return 0.5 * (F.cross_entropy(logits_n_n, target) + F.cross_entropy(logits_n_n.T, target))


def hash_contrastive_loss(h_img_n_b: torch.Tensor, h_txt_n_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Contrastive loss on the tanh hash outputs: InfoNCE on their cosine, which for ±1 codes is 1 − 2·Hamming/bits,
    so it trains the ranking that Hamming search will use."""
    return info_nce(h_img_n_b, h_txt_n_b, temperature)


def straight_through_sign(h: torch.Tensor) -> torch.Tensor:
    """sign(h) in the forward pass, the gradient of h in the backward pass: a loss on it scores the binary codes
    that search will use (two items that share a code look identical to it) while still training the tanh outputs."""
    return h + (torch.sign(h) - h).detach()


def bank_contrastive_loss(
    h_b_d: torch.Tensor, bank_n_d: torch.Tensor, index_b: torch.Tensor, temperature: float
) -> torch.Tensor:
    """UCCH-style contrast against a memory bank (Hu et al., TPAMI 2022): each hash output of the batch against the
    other modality's *binary* codes of the whole training set, its own pair's code the positive. Cosine / τ,
    cross-entropy over all N items (the bank is a constant: no gradient flows into it)."""
    logits = F.normalize(h_b_d, dim=-1) @ F.normalize(bank_n_d.detach(), dim=-1).T / temperature
    return F.cross_entropy(logits, index_b)


def load_balancing_loss(probs_n_e: torch.Tensor, topk_n_k: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load balance E · Σ_e f_e · P_e: f_e = share of routing slots (token, choice) sent to
    expert e, P_e = mean router probability of e. Equals 1 when routing is uniform."""
    n_experts = probs_n_e.shape[-1]
    counts_e = torch.zeros(n_experts, device=probs_n_e.device).scatter_add(
        0, topk_n_k.reshape(-1), torch.ones(topk_n_k.numel(), device=probs_n_e.device)
    )
    f_e = counts_e / topk_n_k.numel()
    return n_experts * (f_e * probs_n_e.mean(dim=0)).sum()


def router_z_loss(logits_n_e: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)²; keeps router logits small and stable."""
    return torch.logsumexp(logits_n_e, dim=-1).pow(2).mean()


def gate_loss(aux: list[dict[str, torch.Tensor]], balance_weight: float, z_weight: float) -> torch.Tensor:
    """The hybrid gating loss: weighted load-balancing + z-loss, summed over the MoE layers (0 with no MoE layer)."""
    total = torch.zeros(())
    for layer in aux:
        if layer:
            total = total + balance_weight * layer["balance"] + z_weight * layer["z"]
    return total


def quantization_loss(h_n_b: torch.Tensor) -> torch.Tensor:
    """Optional: mean (|h| − 1)², pulls tanh outputs to ±1 so sign() loses little."""
    return (h_n_b.abs() - 1.0).pow(2).mean()


def bit_balance_loss(h_n_b: torch.Tensor) -> torch.Tensor:
    """Optional: mean over bits of (batch mean of the bit)², so each bit splits the data about in half."""
    return h_n_b.mean(dim=0).pow(2).mean()


def bit_decorrelation_loss(h_n_b: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal entry of HᵀH / N over the batch: pairs of bits that agree (or disagree) on most
    items carry one bit between them; pushing their second moment to 0 keeps the code's bits independent."""
    n, b = h_n_b.shape
    if b < 2:
        return h_n_b.new_zeros(())
    gram = h_n_b.T @ h_n_b / n
    off = gram - torch.diag_embed(torch.diagonal(gram))
    return off.pow(2).sum() / (b * (b - 1))


def label_similarity_loss(
    h_img_n_b: torch.Tensor, h_txt_m_b: torch.Tensor, labels_img_n_c: torch.Tensor, labels_txt_m_c: torch.Tensor
) -> torch.Tensor:
    """Optional, supervised: mean over pairs (i, j) of (cos(h_img_i, h_txt_j) − S_ij)², S_ij = 1 when the items
    share a label, else 0. Off by default: MCMFH is unsupervised; labels define relevance only at evaluation."""
    sim_n_m = ((labels_img_n_c.float() @ labels_txt_m_c.float().T) > 0).float()
    cos_n_m = F.normalize(h_img_n_b, dim=-1) @ F.normalize(h_txt_m_b, dim=-1).T
    return (cos_n_m - sim_n_m).pow(2).mean()


# ---------------------------------------------------------------- supervised terms (mcmfh-supervised, docs/model.md)
# Labels are multi-hot rows; an item with no label (an all-zero row) is *unlabelled*: it takes no part in a label
# term (its pairs are masked out, it has no proxy), so an archive with partial labels trains on what it has.


def label_similarity(labels_a_n_c: torch.Tensor, labels_b_m_c: torch.Tensor, soft: bool = False) -> torch.Tensor:
    """S_ij in [0, 1]: 1 when items i and j share a label, else 0 (the relevance of evaluation); ``soft``: the
    cosine of their multi-hot label vectors (multi-label soft similarity: two shared labels of two count more than
    one of five). 0 wherever either item is unlabelled."""
    a, b = (x if x.is_floating_point() else x.float() for x in (labels_a_n_c, labels_b_m_c))
    shared_n_m = a @ b.T
    if not soft:
        return (shared_n_m > 0).to(shared_n_m.dtype)
    norms_n_m = a.sum(1, keepdim=True).sqrt() * b.sum(1).sqrt()
    return torch.where(norms_n_m > 0, shared_n_m / norms_n_m.clamp_min(1e-12), torch.zeros_like(shared_n_m))


def labelled_pairs(labels_a_n_c: torch.Tensor, labels_b_m_c: torch.Tensor) -> torch.Tensor:
    """(N, M) bool: both items of the pair have at least one label."""
    return (labels_a_n_c.sum(1) > 0)[:, None] & (labels_b_m_c.sum(1) > 0)[None, :]


def pair_margin_loss(
    cos_n_m: torch.Tensor,
    sim_n_m: torch.Tensor,
    margin: float,
    mask_n_m: torch.Tensor | None = None,
    pos_margin: float = 1.0,
) -> torch.Tensor:
    """DCMHT's pairwise objective: mean over (masked) pairs of S relu(pos_margin − c)² + (1 − S) relu(c − margin)²:
    similar pairs pulled up to cosine ``pos_margin`` (DCMHT: 1, i.e. (1 − c)²), dissimilar ones pushed below
    ``margin``; with a soft S both pulls are weighted. A ``pos_margin`` below 1 leaves items of one label room to
    differ (where a few coarse labels would otherwise put each label in one bucket)."""
    pull = torch.relu(pos_margin - cos_n_m).pow(2)
    per_pair = sim_n_m * pull + (1 - sim_n_m) * torch.relu(cos_n_m - margin).pow(2)
    if mask_n_m is None:
        return per_pair.mean()
    return (per_pair * mask_n_m).sum() / mask_n_m.sum().clamp_min(1)


def label_pair_loss(
    h_img_n_b: torch.Tensor,
    h_txt_n_b: torch.Tensor,
    labels_n_c: torch.Tensor,
    intra: float = 1.0,
    margin: float = 0.0,
    soft: bool = False,
    pos_margin: float = 1.0,
) -> torch.Tensor:
    """``pair_margin_loss`` on the hash outputs of one batch of pairs: image–text (cross-modal) plus ``intra`` ×
    (image–image + text–text), pairs with an unlabelled item left out."""
    sim, mask = label_similarity(labels_n_c, labels_n_c, soft), labelled_pairs(labels_n_c, labels_n_c).float()
    ni, nt = F.normalize(h_img_n_b, dim=-1), F.normalize(h_txt_n_b, dim=-1)

    def term(c: torch.Tensor) -> torch.Tensor:
        return pair_margin_loss(c, sim, margin, mask, pos_margin)

    loss = term(ni @ nt.T)
    if intra > 0:
        loss = loss + intra * (term(ni @ ni.T) + term(nt @ nt.T))
    return loss


def proxy_loss(
    h_n_b: torch.Tensor,
    proxies_c_b: torch.Tensor,
    labels_n_c: torch.Tensor,
    delta: float,
    skip_unlabelled: bool = True,
) -> torch.Tensor:
    """DSPH's proxy objective: one learnable proxy per label; each output pulled to its labels' proxies and pushed
    below cosine ``delta`` from the others: mean_i [mean_{c ∈ Y_i} (1 − cos(h_i, p_c)) + mean_{c ∉ Y_i}
    relu(cos(h_i, p_c) − delta)], over labelled items only (0 when the batch has none); ``skip_unlabelled=False``
    is DSPH's own reading, where an item without labels is pushed from every proxy."""
    c = F.normalize(h_n_b, dim=-1) @ F.normalize(proxies_c_b, dim=-1).T
    pos = labels_n_c > 0
    n_pos = pos.sum(1)
    n_neg = (~pos).sum(1).clamp(min=1)
    pull = torch.where(pos, 1 - c, torch.zeros_like(c)).sum(1) / n_pos.clamp(min=1)
    push = torch.where(pos, torch.zeros_like(c), torch.relu(c - delta)).sum(1) / n_neg
    if not skip_unlabelled:
        return (pull + push).mean()
    labelled = (n_pos > 0).float()
    return ((pull + push) * labelled).sum() / labelled.sum().clamp_min(1)


def label_contrastive_loss(
    a_n_d: torch.Tensor,
    b_n_d: torch.Tensor,
    labels_n_c: torch.Tensor,
    temperature: float,
    soft: bool = False,
    instance_share: float = 0.0,
) -> torch.Tensor:
    """Label-similarity-weighted InfoNCE (multi-positive, SupCon-style, across modalities): the softmax over j of
    cos(a_i, b_j)/τ is matched (cross-entropy) to the target t_i = w e_i + (1 − w) S_i / Σ_j S_ij with S_ii = 1, so
    every item sharing a label with i is a positive in proportion to S, and ``instance_share`` w of the target stays
    on i's own pair (w = 0: the own pair is one positive among the rest; with a few coarse labels, w > 0 keeps the
    items of one label apart). An unlabelled item's target is its own pair alone: for it the term is the plain
    InfoNCE of ``info_nce``. Symmetric in the two modalities."""
    sim_n_n = label_similarity(labels_n_c, labels_n_c, soft)
    eye_n_n = torch.eye(len(sim_n_n), dtype=sim_n_n.dtype, device=sim_n_n.device)
    sim_n_n = torch.maximum(sim_n_n, eye_n_n)
    target_n_n = sim_n_n / sim_n_n.sum(1, keepdim=True)  # S is symmetric: the same targets serve both directions
    target_n_n = instance_share * eye_n_n + (1 - instance_share) * target_n_n
    logits_n_n = F.normalize(a_n_d, dim=-1) @ F.normalize(b_n_d, dim=-1).T / temperature
    a2b = -(target_n_n * F.log_softmax(logits_n_n, dim=1)).sum(1).mean()
    b2a = -(target_n_n * F.log_softmax(logits_n_n.T, dim=1)).sum(1).mean()
    return 0.5 * (a2b + b2a)
