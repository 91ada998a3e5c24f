"""Chance: label-independent random codes. Its reported mAP is the exact expectation of a random ranking.

The codes exist so that the method runs through the same pipeline as the others (and to sanity-check the exact
number: their measured mAP lands near it). Each item's code is drawn from a generator seeded by the method seed
and the bytes of the item's own feature row, so it is deterministic and does not depend on batch-mates.
``reports_exact_chance`` tells the evaluator to report ``mcmfh.evaluation.metrics.chance_map`` as this method's mAP.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.method import HashMethod, register_method


@register_method("chance")
class Chance(HashMethod):
    reports_exact_chance: ClassVar[bool] = True

    def __init__(self, bits: int, seed: int = 0, **options: Any) -> None:
        if options:
            raise MCMFHError(f"method 'chance': takes no options, got {', '.join(sorted(options))}")
        super().__init__(bits, seed)

    def fit(self, train: FeatureSet, dev: FeatureSet | None = None) -> dict[str, Any]:
        return {"note": "nothing to fit; mAP reported as the exact expectation of a random ranking"}

    def _codes(self, x: np.ndarray, modality: bytes) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((len(x), self.bits), dtype=bool)
        for i, row in enumerate(x):
            digest = hashlib.sha256(modality + self.seed.to_bytes(8, "little") + row.tobytes()).digest()
            out[i] = np.random.default_rng(np.frombuffer(digest, dtype=np.uint64)).random(self.bits) < 0.5
        return out

    def encode_images(self, image: np.ndarray) -> np.ndarray:
        return self._codes(image, b"image")

    def encode_texts(self, text: np.ndarray) -> np.ndarray:
        return self._codes(text, b"text")

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"bits": np.array([self.bits], dtype=np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if int(state["bits"][0]) != self.bits:
            raise MCMFHError(f"method 'chance': state is for {int(state['bits'][0])} bits, not {self.bits}")
