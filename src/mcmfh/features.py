"""Feature sets: cached frozen embeddings of a dataset, with ids, labels, splits and a manifest.

On disk a feature cache is a folder:
    arrays.safetensors   image (N, di) f32, text (N, dt) f32, has_image (N,) u8, labels (N, C) u8
    meta.json            ids, split per item, label vocabulary, study per item (when the source has studies)
    manifest.json        dataset, label set, encoder name/version/dims, preprocessing, package version, input hash
The manifest is written last inside a temp folder that is renamed into place, so a folder with a manifest is complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from mcmfh.errors import ArtefactError
from mcmfh.io import atomic_dir
from mcmfh.manifest import MANIFEST_NAME, read_manifest

ARRAYS_NAME = "arrays.safetensors"
META_NAME = "meta.json"


@dataclass
class FeatureSet:
    """Embeddings of N items. Items without an image have a zero image row and ``has_image`` False.

    ``study``: per item, the study it belongs to (None: the source has no studies; see ``study_ids``)."""

    ids: list[str]
    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    label_vocab: list[str]
    split: np.ndarray
    has_image: np.ndarray | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    study: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.image = np.ascontiguousarray(self.image, dtype=np.float32)
        self.text = np.ascontiguousarray(self.text, dtype=np.float32)
        self.labels = np.ascontiguousarray(self.labels, dtype=np.uint8)
        self.split = np.asarray(self.split, dtype=str)
        if self.has_image is None:
            self.has_image = np.ones(n, dtype=bool)
        self.has_image = np.asarray(self.has_image, dtype=bool)
        if self.study is not None:
            self.study = np.asarray(self.study, dtype=str)
        for name in ("image", "text", "labels", "split", "has_image") + (("study",) if self.study is not None else ()):
            arr = getattr(self, name)
            if arr.shape[0] != n:
                raise ArtefactError(f"features: field {name!r} has {arr.shape[0]} rows, expected {n} (one per id)")
        if self.labels.ndim != 2 or self.labels.shape[1] != len(self.label_vocab):
            raise ArtefactError(
                f"features: labels shape {self.labels.shape} does not match a vocabulary of {len(self.label_vocab)}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_studies(self) -> bool:
        return self.study is not None

    def study_ids(self) -> np.ndarray:
        """Per item, its study id; without studies every item is a study of its own (its id)."""
        if self.study is None:
            return np.asarray(self.ids, dtype=str)
        ids = np.asarray(self.ids, dtype=str)
        return np.where(self.study == "", ids, self.study)

    @property
    def image_dim(self) -> int:
        return int(self.image.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[1])

    def subset(self, mask_or_index: np.ndarray) -> FeatureSet:
        idx = np.asarray(mask_or_index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return FeatureSet(
            ids=[self.ids[i] for i in idx],
            image=self.image[idx],
            text=self.text[idx],
            labels=self.labels[idx],
            label_vocab=list(self.label_vocab),
            split=self.split[idx],
            has_image=self.has_image[idx],
            manifest=dict(self.manifest),
            study=None if self.study is None else self.study[idx],
        )

    def splits(self, *names: str) -> FeatureSet:
        """Items whose split is one of ``names``, in their original order."""
        return self.subset(np.isin(self.split, list(names)))

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            save_file(
                {
                    "image": self.image,
                    "text": self.text,
                    "labels": self.labels,
                    "has_image": self.has_image.astype(np.uint8),
                },
                str(tmp / ARRAYS_NAME),
            )
            meta = {"ids": self.ids, "split": self.split.tolist(), "label_vocab": self.label_vocab}
            if self.study is not None:
                meta["study"] = self.study.tolist()
            (tmp / META_NAME).write_text(json.dumps(meta), encoding="utf-8")
            (tmp / MANIFEST_NAME).write_text(json.dumps(self.manifest, indent=2, sort_keys=True), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> FeatureSet:
        folder = Path(folder)
        manifest = read_manifest(folder, kind="features")
        try:
            arrays = load_file(str(folder / ARRAYS_NAME))
            meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError) as e:
            raise ArtefactError(f"{folder}: corrupt feature cache ({e}); delete it and encode again") from e
        return cls(
            ids=meta["ids"],
            image=arrays["image"],
            text=arrays["text"],
            labels=arrays["labels"],
            label_vocab=meta["label_vocab"],
            split=np.asarray(meta["split"]),
            has_image=arrays["has_image"].astype(bool),
            manifest=manifest,
            study=np.asarray(meta["study"]) if "study" in meta else None,
        )
