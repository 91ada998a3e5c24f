"""One interface for every frozen encoder: embeddings are float32, L2-normalised, computed without gradients."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

ImageInput = str | Path | Image.Image


class Encoder(ABC):
    """A frozen image + text encoder. ``version`` changes whenever its weights or preprocessing change."""

    name: str
    version: str
    image_dim: int
    text_dim: int
    # What is done to an input before the network (resize, crop, normalisation, tokenizer); recorded in manifests.
    preprocessing: dict[str, object] = {}

    @abstractmethod
    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """(N, image_dim) float32, rows L2-normalised. Paths are read with ``mcmfh.data.images.load_image``."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """(N, text_dim) float32, rows L2-normalised."""

    def describe(self) -> dict[str, object]:
        """What a manifest records about this encoder."""
        return {
            "encoder": self.name,
            "encoder_version": self.version,
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "preprocessing": dict(self.preprocessing),
        }


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
