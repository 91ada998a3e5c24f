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


def _import_builtin() -> None:
    # Heavy dependencies (onnxruntime, open_clip) are imported inside each factory, not here.
    import importlib

    for mod in ():  # filled as encoder modules land: "mcmfh.encoders.tiny", "mcmfh.encoders.offline", ...
        importlib.import_module(mod)


__all__ = ["Encoder", "available_encoders", "get_encoder", "l2_normalize", "register_encoder"]
