"""``mcmfh-supervised``: MCMFH's architecture (DV-MLP, MoE fusion with its gating loss, hash heads, study head) trained
with the training labels as well as the pairs — the supervised mode of ``mcmfh train`` (docs/model.md, "Supervised
mode"). Its defaults (``SUPERVISED_DEFAULTS``) are the terms chosen by measurement on MedPix 2.0 dev; each may still
be set as an option, and every other option is MCMFH's.

Labels are those of the feature cache's label set (``mcmfh encode --label-set``). An item without labels (an all-zero
row) is kept: it trains the pairing terms (InfoNCE), and the label terms leave it out (``mcmfh.losses``). A training
split with no label at all is refused: there is nothing to supervise with (use ``mcmfh``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.method import register_method
from mcmfh.model.mcmfh import MCMFH

# docs/model.md, "Supervised mode": label-weighted InfoNCE on the DV-MLP tokens (stage 1) and on the fused tokens
# (stage 2), DCMHT's pairwise term on the hash outputs, and a longer stage 2 (the label terms were still improving
# dev mAP at MCMFH's 12 epochs; the epoch is chosen on dev, health first).
SUPERVISED_DEFAULTS: dict[str, Any] = {
    "lambda_label_stage1": 1.0,
    "lambda_label_contrast": 1.0,
    "lambda_label_pair": 5.0,
    "epochs_stage2": 40,
}


@register_method("mcmfh-supervised")
class MCMFHSupervised(MCMFH):
    def __init__(self, bits: int, seed: int = 0, **options: Any) -> None:
        super().__init__(bits, seed, **{**SUPERVISED_DEFAULTS, **options})

    def fit(self, train: FeatureSet, dev: FeatureSet | None = None) -> dict[str, Any]:
        labelled = int(np.count_nonzero(train.labels.any(axis=1)))
        if labelled == 0:
            raise MCMFHError(
                f"{self.name}: no training item has a label (label set {train.manifest.get('label_set')!r}); "
                "train the unsupervised 'mcmfh' instead, or encode with a label set that has labels"
            )
        log = super().fit(train, dev)
        log["labelled_train_items"] = labelled
        return log
