"""The one tiny MCMFH training config the tests share (import it; extend it per test with ``{**TINY_MCMFH, ...}``).

Small widths, one torch thread (tests run beside other work on 2 cores), and the step floors off: the default
floors (TrainConfig.min_steps_stage*) lengthen a short fit to hundreds of steps, so "2 epochs" would train far
longer than it says. Stage 2 on the full vote: the vote views of small training sets need the steps those floors
give (tests/test_model_mcmfh.py tests them with their floor). The collapse rescue off: fits this short are collapsed
by design (5 labels, a few epochs), and the rescue would run a second stage 2 in every test; its own test switches it
on. A test that needs a model that learns sets its own
floors or epochs, in the open."""

from __future__ import annotations

from typing import Any

TINY_MCMFH: dict[str, Any] = {
    "width": 32, "dv_hidden": 32, "ffn_hidden": 32, "hash_hidden": 32,
    "epochs_stage1": 2, "epochs_stage2": 2, "epochs_stage3": 2, "batch_size": 48, "study_batch": 8,
    "min_steps_stage1": 0, "min_steps_stage2": 0, "min_steps_stage3": 0, "num_threads": 1, "small_vote_views": 0,
    "rescue_collapsed_share": 0.0,
}  # fmt: skip
