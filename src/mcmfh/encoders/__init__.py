"""Frozen encoders behind one interface; ``get_encoder(name)`` builds one by name."""

from __future__ import annotations

from typing import Any

from mcmfh.encoders.base import Encoder, l2_normalize
from mcmfh.encoders.registry import FACTORIES, register_encoder
from mcmfh.errors import MCMFHError


def available_encoders() -> list[str]:
    _import_builtin()
    return sorted(FACTORIES)


def get_encoder(name: str, **options: Any) -> Encoder:
    _import_builtin()
    if name not in FACTORIES:
        raise MCMFHError(f"unknown encoder {name!r}; available: {', '.join(sorted(FACTORIES))}")
    return FACTORIES[name](**options)


def encoder_summary(name: str) -> str:
    """First line of the docstring of the module that registered ``name``."""
    import sys

    _import_builtin()
    doc = sys.modules[FACTORIES[name].__module__].__doc__ or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first.removeprefix(f"``{name}``: ")


def _import_builtin() -> None:
    # Importing them registers them; heavy dependencies (onnxruntime, open_clip) are imported inside each factory.
    from mcmfh.encoders import biomedclip, offline, tiny  # noqa: F401


__all__ = ["Encoder", "available_encoders", "encoder_summary", "get_encoder", "l2_normalize", "register_encoder"]
