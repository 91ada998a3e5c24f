"""One interface for every hashing method (MCMFH, its ablations, and the baselines).

A method is fitted on training features, then codes each modality *alone*: ``encode_images`` never sees texts and
``encode_texts`` never sees images, which is what makes it a cross-modal retrieval model (see ucmfh.md: the leak).
Hashing methods return boolean codes (N, bits); ``continuous`` methods return float embeddings ranked by cosine.
A hashing method may also expose its *relaxed* output (``relaxed_images`` / ``relaxed_texts``): the real values
whose signs are the codes, which two-stage search (``mcmfh.index.rerank``) stores as a small payload to re-score
Hamming candidates.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from safetensors.numpy import load, save_file

from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.io import atomic_write_bytes, atomic_write_json

WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "method.json"


class HashMethod(ABC):
    name: ClassVar[str]
    continuous: ClassVar[bool] = False

    def __init__(self, bits: int, seed: int = 0, **options: Any) -> None:
        self.bits = int(bits)
        self.seed = int(seed)
        self.options = options

    @abstractmethod
    def fit(self, train: FeatureSet, dev: FeatureSet | None = None) -> dict[str, Any]:
        """Train on ``train`` (model choice on ``dev`` only); returns a log (losses, epochs, chosen epoch...)."""

    @abstractmethod
    def encode_images(self, image: np.ndarray) -> np.ndarray:
        """(N, bits) bool codes (or (N, D) float for continuous methods) from image embeddings alone."""

    @abstractmethod
    def encode_texts(self, text: np.ndarray) -> np.ndarray:
        """(N, bits) bool codes (or (N, D) float for continuous methods) from text embeddings alone."""

    @property
    def has_relaxed(self) -> bool:
        """Whether ``relaxed_images`` / ``relaxed_texts`` exist (overridden by methods that have them)."""
        return False

    def relaxed_images(self, image: np.ndarray) -> np.ndarray:
        """(N, D) float32 real-valued outputs whose signs are the image codes (D = bits for most methods)."""
        raise MCMFHError(f"method {self.name!r} has no relaxed output (two-stage payloads need one)")

    def relaxed_texts(self, text: np.ndarray) -> np.ndarray:
        """(N, D) float32 real-valued outputs whose signs are the text codes."""
        raise MCMFHError(f"method {self.name!r} has no relaxed output (two-stage payloads need one)")

    @abstractmethod
    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything fitted, as named arrays (saved with safetensors; nothing is pickled)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "bits": self.bits, "seed": self.seed, "options": self.options}

    def recipe(self) -> dict[str, Any]:
        """Every choice that shapes a fit, defaults included: result caches key on it, so changing a method's
        default refits the rows it affects. Methods with an options dataclass return all of its fields."""
        return dict(self.options)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{WEIGHTS_NAME}.tmp"
        save_file({k: np.ascontiguousarray(v) for k, v in self.state_dict().items()}, str(tmp))
        atomic_write_bytes(folder / WEIGHTS_NAME, tmp.read_bytes())
        tmp.unlink()
        atomic_write_json(folder / CONFIG_NAME, self.config())

    @classmethod
    def load(cls, folder: str | Path, weights_sha256: str | None = None) -> HashMethod:
        """The fitted method saved in ``folder``. ``weights_sha256`` (a run manifest records it) is checked before
        the weights are parsed, so a truncated, corrupt or swapped file is named as such, not parsed into nonsense."""
        folder = Path(folder)
        weights = folder / WEIGHTS_NAME
        try:
            cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
            data = weights.read_bytes()
        except (OSError, ValueError) as e:
            raise ArtefactError(f"{folder}: cannot load method ({e})") from e
        if weights_sha256 is not None:
            digest = hashlib.sha256(data).hexdigest()
            if digest != weights_sha256:
                raise ArtefactError(
                    f"{weights}: checksum mismatch (the run manifest records sha256 {weights_sha256[:12]}…, the file "
                    f"has {digest[:12]}…): the weights are corrupt or were replaced; re-train or restore the run"
                )
        try:
            state = load(data)
        except Exception as e:  # safetensors raises its own SafetensorError for any malformed header or body
            raise ArtefactError(f"{weights}: corrupt or truncated weights (not a valid safetensors file: {e})") from e
        method = create_method(cfg["method"], bits=cfg["bits"], seed=cfg["seed"], **cfg.get("options", {}))
        method.load_state_dict(state)
        return method


def weights_sha256(folder: str | Path) -> str:
    """SHA-256 of a saved method's weights file, as run manifests record it."""
    return hashlib.sha256((Path(folder) / WEIGHTS_NAME).read_bytes()).hexdigest()


_REGISTRY: dict[str, type[HashMethod]] = {}


def register_method(name: str) -> Callable[[type[HashMethod]], type[HashMethod]]:
    def deco(cls: type[HashMethod]) -> type[HashMethod]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _import_builtin_methods() -> None:
    # Importing these modules registers their methods; kept lazy so `import mcmfh.method` stays light.
    import importlib

    for mod in ("mcmfh.baselines", "mcmfh.model"):
        importlib.import_module(mod)


def available_methods() -> list[str]:
    _import_builtin_methods()
    return sorted(_REGISTRY)


def create_method(name: str, bits: int, seed: int = 0, **options: Any) -> HashMethod:
    _import_builtin_methods()
    if name not in _REGISTRY:
        raise MCMFHError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](bits=bits, seed=seed, **options)
