"""Each MCMFH loss against a direct loop implementation on toy tensors."""

from __future__ import annotations

import math

import torch

from mcmfh.training.losses import (
    bank_contrastive_loss,
    bit_balance_loss,
    gate_loss,
    hash_contrastive_loss,
    info_nce,
    label_similarity_loss,
    load_balancing_loss,
    quantization_loss,
    router_z_loss,
    straight_through_sign,
)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _info_nce_loop(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    n = a.shape[0]
    i2t = t2i = 0.0
    for i in range(n):
        row = [math.exp(_cos(a[i], b[j]) / tau) for j in range(n)]
        col = [math.exp(_cos(a[j], b[i]) / tau) for j in range(n)]
        i2t += -math.log(row[i] / sum(row))
        t2i += -math.log(col[i] / sum(col))
    return 0.5 * (i2t + t2i) / n


def test_info_nce_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    for tau in (0.1, 0.5):
        assert math.isclose(float(info_nce(a, b, tau)), _info_nce_loop(a, b, tau), rel_tol=1e-5)
    # Asymmetric pairs: swapping the modalities gives the same symmetric loss.
    assert math.isclose(float(info_nce(a, b, 0.2)), float(info_nce(b, a, 0.2)), rel_tol=1e-6)


def test_hash_contrastive_matches_loop_on_tanh_outputs() -> None:
    g = torch.Generator().manual_seed(1)
    h1, h2 = torch.tanh(torch.randn(6, 16, generator=g)), torch.tanh(torch.randn(6, 16, generator=g))
    assert math.isclose(float(hash_contrastive_loss(h1, h2, 0.3)), _info_nce_loop(h1, h2, 0.3), rel_tol=1e-5)


def test_straight_through_sign_is_the_sign_forward_and_the_identity_backward() -> None:
    h = torch.tensor([[-0.7, 0.2, 0.9], [0.05, -0.01, -1.0]], requires_grad=True)
    q = straight_through_sign(h)
    assert torch.equal(q, torch.sign(h.detach()))
    weights = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (q * weights).sum().backward()
    assert torch.equal(h.grad, weights)  # the tanh output's own gradient, as if no sign were taken
    # on codes, two items that share a sign pattern are identical to the contrast, whatever their tanh values
    a, b = straight_through_sign(torch.tensor([[0.9, -0.1]])), straight_through_sign(torch.tensor([[0.1, -0.8]]))
    assert torch.equal(a, b)


def test_bank_contrastive_matches_loop_and_sends_no_gradient_into_the_bank() -> None:
    g = torch.Generator().manual_seed(7)
    h = torch.tanh(torch.randn(4, 8, generator=g)).requires_grad_(True)
    bank = (torch.randn(10, 8, generator=g) > 0).float() * 2 - 1  # the whole training set's ±1 codes
    bank.requires_grad_(True)
    index = torch.tensor([3, 0, 9, 5])  # each batch row's own item in the bank (its positive)
    tau = 0.3
    loop = 0.0
    for b in range(4):
        row = [math.exp(_cos(h[b].detach(), bank[j].detach()) / tau) for j in range(10)]
        loop += -math.log(row[int(index[b])] / sum(row))
    loss = bank_contrastive_loss(h, bank, index, tau)
    assert math.isclose(float(loss.detach()), loop / 4, rel_tol=1e-5)
    loss.backward()
    assert h.grad is not None and bank.grad is None


def test_load_balancing_matches_loop_and_is_one_when_uniform() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(9, 4, generator=g)
    probs = logits.softmax(-1)
    topk = probs.topk(2, dim=-1).indices
    n_e = 4
    loop = 0.0
    for e in range(n_e):
        f_e = sum(int(e in topk[t].tolist()) for t in range(9)) / (9 * 2)
        p_e = sum(float(probs[t, e]) for t in range(9)) / 9
        loop += f_e * p_e
    assert math.isclose(float(load_balancing_loss(probs, topk)), n_e * loop, rel_tol=1e-5)
    uniform = torch.full((8, 4), 0.25)
    balanced_topk = torch.tensor([[0, 1], [2, 3]] * 4)
    assert math.isclose(float(load_balancing_loss(uniform, balanced_topk)), 1.0, rel_tol=1e-6)
    # Collapsing every token onto one expert is penalised.
    collapsed = torch.tensor([[0.97, 0.01, 0.01, 0.01]] * 8)
    assert float(load_balancing_loss(collapsed, torch.tensor([[0, 1]] * 8))) > 1.5


def test_router_z_loss_matches_loop() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, generator=g) * 3
    loop = sum(math.log(sum(math.exp(float(v)) for v in row)) ** 2 for row in logits) / 5
    assert math.isclose(float(router_z_loss(logits)), loop, rel_tol=1e-5)


def test_gate_loss_weights_and_skips_dense_layers() -> None:
    aux = [
        {"balance": torch.tensor(1.5), "z": torch.tensor(2.0)},
        {},
        {"balance": torch.tensor(1.0), "z": torch.tensor(4.0)},
    ]
    assert math.isclose(float(gate_loss(aux, 1.0, 0.1)), 1.5 + 0.2 + 1.0 + 0.4, rel_tol=1e-6)
    assert float(gate_loss([{}, {}], 1.0, 0.1)) == 0.0


def test_optional_terms_match_loops() -> None:
    g = torch.Generator().manual_seed(4)
    h = torch.tanh(torch.randn(6, 8, generator=g))
    quant = sum((abs(float(v)) - 1) ** 2 for v in h.flatten()) / h.numel()
    assert math.isclose(float(quantization_loss(h)), quant, rel_tol=1e-5)
    bal = sum((float(h[:, b].sum()) / 6) ** 2 for b in range(8)) / 8
    assert math.isclose(float(bit_balance_loss(h)), bal, rel_tol=1e-5)
    h2 = torch.tanh(torch.randn(5, 8, generator=g))
    la = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 1]])
    lb = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 1, 1], [0, 0, 0], [1, 1, 1]])
    loop = 0.0
    for i in range(6):
        for j in range(5):
            s = float(int((la[i] * lb[j]).sum()) > 0)
            loop += (_cos(h[i], h2[j]) - s) ** 2
    assert math.isclose(float(label_similarity_loss(h, h2, la, lb)), loop / 30, rel_tol=1e-5)
