"""Supervised mode: each label term against a direct loop over items, unlabelled items left out of them, the
TriPAH head's terms, and that the labels buy something on generated data where the pairing signal and the label
signal disagree (small fixtures, seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mcmfh.baselines.tripah import affinity_loss, class_balanced_pos_weight, image_quant_weight
from mcmfh.errors import MCMFHError
from mcmfh.evaluation.metrics import hamming_distances, map_all_tie_aware, relevance
from mcmfh.factory import create_method
from mcmfh.features import FeatureSet
from mcmfh.training.losses import (
    info_nce,
    label_contrastive_loss,
    label_pair_loss,
    label_similarity,
    pair_margin_loss,
    proxy_loss,
)

G = torch.Generator().manual_seed(0)
# Six items, three labels; item 4 has no label (unlabelled), items 0 and 1 share two labels.
LABELS = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.float64)
N, B = len(LABELS), 8


def _rand(*shape: int) -> torch.Tensor:
    return torch.tanh(torch.randn(*shape, generator=G, dtype=torch.float64))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _sim(i: int, j: int, soft: bool) -> float:
    a, b = LABELS[i], LABELS[j]
    if a.sum() == 0 or b.sum() == 0:
        return 0.0
    shared = float(a @ b)
    return shared / math.sqrt(float(a.sum() * b.sum())) if soft else float(shared > 0)


@pytest.mark.parametrize("soft", [False, True])
def test_label_similarity_is_the_indicator_or_the_label_cosine(soft: bool) -> None:
    s = label_similarity(LABELS, LABELS, soft)
    for i in range(N):
        for j in range(N):
            assert float(s[i, j]) == pytest.approx(_sim(i, j, soft))
    if soft:  # two shared labels of two count more than one shared label of two
        assert float(s[0, 1]) == pytest.approx(1.0) and float(s[0, 2]) == pytest.approx(1 / math.sqrt(2))
    assert float(s[4].abs().sum()) == 0.0  # the unlabelled item is similar to nothing, not even itself


@pytest.mark.parametrize("soft", [False, True])
def test_label_pair_loss_equals_loop_over_labelled_pairs(soft: bool) -> None:
    hi, ht = _rand(N, B), _rand(N, B)
    intra, margin, pos = 0.7, 0.1, 0.8

    def term(a: torch.Tensor, b: torch.Tensor) -> float:
        total, count = 0.0, 0
        for i in range(N):
            for j in range(N):
                if LABELS[i].sum() == 0 or LABELS[j].sum() == 0:
                    continue
                s, c = _sim(i, j, soft), _cos(a[i], b[j])
                total += s * max(pos - c, 0.0) ** 2 + (1 - s) * max(c - margin, 0.0) ** 2
                count += 1
        return total / count

    want = term(hi, ht) + intra * (term(hi, hi) + term(ht, ht))
    got = float(label_pair_loss(hi, ht, LABELS, intra, margin, soft, pos))
    assert got == pytest.approx(want, rel=1e-9)
    # The unlabelled item's outputs do not matter to the term.
    hi2 = hi.clone()
    hi2[4] = -hi2[4]
    assert float(label_pair_loss(hi2, ht, LABELS, intra, margin, soft, pos)) == pytest.approx(got, rel=1e-12)
    # Without a mask the DCMHT form averages over every pair (the baselines' use).
    s = label_similarity(LABELS, LABELS)
    c = torch.nn.functional.normalize(hi, dim=1) @ torch.nn.functional.normalize(ht, dim=1).T
    assert float(pair_margin_loss(c, s, 0.0)) == pytest.approx(
        float((s * (1 - c) ** 2 + (1 - s) * torch.relu(c) ** 2).mean()), rel=1e-12
    )


@pytest.mark.parametrize("soft", [False, True])
def test_label_contrastive_loss_equals_loop(soft: bool) -> None:
    a, b, tau = _rand(N, B), _rand(N, B), 0.3
    logits = [[_cos(a[i], b[j]) / tau for j in range(N)] for i in range(N)]

    def direction(rows: list[list[float]]) -> float:
        total = 0.0
        for i in range(N):
            target = [max(_sim(i, j, soft), 1.0 if i == j else 0.0) for j in range(N)]
            z = math.log(sum(math.exp(v) for v in rows[i]))
            total += -sum(t / sum(target) * (rows[i][j] - z) for j, t in enumerate(target))
        return total / N

    cols = [[logits[j][i] for j in range(N)] for i in range(N)]
    want = 0.5 * (direction(logits) + direction(cols))
    assert float(label_contrastive_loss(a, b, LABELS, tau, soft)) == pytest.approx(want, rel=1e-9)


def test_label_contrastive_loss_without_labels_is_plain_info_nce() -> None:
    """Unlabelled items fall back to their own pair as the only positive: the unsupervised term exactly."""
    a, b = _rand(N, B), _rand(N, B)
    none = torch.zeros_like(LABELS)
    assert float(label_contrastive_loss(a, b, none, 0.2)) == pytest.approx(float(info_nce(a, b, 0.2)), rel=1e-9)
    # ...and so do items whose labels are all different from each other's.
    distinct = torch.eye(N, dtype=torch.float64)
    assert float(label_contrastive_loss(a, b, distinct, 0.2)) == pytest.approx(float(info_nce(a, b, 0.2)), rel=1e-9)
    # Shared labels change it: items 0 and 1 become each other's positives.
    assert float(label_contrastive_loss(a, b, LABELS, 0.2)) != pytest.approx(float(info_nce(a, b, 0.2)), rel=1e-3)


def test_proxy_loss_skips_unlabelled_items() -> None:
    h, proxies, delta = _rand(N, B), _rand(3, B), 0.1
    per_item = []
    for i in range(N):
        pos = [c for c in range(3) if LABELS[i, c] > 0]
        neg = [c for c in range(3) if LABELS[i, c] == 0]
        pull = sum(1 - _cos(h[i], proxies[c]) for c in pos) / max(len(pos), 1)
        push = sum(max(_cos(h[i], proxies[c]) - delta, 0.0) for c in neg) / max(len(neg), 1)
        per_item.append((pull + push, bool(pos)))
    want = sum(v for v, labelled in per_item if labelled) / sum(labelled for _, labelled in per_item)
    assert float(proxy_loss(h, proxies, LABELS, delta)) == pytest.approx(want, rel=1e-9)
    dsph = sum(v for v, _ in per_item) / N  # DSPH's own reading pushes the unlabelled item from every proxy
    assert float(proxy_loss(h, proxies, LABELS, delta, skip_unlabelled=False)) == pytest.approx(dsph, rel=1e-9)


def test_tripah_terms() -> None:
    buf, h = _rand(N, B), _rand(4, B)
    sim = label_similarity(LABELS, LABELS[:4])
    want = 0.0
    for n in range(N):
        for m in range(4):
            theta = 0.5 * float(buf[n] @ h[m])
            want += math.log1p(math.exp(theta)) - float(sim[n, m]) * theta
    assert float(affinity_loss(buf, h, sim)) == pytest.approx(want / (N * 4), rel=1e-9)
    # Asymmetric progressive quantisation: 1 at the start, 2 at a third, back to 1 at the end.
    assert [image_quant_weight(p) for p in (0.0, 1 / 3, 2 / 3, 1.0)] == pytest.approx([1.0, 2.0, 1.5, 1.0])
    # Class-balanced BCE weights: a label on 1 of 6 items weighs 5, one on 3 of 6 weighs 1.
    w = class_balanced_pos_weight(torch.tensor([[1, 1], [0, 1], [0, 1], [0, 0], [0, 0], [0, 0]], dtype=torch.float32))
    assert w.tolist() == pytest.approx([5.0, 1.0], rel=1e-5)


def _conflicting_features(n: int = 360, seed: int = 0) -> FeatureSet:
    """Pairs whose strongest shared signal is a per-pair nuisance (what InfoNCE aligns on), while relevance is
    carried by a weaker label signal: the labels in the loss must be what lifts label mAP."""
    rng = np.random.default_rng(seed)
    n_labels, di, dt, dn = 6, 24, 16, 10
    labels = np.zeros((n, n_labels), np.uint8)
    labels[np.arange(n), rng.integers(0, n_labels, n)] = 1
    nuisance = rng.normal(size=(n, dn)) * 2.0
    image = np.concatenate([1.5 * labels @ rng.normal(size=(n_labels, di - dn)), nuisance], 1)
    text = np.concatenate(
        [1.5 * labels @ rng.normal(size=(n_labels, dt - dn)), nuisance @ rng.normal(size=(dn, dn))], 1
    )
    image += 0.6 * rng.normal(size=image.shape)
    text += 0.6 * rng.normal(size=text.shape)
    split = np.array(["train"] * (n - 120) + ["dev"] * 40 + ["test"] * 80)
    return FeatureSet(
        ids=[f"i{i}" for i in range(n)],
        image=(image / np.linalg.norm(image, axis=1, keepdims=True)).astype(np.float32),
        text=(text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32),
        labels=labels,
        label_vocab=[f"tag{j}" for j in range(n_labels)],
        split=split,
        manifest={"kind": "features", "encoder": "generated", "encoder_version": "0", "dataset": "generated"},
    )


SMALL = dict(width=32, dv_hidden=64, ffn_hidden=32, hash_hidden=32, epochs_stage1=10, epochs_stage2=20,
             batch_size=60, num_threads=1, min_steps_stage1=0, min_steps_stage2=0)  # fmt: skip


def _test_map(method: object, fs: FeatureSet) -> float:
    train, test = fs.splits("train", "dev"), fs.splits("test")
    rel = relevance(test.labels, train.labels)
    i2t = map_all_tie_aware(hamming_distances(method.encode_images(test.image), method.encode_texts(train.text)), rel)
    t2i = map_all_tie_aware(hamming_distances(method.encode_texts(test.text), method.encode_images(train.image)), rel)
    return 0.5 * (i2t + t2i)


def test_supervised_mcmfh_uses_the_labels_and_keeps_unlabelled_items() -> None:
    fs = _conflicting_features()
    train, dev = fs.splits("train"), fs.splits("dev")
    plain = create_method("mcmfh", 16, 0, **SMALL)
    plain.fit(train, dev)
    sup = create_method("mcmfh-supervised", 16, 0, **SMALL)
    log = sup.fit(train, dev)
    assert any(k.startswith("loss_label") for k in log["stage2"]["history"][-1])
    base, with_labels = _test_map(plain, fs), _test_map(sup, fs)
    print(f"generated conflicting data: unsupervised {base:.3f}, supervised {with_labels:.3f}")
    assert with_labels > base + 0.05, (base, with_labels)
    # Items without labels are kept (they train the pairing terms) and counted; a split with none is refused.
    half = train.subset(np.arange(len(train)))
    half.labels[::2] = 0
    partial_log = create_method("mcmfh-supervised", 16, 0, **{**SMALL, "epochs_stage2": 2}).fit(half, dev)
    assert partial_log["labelled_train_items"] == len(train) // 2
    half.labels[:] = 0
    with pytest.raises(MCMFHError, match="no training item has a label"):
        create_method("mcmfh-supervised", 16, 0, **SMALL).fit(half, dev)


def test_tripah_head_learns_from_labels() -> None:
    fs = _conflicting_features()
    m = create_method("tripah-head", 16, 0, epochs=50, eval_every=5, hidden=64, batch_size=60, num_threads=1)
    log = m.fit(fs.splits("train"), fs.splits("dev"))
    chance = float(relevance(fs.splits("test").labels, fs.splits("train", "dev").labels).mean())
    assert log["chosen_epoch"] > 5 and _test_map(m, fs) > chance + 0.1


def test_cli_trains_the_supervised_mode_and_refuses_a_split_without_labels(tmp_path, capsys) -> None:
    from mcmfh.cli import main

    fs = _conflicting_features(n=240)
    fs.labels[: len(fs) // 4] = 0  # a quarter of the items (training ones among them) have no label
    fs.save(tmp_path / "feats")
    tiny = ["--option", "epochs_stage1=1", "--option", "epochs_stage2=2", "--option", "min_steps_stage1=0",
            "--option", "min_steps_stage2=0", "--option", "width=32", "--option", "num_threads=1"]  # fmt: skip
    run = tmp_path / "run"
    args = ["train", "--features", str(tmp_path / "feats"), "--method", "mcmfh-supervised", "--out", str(run)]
    assert main(args + tiny) == 0
    out = capsys.readouterr().out
    n_train = int((fs.split == "train").sum())
    assert f"on {n_train - len(fs) // 4} of {n_train} training items" in out and "pairing terms only" in out
    assert main(["evaluate", str(run), "--features", str(tmp_path / "feats"), "--rerank", "none"]) == 0
    fs.labels[:] = 0
    fs.save(tmp_path / "nolabels")
    args = ["train", "--features", str(tmp_path / "nolabels"), "--method", "mcmfh-supervised", "--out", str(run) + "2"]
    assert main(args + tiny) == 2
    assert "error: mcmfh-supervised: no training item has a label" in capsys.readouterr().err


def test_a_collapsed_supervised_fit_backs_off_to_the_best_healthy_label_weight(monkeypatch) -> None:
    """Health first, then dev score, over the label-weight scales (mcmfh_supervised.LABEL_BACKOFF): the stand-in fit
    collapses at full weight, is healthy below, and scores best at the middle scale."""
    from mcmfh.baselines import mcmfh_supervised as ms
    from mcmfh.model.mcmfh import MCMFH

    def fake_fit(self, train, dev=None):
        pair = self.cfg.train.lambda_label_pair
        self.net = f"net-{pair:g}"
        score = {10.0: 0.9, 3.0: 0.8, 1.0: 0.7, 0.3: 0.6}[round(pair, 6)]
        return {"stage2": {"collapsed": pair > 5, "dev_score": score}}

    monkeypatch.setattr(MCMFH, "fit", fake_fit)
    fs = _conflicting_features(n=200)
    m = create_method("mcmfh-supervised", 16, 0, lambda_label_pair=10.0)
    log = m.fit(fs.splits("train"), fs.splits("dev"))
    assert log["label_weight_scale"] == ms.LABEL_BACKOFF[0] and m.net == "net-3"
    assert m.cfg.train.lambda_label_pair == pytest.approx(3.0) and m.options["lambda_label_pair"] == pytest.approx(3.0)
    assert m.cfg.train.lambda_label_stage1 == pytest.approx(0.3 * ms.SUPERVISED_DEFAULTS["lambda_label_stage1"])
    # A healthy full-weight fit is kept as it is.
    healthy = create_method("mcmfh-supervised", 16, 0, lambda_label_pair=3.0)
    assert healthy.fit(fs.splits("train"), fs.splits("dev"))["label_weight_scale"] == 1.0 and healthy.net == "net-3"


def test_the_label_backoff_reaches_its_smallest_scale_and_is_part_of_the_recipe(monkeypatch) -> None:
    """Every scale of LABEL_BACKOFF is tried while the fits stay collapsed (MedPix with coarse labels needed x0.03), the
    first healthy one is kept, and the back-off is in the recipe so cached rows refit when it changes."""
    from mcmfh.baselines import mcmfh_supervised as ms
    from mcmfh.model.mcmfh import MCMFH

    tried = []

    def fake_fit(self, train, dev=None):
        pair = round(self.cfg.train.lambda_label_pair, 6)
        tried.append(pair)
        self.net = f"net-{pair:g}"
        return {"stage2": {"collapsed": pair > 0.5, "dev_score": 1.0 - pair / 100}}

    monkeypatch.setattr(MCMFH, "fit", fake_fit)
    fs = _conflicting_features(n=200)
    m = create_method("mcmfh-supervised", 16, 0, lambda_label_pair=10.0)
    log = m.fit(fs.splits("train"), fs.splits("dev"))
    assert tried == [10.0, 3.0, 1.0, 0.3] and ms.LABEL_BACKOFF[-1] == 0.03
    assert log["label_weight_scale"] == 0.03 and m.net == "net-0.3"
    assert m.recipe()["label_backoff"] == list(ms.LABEL_BACKOFF)
    assert "label_backoff" not in create_method("mcmfh", 16, 0).recipe()


def test_supervised_code_length_rules_widen_the_hash_heads_and_quantise_from_32_bits() -> None:
    """mcmfh_supervised's code-length rules: hash heads 8 hidden units a bit, never below MCMFH's 128, and from 32
    bits on DCMHT's quantisation term; at every length the first MLP is a plain MLP trained on in stage 2 (the
    supervised default); an explicit option wins, the unsupervised method keeps its frozen DV-MLP, and the fitted
    network has the width the rule gives."""
    from mcmfh.baselines import mcmfh_supervised as ms

    quant = ms.LONG_CODE_RULES["lambda_quant"]
    for bits, hidden, q in ((16, 128, 0.0), (32, 256, quant), (64, 512, quant)):
        m = create_method("mcmfh-supervised", bits, 0)
        assert (m.cfg.model.hash_hidden, m.cfg.train.lambda_quant, m.cfg.model.width) == (hidden, q, 128), bits
        assert m.cfg.model.dropout_voting is False, bits
        plain = create_method("mcmfh", bits, 0)
        assert (plain.cfg.model.hash_hidden, plain.cfg.train.lambda_quant, plain.cfg.model.width) == (128, 0.0, 128)
        assert plain.cfg.model.dropout_voting
    assert create_method("mcmfh-supervised", 16, 0, dropout_voting=True).cfg.model.dropout_voting
    assert create_method("mcmfh-supervised", 16, 0).recipe() == {
        **create_method("mcmfh", 16, 0, **ms.SUPERVISED_DEFAULTS).recipe(),
        "label_backoff": list(ms.LABEL_BACKOFF),
        "backoff_on": "any collapsed epoch",
    }
    explicit = create_method("mcmfh-supervised", 64, 0, hash_hidden=96, lambda_quant=0.0, width=64)
    assert (explicit.cfg.model.hash_hidden, explicit.cfg.train.lambda_quant, explicit.cfg.model.width) == (96, 0.0, 64)

    fs = _conflicting_features(n=200)
    tiny = {k: v for k, v in SMALL.items() if k != "hash_hidden"} | {"epochs_stage1": 1, "epochs_stage2": 1}
    m = create_method("mcmfh-supervised", 32, 0, **tiny)
    log = m.fit(fs.splits("train"), fs.splits("dev"))
    assert m.net.hash_img.net[0].out_features == m.net.hash_txt.net[0].out_features == 256
    assert "loss_quant" in log["stage2"]["history"][-1]
    assert not m.net.dv_img.frozen and m.net.dv_img.fc1.weight.requires_grad  # trained on in stage 2, no votes


def test_supervised_config_lists_the_supervised_block() -> None:
    from pathlib import Path

    from mcmfh.training.experiment import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "medpix2-supervised.yaml")
    assert {"mcmfh", "mcmfh-supervised", "dcmht-head", "dsph-head", "tripah-head"} <= set(cfg.methods)
    assert cfg.label_set == "labels" and cfg.bits == [16, 32, 64] and cfg.seeds == [0, 1, 2]


def test_a_supervised_run_is_indexed_and_searched_like_any_other(tmp_path, capsys) -> None:
    import json

    from mcmfh.cli import main
    from mcmfh.data import load_dataset
    from mcmfh.data.synthetic import make_synthetic_dataset
    from mcmfh.encode_features import encode_dataset
    from mcmfh.encoders import get_encoder

    ds = load_dataset("csv", make_synthetic_dataset(tmp_path / "syn", n=64, seed=0))
    encode_dataset(ds, get_encoder("tiny"), tmp_path / "feats")
    run, archive = tmp_path / "run", tmp_path / "archive"
    tiny = ["--option", "epochs_stage1=1", "--option", "epochs_stage2=2", "--option", "min_steps_stage1=0",
            "--option", "min_steps_stage2=0", "--option", "width=32", "--option", "num_threads=1"]  # fmt: skip
    train = ["train", "--features", str(tmp_path / "feats"), "--method", "mcmfh-supervised", "--out", str(run)]
    assert main(train + tiny) == 0
    assert main(["index", "build", str(run), "--features", str(tmp_path / "feats"), "--out", str(archive)]) == 0
    capsys.readouterr()
    # The raw ranking: a 2-epoch model gives many items one code + payload, which grouped search folds as copies.
    assert main(["search", str(archive), "--text", "a scan", "--k", "3", "--per-study", "0", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 3


def test_a_fit_whose_codes_collapsed_after_its_chosen_epoch_also_backs_off(monkeypatch) -> None:
    """The chosen epoch is healthy but later epochs collapsed (the label weights pull the set into buckets, and model
    choice kept a barely trained early epoch): the weaker weights are tried too, and the healthy fit with the best dev
    score is kept; a fit with no collapsed epoch is never refitted."""
    from mcmfh.model.mcmfh import MCMFH

    tried = []

    def fake_fit(self, train, dev=None):
        pair = round(self.cfg.train.lambda_label_pair, 6)
        tried.append(pair)
        self.net = f"net-{pair:g}"
        history = [{"epoch": 1, "collapsed": False}, {"epoch": 2, "collapsed": pair > 2}]
        score = {10.0: 0.5, 3.0: 0.7, 1.0: 0.6, 0.3: 0.55}[pair]
        return {"stage2": {"collapsed": False, "dev_score": score, "history": history}}

    monkeypatch.setattr(MCMFH, "fit", fake_fit)
    fs = _conflicting_features(n=200)
    m = create_method("mcmfh-supervised", 16, 0, lambda_label_pair=10.0)
    log = m.fit(fs.splits("train"), fs.splits("dev"))
    assert tried == [10.0, 3.0, 1.0, 0.3] and log["label_weight_scale"] == 0.3 and m.net == "net-3"
    tried.clear()
    calm = create_method("mcmfh-supervised", 16, 0, lambda_label_pair=1.0)
    assert calm.fit(fs.splits("train"), fs.splits("dev"))["label_weight_scale"] == 1.0 and tried == [1.0]


def test_supervised_mode_trains_stage_2_on_the_full_vote_at_every_size() -> None:
    """MCMFH trains small fits on vote views; the supervised mode measured no gain from them and keeps the full vote."""
    plain = create_method("mcmfh", bits=16, seed=0).requested.train
    supervised = create_method("mcmfh-supervised", bits=16, seed=0).requested.train
    assert plain.views_for(plain.view_train_pairs - 1, 0.0) == 1 and plain.views_for(10_000, 0.0) == 0
    assert supervised.views_for(60, 0.0) == 0 and supervised.views_for(600, 0.0) == 0
    assert supervised.views_for(10_000, 0.0) == 0
