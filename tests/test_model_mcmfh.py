"""MCMFH model: shapes, MoE routing, single-item inference, determinism, frozen DV-MLP, save/load, ablations,
resume, and that it learns (beats chance clearly) on generated label-structured features."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from conftest import make_features
from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.evaluation.metrics import hamming_distances, map_all, relevance
from mcmfh.factory import available_methods, create_method, load_method
from mcmfh.model.config import MCMFHConfig, ModelConfig, TrainConfig, flat_fields, top_tag_share
from mcmfh.model.dv_mlp import DropoutVotingMLP
from mcmfh.model.moe import DenseFeedForward, MoEFeedForward
from mcmfh.model.trainer import rescue_line
from tiny_config import TINY_MCMFH

TINY = {**TINY_MCMFH, "epochs_stage1": 3, "epochs_stage2": 3, "eval_every": 1}


@pytest.fixture(scope="module")
def data():
    fs = make_features(n=200, di=24, dt=16, n_labels=5, seed=0)
    return fs.splits("train"), fs.splits("dev"), fs.splits("test")


@pytest.fixture(scope="module")
def fitted(data):
    train, dev, _ = data
    method = create_method("mcmfh", bits=16, seed=0, **TINY)
    log = method.fit(train, dev)
    return method, log


def resumed_after_first_stage2_epoch(options: dict[str, Any], seed: int, ckpt, train, dev):
    """A fit interrupted after its first stage-2 epoch, then a new fit with the same options resuming from it."""

    class Stop(Exception):
        pass

    def stop_after_first_stage2_epoch(stage: int, epoch: int) -> None:
        if stage == 2 and epoch == 1:
            raise Stop

    opts = {**options, "checkpoint_dir": str(ckpt)}
    interrupted = create_method("mcmfh", bits=16, seed=seed, **opts)
    interrupted.callback = stop_after_first_stage2_epoch
    with pytest.raises(Stop):
        interrupted.fit(train, dev)
    resumed = create_method("mcmfh", bits=16, seed=seed, **opts)
    resumed.fit(train, dev)
    return resumed


def test_methods_registered() -> None:
    assert {"mcmfh", "mcmfh-no-moe", "mcmfh-no-dv", "mcmfh-no-gateloss"} <= set(available_methods())


@pytest.mark.parametrize("bits", [16, 32, 64, 128])
def test_code_shapes(data, bits: int) -> None:
    train, dev, test = data
    method = create_method("mcmfh", bits=bits, seed=0, **{**TINY, "epochs_stage1": 1, "epochs_stage2": 1})
    method.fit(train, dev)
    img, txt = method.encode_images(test.image), method.encode_texts(test.text)
    assert img.shape == (len(test), bits) and txt.shape == (len(test), bits)
    assert img.dtype == bool and txt.dtype == bool
    assert method.encode_images(test.image[:0]).shape == (0, bits)


def test_bad_bits_and_bad_input_are_refused(data, fitted) -> None:
    with pytest.raises(MCMFHError, match="bits"):
        create_method("mcmfh", bits=24, seed=0, **TINY).fit(data[0], data[1])
    method, _ = fitted
    with pytest.raises(MCMFHError, match=r"image embeddings must be \(N, 24\)"):
        method.encode_images(np.zeros((3, 5), np.float32))
    with pytest.raises(MCMFHError, match="not fitted"):
        create_method("mcmfh", bits=16).encode_texts(np.zeros((1, 16), np.float32))


def test_config_options_are_checked() -> None:
    with pytest.raises(MCMFHError, match="unknown option.*widht"):
        MCMFHConfig.from_options(widht=3)
    with pytest.raises(MCMFHError, match="'experts' expects int, got 2.5"):
        MCMFHConfig.from_options(experts=2.5)
    with pytest.raises(MCMFHError, match="'lr' expects float, got True"):
        MCMFHConfig.from_options(lr=True)
    with pytest.raises(MCMFHError, match="'use_moe' expects bool, got 1"):
        MCMFHConfig.from_options(use_moe=1)
    with pytest.raises(MCMFHError, match="'gate' must be one of"):
        MCMFHConfig.from_options(gate="noisy")
    with pytest.raises(MCMFHError, match="top_k"):
        MCMFHConfig.from_options(experts=2, top_k=3)
    assert MCMFHConfig.from_options(lr=1).train.lr == 1.0
    # From the CLI every value is a string (`mcmfh train --option use_moe=false`): coerced per field.
    cfg = MCMFHConfig.from_options(use_moe="false", experts="8", lr="5e-4", gate="sparse")
    assert (cfg.model.use_moe, cfg.model.experts, cfg.train.lr, cfg.model.gate) == (False, 8, 5e-4, "sparse")
    with pytest.raises(MCMFHError, match="'experts' expects int, got 'many'"):
        MCMFHConfig.from_options(experts="many")


def test_moe_returns_aux_losses_and_routes_top_k() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 2, 16)
    for gate in ("sparse", "hybrid", "dense"):
        moe = MoEFeedForward(16, 8, experts=4, top_k=2, gate=gate, blend=0.5)
        out, aux = moe(x)
        assert out.shape == x.shape
        assert set(aux) == {"balance", "z"} and all(v.ndim == 0 and float(v.detach()) > 0 for v in aux.values())
        weights, probs, topk = moe.gates(moe.router(x.reshape(-1, 16)))
        assert topk.shape == (6, 2) and torch.equal(moe.last_topk, topk)
        assert torch.allclose(weights.sum(-1), torch.ones(6))
        nonzero = (weights > 0).sum(-1)
        if gate == "sparse":
            assert torch.equal(nonzero, torch.full((6,), 2))  # exactly k experts per token
            assert torch.equal(weights.topk(2, dim=-1).indices.sort(-1).values, topk.sort(-1).values)
        elif gate == "dense":
            assert torch.allclose(weights, probs)
        else:  # hybrid: every expert gets the dense share, the top-k get more
            assert torch.equal(nonzero, torch.full((6,), 4))
            topv = probs.gather(-1, topk)
            sparse = torch.zeros_like(probs).scatter(-1, topk, topv / topv.sum(-1, keepdim=True))
            assert torch.allclose(weights, 0.5 * probs + 0.5 * sparse)
    # An expert with a zero gate contributes nothing: sparse output equals the sum over the chosen experts only.
    moe = MoEFeedForward(16, 8, experts=4, top_k=1, gate="sparse")
    tok = torch.randn(1, 16)
    out, _ = moe(tok)
    e = int(moe.last_topk[0, 0])
    h = torch.nn.functional.gelu(tok @ moe.w1_e_d_h[e] + moe.b1_e_h[e])
    assert torch.allclose(out, h @ moe.w2_e_h_d[e] + moe.b2_e_d[e], atol=1e-6)


def test_code_of_an_item_depends_on_nothing_else(data, fitted) -> None:
    _, _, test = data
    method, _ = fitted
    img_all, txt_all = method.encode_images(test.image), method.encode_texts(test.text)
    perm = np.random.default_rng(0).permutation(len(test))
    # Other batch-mates (a permuted batch, a batch of one, a batch mixed with unrelated rows) give the same code.
    assert np.array_equal(method.encode_images(test.image[perm]), img_all[perm])
    assert np.array_equal(method.encode_texts(test.text[perm]), txt_all[perm])
    for i in (0, 7):
        assert np.array_equal(method.encode_images(test.image[i : i + 1])[0], img_all[i])
        assert np.array_equal(method.encode_texts(test.text[i : i + 1])[0], txt_all[i])
    noise = np.random.default_rng(1).normal(size=(5, test.image.shape[1])).astype(np.float32)
    assert np.array_equal(method.encode_images(np.vstack([noise, test.image[:3]]))[5:], img_all[:3])
    # The image path never reads a text: the image token's fusion output with the learned "absent" text token is
    # what is hashed, so changing every text leaves image codes untouched, while the pair pass does mix tokens.
    net = method.net
    x_img = net.dv_tokens(torch.from_numpy(test.image[:4]), None)[0]
    x_txt = net.dv_tokens(None, torch.from_numpy(test.text[:4]))[1]
    single, _ = net.fusion.encode_single(x_img, 0)
    pair, _ = net.fusion.encode_pair(x_img, x_txt)
    pair_other, _ = net.fusion.encode_pair(x_img, x_txt.flip(0))
    assert not torch.allclose(pair[:, 0], pair_other[:, 0])  # attention really mixes the two tokens in a pair
    assert not torch.allclose(single, pair[:, 0])


def test_same_seed_same_codes_other_seed_other_codes(data, fitted) -> None:
    train, dev, test = data
    method, _ = fitted
    again = create_method("mcmfh", bits=16, seed=0, **TINY)
    again.fit(train, dev)
    assert np.array_equal(again.encode_images(test.image), method.encode_images(test.image))
    assert np.array_equal(again.encode_texts(test.text), method.encode_texts(test.text))
    other = create_method("mcmfh", bits=16, seed=1, **TINY)
    other.fit(train, dev)
    assert not np.array_equal(other.encode_images(test.image), method.encode_images(test.image))


def test_frozen_dv_mlp_is_deterministic_and_untouched_in_stage_2(data) -> None:
    train, dev, test = data
    method = create_method("mcmfh", bits=16, seed=0, **TINY)
    snapshots: list[dict[str, torch.Tensor]] = []
    method.callback = lambda stage, epoch: snapshots.append(
        {k: v.clone() for k, v in method.net.state_dict().items() if k.startswith("dv_")}
    ) if stage == 2 else None  # fmt: skip
    method.fit(train, dev)
    final = {k: v for k, v in method.net.state_dict().items() if k.startswith("dv_")}
    assert len(snapshots) == TINY["epochs_stage2"]
    for snap in snapshots:
        assert all(torch.equal(snap[k], final[k]) for k in final)
    net = method.net
    assert net.dv_img.frozen and net.dv_img.masks.shape == (8, TINY["dv_hidden"])
    assert not any(p.requires_grad for p in net.dv_img.parameters())
    x = torch.from_numpy(test.image)
    net.train()  # even in training mode the frozen vote is deterministic: the masks are fixed
    assert torch.equal(net.dv_img(x), net.dv_img(x))
    # The vote is the mean of the T masked passes, written out one pass at a time.
    h = torch.nn.functional.gelu(net.dv_img.fc1(x))
    passes = torch.stack([net.dv_img.fc2(h * m) for m in net.dv_img.masks])
    assert torch.allclose(net.dv_img(x), passes.mean(0), atol=1e-5)
    net.eval()


def test_dv_mlp_masks_drawn_once() -> None:
    mlp = DropoutVotingMLP(6, 10, 4, p=0.5, votes=5)
    assert not mlp.frozen
    mlp.freeze(torch.Generator().manual_seed(0))
    masks = mlp.masks.clone()
    assert mlp.frozen and masks.shape == (5, 10) and set(masks.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(mlp.masks, masks)
    # Stage 2's training views on small sets (vote_views): per item the mean of the stored votes it picks.
    x = torch.randn(3, 6)
    h = torch.nn.functional.gelu(mlp.fc1(x))
    one = mlp.vote_view(x, torch.tensor([[0], [4], [2]]))
    for i, vote in enumerate((0, 4, 2)):
        assert torch.allclose(one[i], mlp.fc2(h[i] * masks[vote]), atol=1e-6)
    assert not torch.allclose(one, mlp(x))
    assert torch.allclose(mlp.vote_view(x, torch.arange(5).expand(3, 5)), mlp(x), atol=1e-6)


def test_save_load_roundtrip_gives_identical_codes(tmp_path, data, fitted) -> None:
    _, _, test = data
    method, _ = fitted
    method.save(tmp_path / "run")
    loaded = load_method(tmp_path / "run")
    assert type(loaded) is type(method)
    assert np.array_equal(loaded.encode_images(test.image), method.encode_images(test.image))
    assert np.array_equal(loaded.encode_texts(test.text), method.encode_texts(test.text))
    state = method.state_dict()
    assert state["net.dv_img.masks"].shape == (8, TINY["dv_hidden"])  # the vote masks travel with the model
    other = create_method("mcmfh", bits=16, seed=0, **{**TINY, "width": 16})
    with pytest.raises(ArtefactError, match="other settings.*width"):
        other.load_state_dict(state)


def test_ablation_switches_change_the_module(data) -> None:
    train, dev, _ = data
    quick = {**TINY, "epochs_stage1": 1, "epochs_stage2": 2}
    no_moe = create_method("mcmfh-no-moe", bits=16, seed=0, **quick)
    no_moe.fit(train, dev)
    assert all(isinstance(layer.ffn, DenseFeedForward) for layer in no_moe.net.fusion.layers)
    full = create_method("mcmfh", bits=16, seed=0, **quick)
    full.fit(train, dev)
    assert all(isinstance(layer.ffn, MoEFeedForward) for layer in full.net.fusion.layers)

    no_dv = create_method("mcmfh-no-dv", bits=16, seed=0, **quick)
    snaps: list[torch.Tensor] = []
    no_dv.callback = lambda stage, epoch: snaps.append(no_dv.net.dv_img.fc1.weight.detach().clone())
    no_dv.fit(train, dev)
    assert not no_dv.net.dv_img.frozen and no_dv.net.dv_img.masks.shape[0] == 0  # T = 1: the plain eval pass
    assert all(p.requires_grad for p in no_dv.net.dv_img.parameters())
    assert not torch.equal(snaps[1], snaps[2])  # still trained in stage 2

    no_gate = create_method("mcmfh-no-gateloss", bits=16, seed=0, **quick)
    log = no_gate.fit(train, dev)
    assert no_gate.cfg.train.lambda_gate == 0.0 and full.cfg.train.lambda_gate > 0
    assert all(isinstance(layer.ffn, MoEFeedForward) for layer in no_gate.net.fusion.layers)
    assert log["stage2"]["history"][0]["loss_gate"] > 0  # still measured, just not weighted into the total
    with pytest.raises(MCMFHError, match="fixed by this ablation"):
        create_method("mcmfh-no-moe", bits=16, use_moe=True)


def test_interrupted_fit_resumes_to_the_same_result(tmp_path, data) -> None:
    train, dev, test = data
    short = {**TINY, "epochs_stage1": 2, "epochs_stage2": 2}
    opts = {**short, "checkpoint_dir": str(tmp_path / "ckpt")}
    clean = create_method("mcmfh", bits=16, seed=3, **short)
    clean.fit(train, dev)

    class Stop(Exception):
        pass

    for stop_at in ((1, 1), (2, 1)):  # interrupted inside stage 1, then inside stage 2
        method = create_method("mcmfh", bits=16, seed=3, **opts)

        def stop(stage: int, epoch: int, at: tuple[int, int] = stop_at) -> None:
            if (stage, epoch) == at:
                raise Stop

        method.callback = stop
        with pytest.raises(Stop):
            method.fit(train, dev)
        resumed = create_method("mcmfh", bits=16, seed=3, **opts)
        log = resumed.fit(train, dev)
        assert log[f"stage{stop_at[0]}"]["resumed_at_epoch"] == stop_at[1]
        assert np.array_equal(resumed.encode_images(test.image), clean.encode_images(test.image))
        assert np.array_equal(resumed.encode_texts(test.text), clean.encode_texts(test.text))
        (tmp_path / "ckpt" / "mcmfh-fit.safetensors").unlink()
    other_seed = create_method("mcmfh", bits=16, seed=4, **opts)
    method = create_method("mcmfh", bits=16, seed=3, **opts)
    method.callback = lambda stage, epoch: (_ for _ in ()).throw(Stop) if stage == 2 else None
    with pytest.raises(Stop):
        method.fit(train, dev)
    with pytest.raises(ArtefactError, match="another run"):
        other_seed.fit(train, dev)


def test_model_choice_uses_dev_and_model_beats_chance(data) -> None:
    train, dev, test = data
    opts = {**TINY, "epochs_stage1": 8, "epochs_stage2": 8}
    method = create_method("mcmfh", bits=32, seed=0, **opts)
    log = method.fit(train, dev)
    assert log["selection"] == "dev_map" and 1 <= log["stage2"]["chosen_epoch"] <= 8
    rel = relevance(test.labels, train.labels)
    i2t = map_all(hamming_distances(method.encode_images(test.image), method.encode_texts(train.text)), rel)
    t2i = map_all(hamming_distances(method.encode_texts(test.text), method.encode_images(train.image)), rel)
    chance = float(((test.labels.astype(int) @ train.labels.T.astype(int)) > 0).mean())
    print(f"generated data, test mAP i2t {i2t:.3f} t2i {t2i:.3f}, chance {chance:.3f}")
    assert i2t > chance + 0.15 and t2i > chance + 0.15, (i2t, t2i, chance)
    fixed = create_method("mcmfh", bits=16, seed=0, **{**TINY, "select_on": "last"})
    log = fixed.fit(train, dev)
    assert log["selection"] == "last" and log["stage2"]["chosen_epoch"] == TINY["epochs_stage2"]
    assert "dev_score" not in log["stage2"]["history"][-1]


def test_step_floor_and_code_health_in_the_training_log(data) -> None:
    train, dev, _ = data
    n_batches = -(-len(train) // TINY["batch_size"])
    floor = {**TINY, "epochs_stage1": 1, "epochs_stage2": 1, "min_steps_stage1": n_batches + 1,
             "min_steps_stage2": 2 * n_batches + 1}  # fmt: skip
    log = create_method("mcmfh", bits=16, seed=0, **floor).fit(train, dev)
    # A small training set gets the floor's number of optimiser steps, rounded up to whole epochs.
    assert len(log["stage1"]["history"]) == log["stage1"]["epochs"] == 2
    assert len(log["stage2"]["history"]) == log["stage2"]["epochs"] == 3
    row = log["stage2"]["history"][-1]
    assert 1 <= row["codes_image"] <= len(train) and 0 <= row["effective_bits_text"] <= 16
    assert isinstance(row["collapsed"], bool) and "codes_image" not in log["stage1"]["history"][-1]


def test_without_dev_split_the_fixed_recipe_is_used(data) -> None:
    train, _, test = data
    method = create_method("mcmfh", bits=16, seed=0, **{**TINY, "epochs_stage1": 1, "epochs_stage2": 2})
    log = method.fit(train, None)
    assert log["selection"] == "last" and log["stage2"]["chosen_epoch"] == 2
    assert method.encode_texts(test.text).shape == (len(test), 16)
    dev_loss = create_method("mcmfh", bits=16, seed=0, **{**TINY, "epochs_stage1": 2, "select_on": "dev_loss"})
    log = dev_loss.fit(train, data[1])
    assert log["selection"] == "dev_loss" and log["stage2"]["dev_score"] < 0  # minus the dev loss


def test_memory_bank_term_trains_and_resumes_bit_identically(data, tmp_path) -> None:
    """lambda_bank (UCCH's contrast against the training set's binary codes): logged per epoch, changes the model,
    and an interrupted fit resumes to the same codes (the bank is rebuilt from the model at each epoch start)."""
    train, dev, test = data
    opts = {**TINY, "epochs_stage1": 2, "epochs_stage2": 3, "lambda_bank": 1.0}
    method = create_method("mcmfh", bits=16, seed=5, **opts)
    log = method.fit(train, dev)
    assert all("loss_bank" in row for row in log["stage2"]["history"])
    assert not any("loss_bank" in row for row in log["stage1"]["history"])
    plain = create_method("mcmfh", bits=16, seed=5, **{**opts, "lambda_bank": 0.0})
    plain.fit(train, dev)
    assert not np.array_equal(method.encode_images(test.image), plain.encode_images(test.image))

    resumed = resumed_after_first_stage2_epoch(opts, 5, tmp_path / "ckpt", train, dev)
    np.testing.assert_array_equal(resumed.encode_images(test.image), method.encode_images(test.image))


def test_small_fits_train_stage_2_on_vote_views_and_resume_bit_identically(data, tmp_path) -> None:
    """Below ``view_train_pairs`` stage 2 sees each DV token as the mean of a few of its stored votes: other codes than
    a full-vote fit, the full vote at and above the threshold, and an interrupted fit resumes to the same codes."""
    train, dev, test = data
    opts = {**TINY, "epochs_stage1": 2, "epochs_stage2": 3}

    def codes(**extra: Any) -> np.ndarray:
        method = create_method("mcmfh", bits=16, seed=3, **{**opts, **extra})
        method.fit(train, dev)
        return method.encode_images(test.image)

    small = {"view_train_pairs": len(train) + 1, "small_vote_views": 1}
    views = codes(**small)
    full_vote = codes(**{**small, "small_vote_views": 0})
    assert not np.array_equal(views, full_vote)
    large = {"view_train_pairs": len(train), "view_spread_pairs": len(train)}
    np.testing.assert_array_equal(codes(**large, small_vote_views=1), full_vote)
    np.testing.assert_array_equal(codes(**large, vote_views=1), views)  # large fits' own field
    # between the two thresholds the labels decide: views unless a tag is on view_dominant_share of the items
    between = {"view_train_pairs": len(train), "view_spread_pairs": len(train) + 1, "small_vote_views": 1}
    np.testing.assert_array_equal(codes(**between), views)
    np.testing.assert_array_equal(codes(**between, view_dominant_share=top_tag_share(train.labels)), full_vote)
    # the capacity threshold is its own: a "small" fit for capacity is not thereby a fit on views
    np.testing.assert_array_equal(codes(**large, small_vote_views=1, small_train_pairs=len(train) + 1), full_vote)

    resumed = resumed_after_first_stage2_epoch({**opts, **small}, 3, tmp_path / "ckpt", train, dev)
    np.testing.assert_array_equal(resumed.encode_images(test.image), views)
    with pytest.raises(MCMFHError, match="vote_views"):
        create_method("mcmfh", bits=16, seed=3, small_vote_views=-1)
    with pytest.raises(MCMFHError, match="view_train_pairs"):
        create_method("mcmfh", bits=16, seed=3, view_train_pairs=-5)
    with pytest.raises(MCMFHError, match="view_dominant_share"):
        create_method("mcmfh", bits=16, seed=3, view_dominant_share=0.0)
    # A fit on views learns: the step floor gives it the steps its noisier batches need.
    learner = create_method("mcmfh", bits=32, seed=0, **{**opts, **small, "min_steps_stage2": 96})
    learner.fit(train, dev)
    rel = relevance(test.labels, train.labels)
    chance = float(((test.labels.astype(int) @ train.labels.T.astype(int)) > 0).mean())
    for query, database in ((learner.encode_images(test.image), learner.encode_texts(train.text)),
                            (learner.encode_texts(test.text), learner.encode_images(train.image))):  # fmt: skip
        assert map_all(hamming_distances(query, database), rel) > chance + 0.15


def test_capacity_follows_the_training_set_size_and_survives_save_load(tmp_path, data) -> None:
    train, _, test = data
    quick = dict(epochs_stage1=1, epochs_stage2=1, min_steps_stage1=0, min_steps_stage2=0, num_threads=1)
    quick["capacity"] = "auto"
    small = create_method("mcmfh", bits=16, seed=0, **quick)  # default widths capped: len(train) < 400
    small.fit(train)
    assert small.cfg.train.capacity == "small" and small.net.dv_img.fc2.out_features == 64 < small.requested.model.width
    full = create_method("mcmfh", bits=16, seed=0, **quick, small_train_pairs=len(train))
    full.fit(train)
    assert full.cfg.train.capacity == "full" and full.net.dv_img.fc2.out_features == full.requested.model.width == 128
    # options say "auto"; the saved model says what it resolved to, and loads under the same options
    small.save(tmp_path / "run")
    loaded = load_method(tmp_path / "run")
    assert loaded.cfg.train.capacity == "small"
    assert np.array_equal(loaded.encode_texts(test.text), small.encode_texts(test.text))
    forced = create_method("mcmfh", bits=16, seed=0, **{**quick, "capacity": "full"})
    with pytest.raises(ArtefactError, match="other settings.*capacity"):
        forced.load_state_dict(small.state_dict())


def test_a_model_saved_before_a_field_existed_loads_with_that_field_at_its_default(data, fitted) -> None:
    import json

    _, _, test = data
    method, _ = fitted
    state = dict(method.state_dict())
    # The flat form saved before the split of architecture and training settings, made before ``capacity`` too.
    old = {
        k: v for k, v in flat_fields(json.loads(bytes(state["meta.config_json"]).decode())).items() if k != "capacity"
    }
    state["meta.config_json"] = np.frombuffer(json.dumps(old).encode(), dtype=np.uint8)
    loaded = create_method("mcmfh", bits=16, seed=0, **TINY)
    loaded.load_state_dict(state)
    assert np.array_equal(loaded.encode_texts(test.text), method.encode_texts(test.text))
    other = create_method("mcmfh", bits=16, seed=0, **{**TINY, "capacity": "small"})
    with pytest.raises(ArtefactError, match="capacity"):
        other.load_state_dict(state)


def test_the_config_splits_architecture_from_training_and_reads_both_saved_forms() -> None:
    """Flat options go to the part that owns them; a config saved before the split (flat) and one saved after
    (``{"model": ..., "train": ...}``) read back to the same fields, and every name belongs to exactly one part.
    (Loading a fitted model whose saved config is in the old flat form: the test above.)"""
    cfg = MCMFHConfig.from_options(width="64", heads=2, lr="5e-4", capacity="auto", num_threads=1)
    assert cfg.model == ModelConfig(width=64, heads=2)
    assert cfg.train == TrainConfig(lr=5e-4, capacity="auto", num_threads=1)
    nested = cfg.saved()
    assert set(nested) == {"model", "train"} and "lr" in nested["train"] and "width" in nested["model"]
    assert "num_threads" not in nested["train"]  # run control: not part of what a fitted model is
    flat = {k: v for part in nested.values() for k, v in part.items()}  # the form every run before the split saved
    assert flat_fields(flat) == flat_fields(nested) == cfg.model_fields()
    assert MCMFHConfig.from_options(**flat_fields(flat)) == dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, num_threads=0)
    )
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert not model_names & {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"width", "experts", "layers", "heads", "dv_votes", "study_head"} <= model_names
    with pytest.raises(MCMFHError, match="unknown option.*nope"):
        MCMFHConfig.from_options(**flat_fields({**flat, "nope": 1}))


def test_views_between_the_thresholds_only_when_no_tag_dominates() -> None:
    """Below ``view_train_pairs`` a fit always trains on views; up to ``view_spread_pairs`` only when no tag is on
    ``view_dominant_share`` of the labelled training items (there the views cost paired recall); above, never."""
    t = TrainConfig()
    assert (t.view_train_pairs, t.view_spread_pairs, t.view_dominant_share) == (400, 1000, 0.6)
    assert t.views_for(60, 0.77) == t.small_vote_views == 1  # the stress panels: small, one tag on 77%
    assert t.views_for(600, 0.24) == 1  # MedPix's 600-pair subset
    assert t.views_for(746, 0.70) == t.vote_views == 0  # one tag on 70% (the suite's medpix-dominant70)
    assert t.views_for(600, 0.6) == 0 and t.views_for(1000, 0.0) == 0 and t.views_for(1653, 0.32) == 0
    labels = np.zeros((10, 3), np.uint8)
    labels[:6, 0] = 1
    labels[5:8, 1] = 1  # items 8 and 9 carry no tag: the share is over the 8 labelled items
    assert top_tag_share(labels) == 6 / 8
    assert top_tag_share(np.zeros((4, 3))) == 0.0 and top_tag_share(np.zeros((0, 3))) == 0.0


def _stage2_health(monkeypatch, first_pass_healthy: bool) -> None:
    """Stage-2 epochs of a pass on relaxed outputs read as healthy, or as collapsed with a dev score above any healthy
    one (so the rule has to prefer health over score across the two passes); the fit's own figures are kept. A pass
    on codes reads healthy. (Fits of the tiny fixture are collapsed by themselves: 5 labels, a few epochs.)"""
    from mcmfh.model.trainer import Trainer
    from mcmfh.training.selection import DevEvaluation

    real = Trainer._dev_evaluation

    def evaluation(self: Trainer, stage: int) -> DevEvaluation:
        ev = real(self, stage)
        if stage == 2 and not (self.on_codes or first_pass_healthy):
            return DevEvaluation(ev.score + 1.0, False, {**ev.figures, "collapsed": True})
        return DevEvaluation(ev.score, True, {**ev.figures, "collapsed": False}) if stage == 2 else ev

    monkeypatch.setattr(Trainer, "_dev_evaluation", evaluation)


def test_a_mostly_collapsed_stage_2_is_rescued_by_a_pass_on_codes(data, monkeypatch, tmp_path) -> None:
    train, dev, test = data
    opts = {**TINY, "epochs_stage1": 2, "epochs_stage2": 3, "rescue_collapsed_share": 0.5}
    with monkeypatch.context() as patch:
        _stage2_health(patch, first_pass_healthy=True)
        healthy = create_method("mcmfh", bits=16, seed=2, **opts)
        healthy_log = healthy.fit(train, dev)
        assert "rescue" not in healthy_log["stage2"] and rescue_line(healthy_log) is None
        # a fit that never needs it is bit-identical to one with the rescue switched off
        off = create_method("mcmfh", bits=16, seed=2, **{**opts, "rescue_collapsed_share": 0.0})
        off.fit(train, dev)
        np.testing.assert_array_equal(off.encode_images(test.image), healthy.encode_images(test.image))

    _stage2_health(monkeypatch, first_pass_healthy=False)
    method = create_method("mcmfh", bits=16, seed=2, **opts)
    fit_log = method.fit(train, dev)
    log, rescue = fit_log["stage2"], fit_log["stage2"]["rescue"]
    line = rescue_line(fit_log)
    assert line and "collapsed on 3 of its 3 evaluated epochs" in line and "the second pass" in line
    assert line.endswith("healthy")
    assert rescue["collapsed_share"] == 1.0 and rescue["chosen"] is True
    assert all(row["collapsed"] for row in log["history"]) and not any(r["collapsed"] for r in rescue["history"])
    # the healthy second pass wins although every first-pass epoch scored higher; its figures are the fit's
    assert not log["collapsed"] and log["chosen_epoch"] == rescue["chosen_epoch"]
    assert log["dev_score"] == rescue["dev_score"] < max(row["dev_score"] for row in log["history"])
    assert "loss_hash" in rescue["history"][0]
    assert not np.array_equal(method.encode_images(test.image), healthy.encode_images(test.image))
    # switched off, the collapsed first pass is all there is: kept, and said to be collapsed
    kept = create_method("mcmfh", bits=16, seed=2, **{**opts, "rescue_collapsed_share": 0.0}).fit(train, dev)
    assert "rescue" not in kept["stage2"] and kept["stage2"]["collapsed"]

    # killed inside the rescue pass (its first epoch), a new fit resumes there and ends with the same codes
    class Stop(Exception):
        pass

    calls: list[int] = []

    def stop_in_rescue(stage: int, epoch: int) -> None:
        calls.append(stage)
        if stage == 2 and calls.count(2) == log["epochs"] + 1:
            raise Stop

    ckpt = {**opts, "checkpoint_dir": str(tmp_path / "ckpt")}
    interrupted = create_method("mcmfh", bits=16, seed=2, **ckpt)
    interrupted.callback = stop_in_rescue
    with pytest.raises(Stop):
        interrupted.fit(train, dev)
    resumed = create_method("mcmfh", bits=16, seed=2, **ckpt)
    resumed_log = resumed.fit(train, dev)["stage2"]
    assert resumed_log["rescue"]["resumed_at_epoch"] == 1 and resumed_log["rescue"]["chosen"]
    np.testing.assert_array_equal(resumed.encode_images(test.image), method.encode_images(test.image))
    np.testing.assert_array_equal(resumed.encode_texts(test.text), method.encode_texts(test.text))
    # killed in the first pass, the rescue that follows starts from the saved start: the same codes again
    (tmp_path / "ckpt" / "mcmfh-fit.safetensors").unlink()
    again = resumed_after_first_stage2_epoch(opts, 2, tmp_path / "ckpt", train, dev)
    np.testing.assert_array_equal(again.encode_images(test.image), method.encode_images(test.image))
    with pytest.raises(MCMFHError, match="rescue_collapsed_share"):
        create_method("mcmfh", bits=16, seed=2, rescue_collapsed_share=1.5)


def _scripted_stage1(patch: Any, dev_maps: list[float], pairing_losses: list[float], done: int = 0) -> None:
    """Stage 1's dev mAP and dev pairing loss follow the scripts (one entry per epoch; ``done`` epochs already run)."""
    from mcmfh.model.trainer import Trainer
    from mcmfh.training.selection import DevEvaluation

    real = Trainer._dev_evaluation
    calls = {"map": done, "loss": done}

    def evaluation(self, stage: int) -> DevEvaluation:
        if stage != 1:
            return real(self, stage)
        calls["map"] += 1
        return DevEvaluation(dev_maps[calls["map"] - 1])

    def pairing_loss(self) -> float:
        calls["loss"] += 1
        return pairing_losses[calls["loss"] - 1]

    patch.setattr(Trainer, "_dev_evaluation", evaluation)
    patch.setattr(Trainer, "_dev_pairing_loss", pairing_loss)


def test_stage_1_is_chosen_from_its_dev_pairing_minimum_on(data, monkeypatch, tmp_path) -> None:
    """With a few coarse labels stage 1's dev mAP peaks at its first epoch, before the pairing is trained: the epoch
    is chosen on dev mAP among the epochs from the last minimum of the dev InfoNCE on."""
    train, dev, _ = data
    opts = {**TINY, "epochs_stage1": 4, "epochs_stage2": 1}
    maps, losses = [0.9, 0.5, 0.7, 0.6], [3.0, 2.0, 2.5, 2.2]
    with monkeypatch.context() as patch:
        _scripted_stage1(patch, maps, losses)
        log = create_method("mcmfh", bits=16, seed=0, **opts).fit(train, dev)["stage1"]
    assert log["epochs"] == 4 and log["chosen_epoch"] == 3  # epoch 1 scored highest but came before epoch 2's minimum
    assert [row["dev_pairing_loss"] for row in log["history"]] == losses
    with monkeypatch.context() as patch:  # a later minimum moves the floor again, whatever its dev mAP
        _scripted_stage1(patch, maps, [3.0, 2.0, 2.5, 1.9])
        assert create_method("mcmfh", bits=16, seed=0, **opts).fit(train, dev)["stage1"]["chosen_epoch"] == 4
    with monkeypatch.context() as patch:  # switched off: dev mAP alone, as before
        _scripted_stage1(patch, maps, losses)
        off = create_method("mcmfh", bits=16, seed=0, **opts, stage1_after_pairing_minimum=False).fit(train, dev)
    assert off["stage1"]["chosen_epoch"] == 1 and "dev_pairing_loss" not in off["stage1"]["history"][0]

    # killed after stage-1 epoch 2 (the minimum), a resumed fit still knows where the floor is
    class Stop(Exception):
        pass

    def stop(stage: int, epoch: int) -> None:
        if stage == 1 and epoch == 2:
            raise Stop

    ckpt = {**opts, "checkpoint_dir": str(tmp_path / "ckpt")}
    with monkeypatch.context() as patch:
        _scripted_stage1(patch, maps, losses)
        interrupted = create_method("mcmfh", bits=16, seed=0, **ckpt)
        interrupted.callback = stop
        with pytest.raises(Stop):
            interrupted.fit(train, dev)
    with monkeypatch.context() as patch:
        _scripted_stage1(patch, maps, losses, done=2)
        resumed = create_method("mcmfh", bits=16, seed=0, **ckpt).fit(train, dev)["stage1"]
    assert resumed["resumed_at_epoch"] == 2 and resumed["chosen_epoch"] == 3
