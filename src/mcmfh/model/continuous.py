"""``continuous-mcmfh``: the continuous ceiling of MCMFH — cosine ranking in its fused space, before hashing.

Fitted exactly like ``mcmfh`` (same options, same seed, same code length for the hash losses that shape the fusion
during training), but ``encode_images`` / ``encode_texts`` return the fused single-modality tokens (float32,
``width`` dims) instead of codes. The gap between this row and ``mcmfh`` at the same bits is what sign() costs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mcmfh.method import register_method
from mcmfh.model.mcmfh import MCMFH


@register_method("continuous-mcmfh")
class ContinuousMCMFH(MCMFH):
    continuous = True

    def _output_fn(self, image: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        assert self.net is not None
        return self.net.image_tokens if image else self.net.text_tokens

    def _output_dtype(self) -> type:
        return np.float32

    def output_dim(self) -> int:
        """Width of the fused tokens (the model's ``width``), whatever the code length it was trained for."""
        return self.cfg.width
