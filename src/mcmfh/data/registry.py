"""Loaders by name: ``load_dataset(name, root, ...)`` is the one entry point the CLI and the encoder cache use."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mcmfh.data.build import Issues
from mcmfh.data.records import Dataset
from mcmfh.errors import DataError, MCMFHError

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


def _import_builtin() -> None:
    # Importing the modules registers their loaders.
    from mcmfh.data import generic, medpix2, openi, roco  # noqa: F401


def available_datasets() -> dict[str, str]:
    """Loader name -> one-line description."""
    _import_builtin()
    return {n: s.summary for n, s in sorted(_LOADERS.items())}


def loader_spec(name: str) -> LoaderSpec:
    _import_builtin()
    if name not in _LOADERS:
        raise MCMFHError(f"unknown dataset {name!r}; available: {', '.join(sorted(_LOADERS))}")
    return _LOADERS[name]


def load_dataset(
    name: str,
    root: str | os.PathLike[str],
    label_set: str | None = None,
    skip_bad: bool = False,
    **options: object,
) -> Dataset:
    """Load dataset ``name`` from ``root``.

    Bad items (missing/corrupt image, empty text, duplicate id, unknown split, malformed row) are all collected first;
    then, unless ``skip_bad``, one ``DataError`` lists how many there are and where the first ones are (file and
    1-based line). With ``skip_bad`` they are left out and listed in ``dataset.report.skipped``. Structural problems
    (missing files, missing columns, unknown label set) always raise.
    """
    spec = loader_spec(name)
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder/file not found (dataset {name!r})")
    label_set = label_set or spec.default_label_set
    if spec.label_sets is not None and label_set not in spec.label_sets:
        raise DataError(f"{name}: unknown label set {label_set!r}; expected one of {list(spec.label_sets)}")
    params = inspect.signature(spec.fn).parameters
    accepted = [p for p in params if p not in ("root", "label_set", "issues")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise MCMFHError(f"{name}: unknown option(s) {unknown}; this loader accepts {accepted}")
    issues = Issues(name, skip_bad)
    dataset = spec.fn(root, label_set=label_set, issues=issues, **options)
    issues.raise_if_bad()
    dataset.report.skipped = list(issues.items)
    dataset.source = {"loader": name, "root": str(root.resolve()), "label_set": label_set, "options": options}
    return dataset
