"""Continuous ceilings of MCMFH: cosine ranking on its real-valued outputs, no sign().

Both are fitted exactly like ``mcmfh`` (same options, seed and code length, so the same network), and differ only in
what ``encode_images`` / ``encode_texts`` return:
- ``continuous-mcmfh``: the fused single-modality tokens (float32, ``width`` dims) — the fusion space before the
  hashing MLP;
- ``continuous-mcmfh-relaxed``: the hashing MLP's relaxed codes tanh(h) (float32, ``bits`` dims) — exactly what
  sign() turns into the codes, so the gap to ``mcmfh`` at the same bits is what binarisation costs.
With a study head, ``encode_studies`` returns the matching study output: the study token (trained against the
queries' fused tokens) or the study hash head's relaxed output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mcmfh.method import register_method
from mcmfh.model.mcmfh import MCMFH
from mcmfh.model.study import TokenSets


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
        return self.cfg.model.width

    def _study_output_fn(self) -> Callable[[TokenSets], torch.Tensor]:
        assert self.net is not None and self.net.study is not None
        study = self.net.study
        return lambda sets: study.tokens(sets)[0]  # study tokens, trained against the queries' fused tokens


@register_method("continuous-mcmfh-relaxed")
class RelaxedMCMFH(ContinuousMCMFH):
    def _output_fn(self, image: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._relaxed_fn(image)

    def output_dim(self) -> int:
        return self.bits

    def _study_output_fn(self) -> Callable[[TokenSets], torch.Tensor]:
        assert self.net is not None and self.net.study is not None
        study = self.net.study
        return lambda sets: study(sets)[1]  # the study hash head's tanh output
