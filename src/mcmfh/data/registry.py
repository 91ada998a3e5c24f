"""Loaders by name: ``load_dataset(name, root, ...)`` is the one entry point the CLI and the encoder cache use.

The loaders register themselves in ``mcmfh.data.loader_spec`` (which they import, and which imports none of them);
this module imports the built-in loaders so that they have registered before a name is looked up."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from mcmfh.data.build import Issues
from mcmfh.data.loader_spec import LoaderSpec, registered
from mcmfh.data.records import Dataset
from mcmfh.errors import DataError, MCMFHError


def _import_builtin() -> None:
    # Importing the modules registers their loaders.
    from mcmfh.data import generic, medpix2, openi, roco  # noqa: F401


def available_datasets() -> dict[str, str]:
    """Loader name -> one-line description."""
    _import_builtin()
    return {n: s.summary for n, s in sorted(registered().items())}


def loader_spec(name: str) -> LoaderSpec:
    _import_builtin()
    if name not in registered():
        raise MCMFHError(f"unknown dataset {name!r}; available: {', '.join(sorted(registered()))}")
    return registered()[name]


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


def dataset_from_source(source: dict) -> Dataset:
    """Reload the dataset a feature cache was encoded from (its manifest's ``source``)."""
    if not source or "loader" not in source:
        raise MCMFHError("the features do not record which dataset they came from; pass the dataset explicitly")
    return load_dataset(source["loader"], source["root"], label_set=source.get("label_set"), skip_bad=True,
                        **source.get("options", {}))  # fmt: skip
