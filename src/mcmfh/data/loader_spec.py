"""What a dataset loader declares (``LoaderSpec``) and where it registers (``register_loader``).

Loaders import this module; it imports none of them, so there is no cycle between the registry and its loaders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mcmfh.data.records import Dataset

LoaderFn = Callable[..., Dataset]


@dataclass(frozen=True)
class LoaderSpec:
    name: str
    fn: LoaderFn
    label_sets: tuple[str, ...] | None  # None: any (the generic loaders take a column name)
    default_label_set: str
    summary: str


_LOADERS: dict[str, LoaderSpec] = {}


def register_loader(
    name: str, label_sets: tuple[str, ...] | None, default_label_set: str, summary: str
) -> Callable[[LoaderFn], LoaderFn]:
    """Register ``fn(root: Path, label_set: str, issues: Issues, **options) -> Dataset`` under ``name``."""

    def deco(fn: LoaderFn) -> LoaderFn:
        if name in _LOADERS:
            raise ValueError(f"dataset loader {name!r} registered twice")
        _LOADERS[name] = LoaderSpec(name, fn, label_sets, default_label_set, summary)
        return fn

    return deco


def registered() -> dict[str, LoaderSpec]:
    """Every loader registered so far, by name (``mcmfh.data.registry`` imports the built-in ones first)."""
    return _LOADERS
