"""Encode a dataset once into a feature cache, and reuse it while nothing that made it has changed.

A cache is identified by the dataset, label set and vocabulary, the encoder's name/version/dims/preprocessing, and a
fingerprint of the inputs (ids, texts, image paths with their size and mtime, labels, splits). Images are only
stat'ed for the fingerprint, so checking a cache costs milliseconds, not a read of every image.

Crash safety: work goes to a sibling ``.<out>.partial/`` folder in chunks, each written atomically and tagged with
the identity it belongs to; a rerun skips finished chunks. Only when all chunks exist is the cache assembled and
renamed into place (``FeatureSet.save`` is atomic), so a folder at ``out`` is always a complete cache.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from mcmfh.data.records import Dataset
from mcmfh.encoders.base import Encoder
from mcmfh.encoders.common import read_image
from mcmfh.errors import ArtefactError, DataError, MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.io import atomic_write_bytes, atomic_write_json
from mcmfh.items import Item
from mcmfh.manifest import MANIFEST_NAME, fingerprint, new_manifest, read_manifest
from mcmfh.progress import SILENT, Progress

CACHE_FORMAT = 1  # bump when the cache layout or the meaning of its fields changes
WORK_NAME = "work.json"
MISMATCH_POLICIES = ("recompute", "refuse")


@dataclass(frozen=True)
class EncodeOptions:
    batch_size: int = 32
    chunk_size: int = 256  # items per resumable work file
    skip_bad: bool = False  # drop items whose image cannot be read (listed in the manifest) instead of failing
    resume: bool = True  # reuse finished chunks of an interrupted run with the same identity
    on_mismatch: str = "recompute"  # what to do when ``out`` holds a cache made from something else
    progress: Progress = SILENT


@dataclass
class EncodeOutcome:
    features: FeatureSet
    path: Path
    reused: bool  # the finished cache matched; nothing was encoded
    n_items: int  # in the cache
    n_resumed: int = 0  # items taken from chunks of an interrupted run
    n_images: int = 0  # images encoded in this run
    n_texts: int = 0  # texts encoded in this run
    image_seconds: float = 0.0
    text_seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.image_seconds if self.image_seconds > 0 else float("nan")

    @property
    def texts_per_s(self) -> float:
        return self.n_texts / self.text_seconds if self.text_seconds > 0 else float("nan")


def _image_stat(path: Path) -> list[Any]:
    # abspath (no syscalls): the same files named from another folder or as ../x vs /abs/x give the same cache
    name = os.path.abspath(path)
    try:
        st = os.stat(name)
    except OSError:
        return [name, None, None]  # encoding will then fail with a DataError naming the file
    return [name, st.st_size, st.st_mtime_ns]


def input_fingerprint(dataset: Dataset) -> str:
    """Hash of everything the encoder reads, with images represented by path, size and mtime (no image bytes)."""
    rows = [
        [r.id, r.text, None if r.image is None else _image_stat(Path(r.image)), list(r.labels), r.split]
        + ([r.study_id] if r.study_id else [])  # sources without studies keep the keys their caches were made with
        for r in dataset.records
    ]
    return fingerprint(dataset.name, dataset.label_set, dataset.label_vocab, rows)


def cache_identity(dataset: Dataset, encoder: Encoder) -> dict[str, Any]:
    """The manifest fields that must all match for a cache to be reused."""
    return {
        "cache_format": CACHE_FORMAT,
        "dataset": dataset.name,
        "label_set": dataset.label_set,
        "label_vocab_size": len(dataset.label_vocab),
        **encoder.describe(),
        "input_fingerprint": input_fingerprint(dataset),
    }


def _partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _existing_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of a finished cache at ``out``; None if there is nothing there. Refuses to clobber other data."""
    if not out.exists():
        return None
    if out.is_dir() and not any(out.iterdir()):
        return None
    if not (out / MANIFEST_NAME).is_file():
        raise ArtefactError(f"{out}: exists and is not a feature cache (no {MANIFEST_NAME}); choose another --out")
    return read_manifest(out, kind="features")


def _differences(identity: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    return [f"{k}: cached {manifest.get(k)!r}, now {v!r}" for k, v in identity.items() if manifest.get(k) != v]


class _Work:
    """The ``.partial`` folder of one identity: resumable chunk files."""

    def __init__(self, folder: Path, work_id: dict[str, Any], resume: bool) -> None:
        self.folder = folder
        found = None
        if resume and (folder / WORK_NAME).is_file():
            try:
                found = json.loads((folder / WORK_NAME).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                found = None
        if found != work_id:  # another identity, another chunking, or a fresh start: never mix
            if folder.exists() and not (folder / WORK_NAME).is_file() and any(folder.iterdir()):
                raise ArtefactError(f"{folder}: not an mcmfh work folder (no {WORK_NAME}); move it away")
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            atomic_write_json(folder / WORK_NAME, work_id)

    def path(self, i: int) -> Path:
        return self.folder / f"chunk-{i:05d}.safetensors"

    def read(self, i: int) -> dict[str, Any] | None:
        if not self.path(i).is_file():
            return None
        try:
            with safe_open(str(self.path(i)), framework="numpy") as f:
                arrays: dict[str, Any] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
                arrays["skipped"] = json.loads((f.metadata() or {}).get("skipped", "[]"))
            return arrays
        except (SafetensorError, ValueError, OSError):
            return None  # unreadable: encode that chunk again

    def write(self, i: int, arrays: dict[str, np.ndarray], skipped: list[tuple[str, str]]) -> None:
        atomic_write_bytes(self.path(i), save(arrays, metadata={"skipped": json.dumps(skipped)}))


class ChunkEncoder:
    """Encodes one chunk of records; counts throughput; handles unreadable images per ``skip_bad``."""

    def __init__(self, encoder: Encoder, options: EncodeOptions, outcome: EncodeOutcome) -> None:
        self.encoder, self.options, self.outcome = encoder, options, outcome

    def _images(self, paths: Sequence[Path]) -> tuple[np.ndarray, dict[int, str]]:
        """Embeddings of the readable images, and why each unreadable one (by position) was dropped."""
        enc, bs = self.encoder, self.options.batch_size
        try:
            return enc.encode_images(paths, batch_size=bs), {}
        except DataError:
            if not self.options.skip_bad:
                raise
        # Rare path: find the bad files one by one, then encode the rest.
        bad: dict[int, str] = {}
        for j, p in enumerate(paths):
            try:
                read_image(p)
            except DataError as e:
                bad[j] = str(e)
        good = [p for j, p in enumerate(paths) if j not in bad]
        emb = enc.encode_images(good, batch_size=bs) if good else np.zeros((0, enc.image_dim), np.float32)
        return emb, bad

    def __call__(self, records: Sequence[Item]) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
        enc, out = self.encoder, self.outcome
        n = len(records)
        image = np.zeros((n, enc.image_dim), np.float32)
        has_image = np.array([r.image is not None for r in records])
        kept = np.ones(n, dtype=bool)
        rows = np.flatnonzero(has_image)
        skipped: list[tuple[str, str]] = []
        if len(rows):
            t0 = time.perf_counter()
            emb, bad = self._images([Path(records[i].image) for i in rows])  # type: ignore[arg-type]
            out.image_seconds += time.perf_counter() - t0
            kept[rows[list(bad)]] = False
            skipped = [(records[rows[j]].id, why) for j, why in bad.items()]
            good_rows = np.array([r for j, r in enumerate(rows) if j not in bad], dtype=int)
            image[good_rows] = emb
            out.n_images += len(good_rows)
        t0 = time.perf_counter()
        text = enc.encode_texts([r.text for r in records], batch_size=self.options.batch_size)
        out.text_seconds += time.perf_counter() - t0
        out.n_texts += n
        arrays = {"image": image, "text": text, "has_image": has_image.astype(np.uint8), "kept": kept.astype(np.uint8)}
        return arrays, skipped


def _check_chunk(arrays: dict[str, Any], n: int, encoder: Encoder) -> bool:
    return (
        arrays["image"].shape == (n, encoder.image_dim)
        and arrays["text"].shape == (n, encoder.text_dim)
        and arrays["kept"].shape == (n,)
    )


ChunkResult = tuple[int, dict[str, np.ndarray], list[tuple[str, str]]]


class ChunkRunner(Protocol):
    """Encodes the missing chunks ``[(chunk index, records)]``, yielding ``(index, arrays, skipped)`` in any order.

    ``arrays`` are those of ``ChunkEncoder``: image, text, has_image, kept. The in-process runner is the default;
    ``mcmfh.distributed.RayChunkRunner`` spreads the work over a Ray cluster."""

    def __call__(
        self,
        encoder: Encoder,
        missing: list[tuple[int, Sequence[Item]]],
        options: EncodeOptions,
        outcome: EncodeOutcome,
    ) -> Iterator[ChunkResult]: ...


class InProcessRunner:
    """Encodes chunk after chunk with the driver's encoder."""

    def __call__(
        self,
        encoder: Encoder,
        missing: list[tuple[int, Sequence[Item]]],
        options: EncodeOptions,
        outcome: EncodeOutcome,
    ) -> Iterator[ChunkResult]:
        encode_chunk = ChunkEncoder(encoder, options, outcome)
        for i, part in missing:
            arrays, skipped = encode_chunk(part)
            yield i, arrays, skipped


def run_encode(
    dataset: Dataset,
    encoder: Encoder,
    out: str | Path,
    options: EncodeOptions | None = None,
    chunk_runner: ChunkRunner | None = None,
) -> EncodeOutcome:
    """Encode ``dataset`` into the cache folder ``out`` (or reuse it). See the module docstring for guarantees.

    ``chunk_runner`` decides where the chunks are encoded (default: in this process); the cache is the same."""
    opts = options or EncodeOptions()
    if opts.on_mismatch not in MISMATCH_POLICIES:
        raise MCMFHError(f"on_mismatch must be one of {MISMATCH_POLICIES}, got {opts.on_mismatch!r}")
    if opts.chunk_size < 1 or opts.batch_size < 1:
        raise MCMFHError("chunk_size and batch_size must be >= 1")
    if not dataset.records:
        raise DataError(f"{dataset.name}: no records to encode")
    out = Path(out)
    identity = cache_identity(dataset, encoder)
    key = fingerprint(identity)

    manifest = _existing_manifest(out)
    if manifest is not None:
        if manifest.get("cache_key") == key and (opts.skip_bad or not manifest.get("skipped")):
            fs = FeatureSet.load(out)
            return EncodeOutcome(fs, out, reused=True, n_items=len(fs), skipped=manifest.get("skipped", []))
        if opts.on_mismatch == "refuse":
            diffs = _differences(identity, manifest) or ["it skipped bad images, and --skip-bad is off now"]
            raise ArtefactError(
                f"{out}: holds a feature cache made from something else ({'; '.join(diffs)}); "
                "pass --overwrite to replace it, or choose another --out"
            )

    work_id = {"cache_key": key, "chunk_size": opts.chunk_size, "skip_bad": opts.skip_bad, "n": len(dataset)}
    work = _Work(_partial_dir(out), work_id, opts.resume)
    outcome = EncodeOutcome(features=None, path=out, reused=False, n_items=0)  # type: ignore[arg-type]
    records = dataset.records
    parts = [records[lo : lo + opts.chunk_size] for lo in range(0, len(records), opts.chunk_size)]
    chunks: list[dict[str, Any] | None] = [None] * len(parts)
    for i, part in enumerate(parts):
        arrays = work.read(i)
        if arrays is not None and _check_chunk(arrays, len(part), encoder):
            chunks[i] = arrays
            outcome.n_resumed += len(part)
    missing = [(i, parts[i]) for i in range(len(parts)) if chunks[i] is None]
    runner = chunk_runner or InProcessRunner()
    with opts.progress.task("encode", total=len(records), unit="item", initial=outcome.n_resumed) as bar:
        for i, arrays, skipped in runner(encoder, missing, opts, outcome):
            work.write(i, arrays, skipped)  # each finished chunk is durable before the next is awaited
            chunks[i] = {**arrays, "skipped": skipped}
            bar.update(len(parts[i]))

    outcome.features = _assemble(dataset, chunks, identity, key, outcome)
    outcome.features.save(out)
    shutil.rmtree(work.folder, ignore_errors=True)
    outcome.n_items = len(outcome.features)
    return outcome


def _assemble(
    dataset: Dataset, chunks: list[dict[str, Any]], identity: dict[str, Any], key: str, outcome: EncodeOutcome
) -> FeatureSet:
    kept = np.concatenate([c["kept"] for c in chunks]).astype(bool)
    skipped = [tuple(s) for c in chunks for s in c["skipped"]]
    outcome.skipped = skipped  # type: ignore[assignment]
    idx = np.flatnonzero(kept)
    has_image = np.concatenate([c["has_image"] for c in chunks]).astype(bool)[idx]
    split = np.array([r.split for r in dataset.records])[idx]
    manifest = new_manifest(
        "features",
        **identity,
        cache_key=key,
        n_items=int(len(idx)),
        n_with_image=int(has_image.sum()),
        split_counts={s: int((split == s).sum()) for s in ("train", "dev", "test")},
        skipped=[list(s) for s in skipped],
        load_report=dataset.report.summary(),
        source=dataset.source,
    )
    return FeatureSet(
        ids=[dataset.records[i].id for i in idx],
        image=np.concatenate([c["image"] for c in chunks])[idx],
        text=np.concatenate([c["text"] for c in chunks])[idx],
        labels=dataset.label_matrix()[idx],
        label_vocab=list(dataset.label_vocab),
        split=split,
        has_image=has_image,
        manifest=manifest,
        study=np.array([dataset.records[i].study_id or "" for i in idx]) if dataset.has_studies else None,
    )


def encode_dataset(
    dataset: Dataset,
    encoder: Encoder,
    out: str | Path,
    batch_size: int = 32,
    progress: Progress = SILENT,
    resume: bool = True,
    skip_bad: bool = False,
    on_mismatch: str = "recompute",
) -> FeatureSet:
    """The cached features of ``dataset`` under ``encoder`` at ``out``: reused if they match, else (re)computed."""
    opts = EncodeOptions(
        batch_size=batch_size, progress=progress, resume=resume, skip_bad=skip_bad, on_mismatch=on_mismatch
    )
    return run_encode(dataset, encoder, out, opts).features
