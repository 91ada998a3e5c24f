"""Frozen encoders behind one interface; ``get_encoder(name)`` builds one by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcmfh.encoders.base import Encoder, l2_normalize
from mcmfh.errors import MCMFHError

_FACTORIES: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    def deco(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _FACTORIES[name] = factory
        return factory

    return deco


def available_encoders() -> list[str]:
    _import_builtin()
    return sorted(_FACTORIES)


def get_encoder(name: str, **options: Any) -> Encoder:
    _import_builtin()
    if name not in _FACTORIES:
        raise MCMFHError(f"unknown encoder {name!r}; available: {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[name](**options)


def encoder_summary(name: str) -> str:
    """First line of the docstring of the module that registered ``name``."""
    import sys

    _import_builtin()
    doc = sys.modules[_FACTORIES[name].__module__].__doc__ or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first.removeprefix(f"``{name}``: ")


def _import_builtin() -> None:
    # Heavy dependencies (onnxruntime, open_clip) are imported inside each factory, not here.
    import importlib

    for mod in ("mcmfh.encoders.tiny", "mcmfh.encoders.offline", "mcmfh.encoders.biomedclip"):
        importlib.import_module(mod)


__all__ = ["Encoder", "available_encoders", "encoder_summary", "get_encoder", "l2_normalize", "register_encoder"]
