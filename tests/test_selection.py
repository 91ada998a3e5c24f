"""Model choice (mcmfh.training.selection): healthy codes before a higher score, so collapse cannot win model choice."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_features
from mcmfh.factory import create_method
from mcmfh.model.trainer import Trainer
from mcmfh.training.selection import DevEvaluation, evaluate_dev


def _collapsed_and_spread(n_db: int = 400, n_q: int = 60, bits: int = 16):
    """Dev/train data with 2 coarse labels: collapsed codes (one code per label: perfect label mAP, one bucket per
    label) against spread codes that follow the label only in one bit."""
    rng = np.random.default_rng(0)
    lab_db, lab_q = rng.integers(0, 2, n_db), rng.integers(0, 2, n_q)
    onehot = lambda y: np.eye(2, dtype=np.uint8)[y]  # noqa: E731
    per_label = rng.random((2, bits)) < 0.5
    collapsed = (per_label[lab_q], per_label[lab_q]), (per_label[lab_db], per_label[lab_db])
    spread_db, spread_q = rng.random((n_db, bits)) < 0.5, rng.random((n_q, bits)) < 0.5
    spread_db[:, 0], spread_q[:, 0] = lab_db == 1, lab_q == 1
    spread = (spread_q, spread_q.copy()), (spread_db, spread_db.copy())
    texts = rng.normal(size=(n_q, 8)).astype(np.float32), rng.normal(size=(n_db, 8)).astype(np.float32)
    return collapsed, spread, (onehot(lab_q), onehot(lab_db)), texts


@pytest.mark.parametrize("select_on", ["dev_map", "dev_map_recall"])
def test_a_collapsed_epoch_with_the_higher_label_map_loses_to_a_healthy_one(select_on: str) -> None:
    collapsed, spread, labels, texts = _collapsed_and_spread()
    bad = evaluate_dev(*collapsed, labels, texts, select_on=select_on)
    good = evaluate_dev(*spread, labels, texts, select_on=select_on)
    assert bad.figures["dev_map"] > good.figures["dev_map"] + 0.2  # collapse wins on label mAP ...
    assert not bad.healthy and good.healthy and bad.figures["collapsed"]
    assert good.beats(bad) and not bad.beats(good)  # ... and still loses model choice
    assert not DevEvaluation(0.9, True).beats(DevEvaluation(0.9, True))  # ties keep the earlier epoch
    assert DevEvaluation(0.1, False).beats(DevEvaluation(0.05, False))  # all collapsed: the score decides


def test_recall_score_counts_the_instance_figure() -> None:
    collapsed, spread, labels, texts = _collapsed_and_spread()
    ev = evaluate_dev(*spread, labels, texts, select_on="dev_map_recall")
    assert ev.score == pytest.approx(0.5 * (ev.figures["dev_map"] + ev.figures["dev_paired_r10"]))
    continuous = evaluate_dev(*spread, labels, texts, binary=False)
    assert continuous.healthy and "collapsed" not in continuous.figures


def test_the_trainer_keeps_the_best_healthy_epoch(monkeypatch) -> None:
    fs = make_features(n=160, di=12, dt=10, n_labels=4, seed=1)
    # epoch 2 has the best score but collapsed codes; epoch 3 is the best healthy one
    script = {1: (0.30, True), 2: (0.90, False), 3: (0.50, True), 4: (0.40, True)}
    seen = {"n": 0}

    def scripted(self, stage):
        seen["n"] += 1
        if stage == 1:
            return DevEvaluation(0.0)
        score, healthy = script[seen["n"] - self.stage1_evals]
        return DevEvaluation(score, healthy, {"collapsed": not healthy})

    monkeypatch.setattr(Trainer, "_dev_evaluation", scripted)
    monkeypatch.setattr(Trainer, "stage1_evals", 2, raising=False)
    opts = dict(width=16, dv_hidden=16, ffn_hidden=16, hash_hidden=16, epochs_stage1=2, epochs_stage2=4,
                min_steps_stage1=0, min_steps_stage2=0, num_threads=1, study_head=False)  # fmt: skip
    log = create_method("mcmfh", bits=16, seed=0, **opts).fit(fs.splits("train"), fs.splits("dev"))
    assert log["stage2"]["chosen_epoch"] == 3 and not log["stage2"]["collapsed"]
    assert [r["collapsed"] for r in log["stage2"]["history"]] == [False, True, False, False]
