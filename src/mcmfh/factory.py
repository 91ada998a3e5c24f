"""Build hashing methods by name: ``create_method``, ``available_methods``, ``load_method`` (a saved one).

Implementations register with ``mcmfh.method.register_method``; this module imports the built-in ones (so they
import ``mcmfh.method``, never this module: no cycle), as open_clip's factory builds models from names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.numpy import load

from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.method import CONFIG_NAME, REGISTRY, WEIGHTS_NAME, HashMethod


def _import_builtin_methods() -> None:
    # Importing them registers them; kept in a function so that `import mcmfh.factory` stays light (torch models).
    from mcmfh import baselines, model  # noqa: F401


def available_methods() -> list[str]:
    _import_builtin_methods()
    return sorted(REGISTRY)


def method_class(name: str) -> type[HashMethod]:
    """The registered class of ``name`` (what it declares: ``continuous``, ``ablation_of``, ...)."""
    _import_builtin_methods()
    if name not in REGISTRY:
        raise MCMFHError(f"unknown method {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def create_method(name: str, bits: int, seed: int = 0, **options: Any) -> HashMethod:
    _import_builtin_methods()
    if name not in REGISTRY:
        raise MCMFHError(f"unknown method {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](bits=bits, seed=seed, **options)


def load_method(folder: str | Path, weights_sha256: str | None = None) -> HashMethod:
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
