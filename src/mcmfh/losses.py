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
