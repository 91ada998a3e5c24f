"""Where encoder factories register (``register_encoder``); ``mcmfh.encoders.get_encoder`` builds them by name.

A module of its own so that encoder modules import it, not the package that imports them (no cycle)."""

from __future__ import annotations

from collections.abc import Callable

from mcmfh.encoders.base import Encoder

FACTORIES: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    def deco(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        FACTORIES[name] = factory
        return factory

    return deco
