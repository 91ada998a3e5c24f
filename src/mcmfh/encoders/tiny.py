"""``tiny``: a small random, seeded encoder for fast unit tests (no downloads, milliseconds per batch).

Image side: a 2-layer CNN with weights drawn from ``seed``. Text side: a bag of hashed word tokens, each bucket a
seeded random vector. Same seed and config -> same embeddings on every machine.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from mcmfh.encoders.base import Encoder, ImageInput, l2_normalize
from mcmfh.encoders.common import batched, progress_bar, read_image, resolve_device
from mcmfh.encoders.registry import register_encoder
from mcmfh.manifest import fingerprint

_TOKEN = re.compile(r"[a-z0-9]+")
# Every text gets this token too, so an empty text still has a (constant) unit-norm embedding.
_ALWAYS_TOKEN = "[cls]"


@dataclass(frozen=True)
class TinyConfig:
    image_dim: int = 32
    text_dim: int = 24
    seed: int = 0
    image_size: int = 32  # images are resized to image_size x image_size
    channels: int = 8  # first conv layer width; the second has twice as many
    buckets: int = 4096  # hashed vocabulary size of the text side


class TinyEncoder(Encoder):
    name = "tiny"

    def __init__(self, config: TinyConfig | None = None, device: str = "cpu", **options: object) -> None:
        self.config = config or TinyConfig(**options)  # type: ignore[arg-type]
        c = self.config
        self.image_dim, self.text_dim = c.image_dim, c.text_dim
        self.version = "tiny-1-" + fingerprint(asdict(c))
        self.preprocessing = {
            "image": f"RGB, resize {c.image_size}x{c.image_size} bilinear, x/255-0.5",
            "text": "hashed lowercase words",
        }
        self.device = device
        self._net = None
        rng = np.random.default_rng(c.seed)
        self._table = rng.standard_normal((c.buckets, c.text_dim)).astype(np.float32)

    def _network(self):
        if self._net is None:
            import torch
            from torch import nn

            c = self.config
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                net = nn.Sequential(
                    nn.Conv2d(3, c.channels, 3, stride=2, padding=1),
                    nn.ReLU(),
                    nn.Conv2d(c.channels, 2 * c.channels, 3, stride=2, padding=1),
                    nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                    nn.Linear(2 * c.channels, c.image_dim),
                )
            self._net = net.eval().to(resolve_device(self.device))
        return self._net

    def _pixels(self, images: Sequence[ImageInput]) -> np.ndarray:
        from PIL import Image

        s = self.config.image_size
        arrs = [np.asarray(read_image(im).resize((s, s), Image.BILINEAR), dtype=np.float32) for im in images]
        return (np.stack(arrs) / 255.0 - 0.5).transpose(0, 3, 1, 2)

    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        import torch

        net = self._network()
        out = [np.zeros((0, self.image_dim), np.float32)]
        with torch.inference_mode(), progress_bar(len(images), "tiny images", progress) as bar:
            for chunk in batched(images, batch_size):
                x = torch.from_numpy(np.ascontiguousarray(self._pixels(chunk))).to(next(net.parameters()).device)
                out.append(net(x).float().cpu().numpy())
                bar.update(len(chunk))
        return l2_normalize(np.concatenate(out))

    def _bucket(self, token: str) -> int:
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self.config.buckets

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.text_dim), np.float32)
        for i, text in enumerate(texts):
            tokens = [_ALWAYS_TOKEN, *_TOKEN.findall(text.lower())]
            out[i] = self._table[[self._bucket(t) for t in tokens]].sum(0)
        return l2_normalize(out)


@register_encoder("tiny")
def _make_tiny(**options: object) -> TinyEncoder:
    return TinyEncoder(**options)
