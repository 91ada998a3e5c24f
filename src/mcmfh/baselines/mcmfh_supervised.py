"""``mcmfh-supervised``: MCMFH with its optional supervised term on (``lambda_label``, default 1.0 here, see
``mcmfh.losses.label_similarity_loss``), the in-house counterpart of the supervised DCMHT / DSPH heads.
Everything else is MCMFH's default recipe; ``lambda_label`` may still be set as an option."""

from __future__ import annotations

from typing import Any

from mcmfh.method import register_method
from mcmfh.model.mcmfh import MCMFH

DEFAULT_LAMBDA_LABEL = 1.0


@register_method("mcmfh-supervised")
class MCMFHSupervised(MCMFH):
    def __init__(self, bits: int, seed: int = 0, **options: Any) -> None:
        super().__init__(bits, seed, **{"lambda_label": DEFAULT_LAMBDA_LABEL, **options})
