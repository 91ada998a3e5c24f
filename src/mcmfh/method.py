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
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from safetensors.numpy import save_file

from mcmfh.errors import MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.io import atomic_write_bytes, atomic_write_json
from mcmfh.progress import SILENT, Progress
from mcmfh.studies import Studies

WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "method.json"


class HashMethod(ABC):
    name: ClassVar[str]
    continuous: ClassVar[bool] = False
    # The method this one ablates (one component switched off), for the report's ablation table; None: not one.
    ablation_of: ClassVar[str | None] = None
    # The chance baseline: the evaluator reports the exact expected mAP of a random ranking
    # (mcmfh.evaluation.metrics.chance_map)
    # and reports compare every other row with it.
    reports_exact_chance: ClassVar[bool] = False
    # Where ``fit`` reports its epochs (set by the caller, e.g. ``mcmfh.training.runs.fit_method``); methods without
    # epochs
    # ignore it.
    progress: Progress = SILENT

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

    @property
    def has_study_codes(self) -> bool:
        """Whether ``encode_studies`` exists: one code per study from all of its items (a fitted study head)."""
        return False

    def study_inputs(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        """(N, ...) float32 per item: what a study head codes a study from (kept by archives, so a study can be
        re-coded when it gains or loses a member)."""
        raise MCMFHError(f"method {self.name!r} has no study codes (no study head)")

    def encode_study_inputs(
        self, inputs: np.ndarray, has_image: np.ndarray, study_of_item: Sequence[str] | np.ndarray
    ) -> tuple[Studies, np.ndarray]:
        """The studies (items grouped by ``study_of_item``) and one code per study from its members' inputs."""
        raise MCMFHError(f"method {self.name!r} has no study codes (no study head)")

    def relaxed_study_inputs(
        self, inputs: np.ndarray, has_image: np.ndarray, study_of_item: Sequence[str] | np.ndarray
    ) -> tuple[Studies, np.ndarray]:
        """As ``encode_study_inputs``, the (S, D) real-valued study outputs whose signs are the study codes: what
        two-stage study search re-scores with (``has_study_codes`` and ``has_relaxed`` methods)."""
        raise MCMFHError(f"method {self.name!r} has no relaxed study output")

    def encode_studies(self, features: FeatureSet) -> tuple[Studies, np.ndarray]:
        """The studies of ``features`` (``FeatureSet.study_ids``) and one code (S, bits) bool per study, or (S, D)
        float for continuous methods. Methods without a study head are searched by their members' codes instead
        (``mcmfh.evaluation.study_eval``)."""
        inputs = self.study_inputs(features.image, features.text)
        return self.encode_study_inputs(inputs, features.has_image, features.study_ids())

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


def weights_sha256(folder: str | Path) -> str:
    """SHA-256 of a saved method's weights file, as run manifests record it."""
    return hashlib.sha256((Path(folder) / WEIGHTS_NAME).read_bytes()).hexdigest()


# Filled by ``register_method`` as implementations are imported; ``mcmfh.factory`` builds methods from it.
REGISTRY: dict[str, type[HashMethod]] = {}


def register_method(name: str) -> Callable[[type[HashMethod]], type[HashMethod]]:
    def deco(cls: type[HashMethod]) -> type[HashMethod]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco
