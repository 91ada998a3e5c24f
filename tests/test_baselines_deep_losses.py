"""Each deep-baseline loss against a direct (loop) implementation of its formula on toy tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_features
from mcmfh.baselines.dcmht import DCMHTOptions, dcmht_loss
from mcmfh.baselines.dgcpn import coherence_target, dgcpn_loss
from mcmfh.baselines.djsrh import DJSRHOptions, djsrh_loss
from mcmfh.baselines.jdsh import JDSHOptions, jdsh_loss, jdsh_similarity
from mcmfh.baselines.ucch import indexed_contrast_loss, memory_contrast_loss, ranking_loss
from mcmfh.errors import MCMFHError
from mcmfh.factory import create_method
from mcmfh.training.losses import pair_margin_loss, proxy_loss

G = torch.Generator().manual_seed(0)
N, B, DI, DT, C = 6, 8, 5, 4, 3


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def mse_loop(fn_pred, target) -> float:
    return sum((fn_pred(i, j) - float(target[i][j])) ** 2 for i in range(N) for j in range(N)) / N**2


@pytest.fixture
def toy():
    hi, ht = torch.tanh(_rand(N, B)), torch.tanh(_rand(N, B))
    xi, xt = _rand(N, DI), _rand(N, DT)
    labels = (torch.rand(N, C, generator=G, dtype=torch.float64) > 0.5).double()
    labels[0] = 0  # an item without labels
    return hi, ht, xi, xt, labels


def test_djsrh_loss_equals_loop(toy):
    hi, ht, xi, xt, _ = toy
    o = DJSRHOptions()
    s1 = [[o.beta * cos(xi[i], xi[j]) + (1 - o.beta) * cos(xt[i], xt[j]) for j in range(N)] for i in range(N)]
    s = [
        [(1 - o.eta) * s1[i][j] + o.eta * sum(s1[i][k] * s1[j][k] for k in range(N)) / N for j in range(N)]
        for i in range(N)
    ]
    t = [[o.mu * v for v in row] for row in s]
    want = (
        mse_loop(lambda i, j: cos(hi[i], ht[j]), t)
        + o.lambda1 * mse_loop(lambda i, j: cos(hi[i], hi[j]), t)
        + o.lambda2 * mse_loop(lambda i, j: cos(ht[i], ht[j]), t)
    )
    assert float(djsrh_loss(hi, ht, xi, xt, o)) == pytest.approx(want, rel=1e-9)


def test_jdsh_similarity_and_loss_equal_loop(toy):
    hi, ht, xi, xt, _ = toy
    o = JDSHOptions()
    si = [[2 * cos(xi[i], xi[j]) - 1 for j in range(N)] for i in range(N)]
    st = [[2 * cos(xt[i], xt[j]) - 1 for j in range(N)] for i in range(N)]
    sj = [[cos(torch.tensor(si[i]), torch.tensor(st[j])) for j in range(N)] for i in range(N)]
    s = [[o.a * si[i][j] + o.b * st[i][j] + o.c * (sj[i][j] + sj[j][i]) / 2 for j in range(N)] for i in range(N)]
    off = [s[i][j] for i in range(N) for j in range(N) if i != j]
    m = sum(off) / len(off)
    low, high = [v for v in off if v < m], [v for v in off if v >= m]
    left = m - o.left_sd * math.sqrt(sum((v - m) ** 2 for v in low) / len(low))
    right = m + o.right_sd * math.sqrt(sum((v - m) ** 2 for v in high) / len(high))
    lo, hi_ = min(min(r) for r in s), max(max(r) for r in s)
    t = [[0.0] * N for _ in range(N)]
    for i in range(N):
        for j in range(N):
            v = s[i][j]
            if v < left:
                v = (1 + o.l1 * math.exp(-(v - lo))) * v
            elif v > right:
                v = (1 + o.l2 * math.exp(v - hi_)) * v
            t[i][j] = o.mu * v
    got = jdsh_similarity(xi, xt, o)
    assert np.allclose(got.numpy(), np.array(t), atol=1e-9)
    want = (
        o.intra * mse_loop(lambda i, j: cos(hi[i], hi[j]), t)
        + mse_loop(lambda i, j: cos(hi[i], ht[j]), t)
        + mse_loop(lambda i, j: cos(ht[i], hi[j]), t)
        - sum(cos(hi[i], ht[i]) for i in range(N)) / N
        + o.intra * mse_loop(lambda i, j: cos(ht[i], ht[j]), t)
    )
    # float64 sums in another order than the loop: agreement to ~1e-9, not bit for bit
    assert float(jdsh_loss(hi, ht, got, o.intra)) == pytest.approx(want, rel=1e-7)


def test_dgcpn_coherence_target_and_loss_equal_loop(toy):
    hi, ht, xi, xt, _ = toy
    beta, k, gamma, mu, intra = 0.5, 2, 0.5, 1.2, 0.1
    s = [[beta * cos(xi[i], xi[j]) + (1 - beta) * cos(xt[i], xt[j]) for j in range(N)] for i in range(N)]
    nbrs = [set(sorted((j for j in range(N) if j != i), key=lambda j: -s[i][j])[:k]) for i in range(N)]
    t = [[(1 - gamma) * s[i][j] + gamma * (2 * len(nbrs[i] & nbrs[j]) / k - 1) for j in range(N)] for i in range(N)]
    got = coherence_target(xi.float(), xt.float(), beta, k, gamma)
    assert np.allclose(got.numpy(), np.array(t), atol=1e-5)
    tm = [[mu * v for v in r] for r in t]
    want = (
        mse_loop(lambda i, j: cos(hi[i], ht[j]), tm)
        + intra * mse_loop(lambda i, j: cos(hi[i], hi[j]), tm)
        + intra * mse_loop(lambda i, j: cos(ht[i], ht[j]), tm)
    )
    assert float(dgcpn_loss(hi, ht, torch.tensor(t, dtype=torch.float64), mu, intra)) == pytest.approx(want, rel=1e-9)


def test_ucch_ranking_loss_equals_loop(toy):
    hi, ht, *_ = toy
    margin, shift = 0.2, 1.0
    s = hi @ ht.T
    total = 0.0
    for i in range(N):  # image query i: texts j
        cost = [float(s[i, j]) if s[i, j] >= s[i, i] - margin else float(s[i, j]) - shift for j in range(N)]
        total += (-float(s[i, i]) + math.log(sum(math.exp(c) for c in cost)) + margin) / N
    for j in range(N):  # text query j: images i
        cost = [float(s[i, j]) if s[i, j] >= s[j, j] - margin else float(s[i, j]) - shift for i in range(N)]
        total += (-float(s[j, j]) + math.log(sum(math.exp(c) for c in cost)) + margin) / N
    assert float(ranking_loss(hi, ht, margin, shift)) == pytest.approx(total, rel=1e-9)


def test_ucch_memory_contrast_loss_equals_loop(toy):
    hi, *_ = toy
    targets = _rand(N, 5, B).sign()
    temp = 0.9 * math.sqrt(B)
    want = 0.0
    for i in range(N):
        logits = [float(targets[i, j] @ hi[i]) / temp for j in range(5)]
        want += -(logits[0] - math.log(sum(math.exp(v) for v in logits))) / N
    assert float(memory_contrast_loss(hi, targets, temp)) == pytest.approx(want, rel=1e-9)


def test_ucch_indexed_contrast_loss_is_the_memory_contrast_loss(toy):
    """The fast form (logits gathered from b bank^T) against the loop over explicit targets bank[index]."""
    hi, *_ = toy
    bank = _rand(7, B).sign()
    index = torch.randint(7, (N, 5), generator=G)
    index[:, 0] = torch.arange(N)  # column 0: the item's own entry (repeats allowed among the negatives)
    temp = 0.9 * math.sqrt(B)
    want = 0.0
    for i in range(N):
        logits = [float(bank[index[i, j]] @ hi[i]) / temp for j in range(5)]
        want += -(logits[0] - math.log(sum(math.exp(v) for v in logits))) / N
    got = indexed_contrast_loss(hi, bank, index, temp)
    assert float(got) == pytest.approx(want, rel=1e-9)
    assert float(got) == pytest.approx(float(memory_contrast_loss(hi, bank[index], temp)), rel=1e-12)


def test_dcmht_loss_equals_loop(toy):
    hi, ht, _, _, labels = toy
    o = DCMHTOptions(margin=0.1)
    sim = [[1.0 if float(labels[i] @ labels[j]) > 0 else 0.0 for j in range(N)] for i in range(N)]

    def term(a, b):
        tot = 0.0
        for i in range(N):
            for j in range(N):
                c = cos(a[i], b[j])
                tot += (1 - c) ** 2 if sim[i][j] else max(c - o.margin, 0.0) ** 2
        return tot / N**2

    quant = sum((abs(float(v)) - 1) ** 2 for v in hi.flatten()) / hi.numel()
    quant += sum((abs(float(v)) - 1) ** 2 for v in ht.flatten()) / ht.numel()
    want = term(hi, ht) + o.intra * (term(hi, hi) + term(ht, ht)) + o.quant * quant
    assert float(dcmht_loss(hi, ht, labels, o)) == pytest.approx(want, rel=1e-9)
    assert float(pair_margin_loss(torch.ones(2, 2, dtype=torch.float64), torch.ones(2, 2), 0.0)) == 0.0


def test_dsph_proxy_loss_equals_loop(toy):
    hi, _, _, _, labels = toy
    proxies, delta = _rand(C, B), 0.1
    want = 0.0
    for i in range(N):
        pos = [c for c in range(C) if labels[i, c] > 0]
        neg = [c for c in range(C) if labels[i, c] == 0]
        pull = sum(1 - cos(hi[i], proxies[c]) for c in pos) / max(len(pos), 1)
        push = sum(max(cos(hi[i], proxies[c]) - delta, 0.0) for c in neg) / max(len(neg), 1)
        want += (pull + push) / N
    assert float(proxy_loss(hi, proxies, labels, delta, skip_unlabelled=False)) == pytest.approx(want, rel=1e-9)


def test_dev_choice_is_logged_and_reproduced():
    f = make_features(n=300, di=16, dt=12, n_labels=4, seed=3)
    m = create_method("jdsh", 16, 0, epochs=5, hidden=32, batch_size=64, num_threads=1)
    log = m.fit(f.splits("train"), f.splits("dev"))
    assert len(log["dev_map_tie_aware"]) == 5
    assert log["chosen_epoch"] == int(np.argmax(log["dev_map_tie_aware"])) + 1


def test_mcmfh_supervised_turns_the_label_terms_on_and_keeps_the_options():
    from mcmfh.baselines.mcmfh_supervised import SUPERVISED_DEFAULTS

    sup_cfg = create_method("mcmfh-supervised", 16).cfg
    sup, plain = sup_cfg.train, create_method("mcmfh", 16).cfg.train
    owner = {k: sup_cfg.model if hasattr(sup_cfg.model, k) else sup for k in SUPERVISED_DEFAULTS}  # whose field
    assert SUPERVISED_DEFAULTS and all(getattr(owner[k], k) == v for k, v in SUPERVISED_DEFAULTS.items())
    assert any(getattr(sup, k) > 0 and getattr(plain, k) == 0 for k in SUPERVISED_DEFAULTS if k.startswith("lambda"))
    assert create_method("mcmfh-supervised", 16, lambda_label_pair=0.3).cfg.train.lambda_label_pair == 0.3


def test_eval_every_only_thins_the_dev_checks():
    """A coarser dev check leaves training unchanged (same losses, same dev scores at the checked epochs) and
    chooses among the checked epochs (always including the last)."""
    f = make_features(n=300, di=16, dt=12, n_labels=4, seed=3)
    kw = dict(epochs=5, hidden=32, batch_size=64, num_threads=1)
    every = create_method("jdsh", 16, 0, **kw).fit(f.splits("train"), f.splits("dev"))
    sparse = create_method("jdsh", 16, 0, eval_every=2, **kw).fit(f.splits("train"), f.splits("dev"))
    assert every["dev_epochs"] == [1, 2, 3, 4, 5] and sparse["dev_epochs"] == [2, 4, 5]
    assert sparse["loss"] == every["loss"]
    assert sparse["dev_map_tie_aware"] == [every["dev_map_tie_aware"][e - 1] for e in (2, 4, 5)]
    best = int(np.argmax(sparse["dev_map_tie_aware"]))
    assert sparse["chosen_epoch"] == sparse["dev_epochs"][best]


@pytest.mark.parametrize("bad", [0, -1])
def test_eval_every_must_be_a_positive_integer(bad):
    with pytest.raises(MCMFHError, match="eval_every"):
        create_method("djsrh", 16, 0, eval_every=bad)
