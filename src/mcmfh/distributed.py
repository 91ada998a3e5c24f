"""Encoding on a Ray cluster (needs ``mcmfh[scale]``): the same feature cache as in-process, made by many workers.

``RayChunkRunner`` plugs into ``encode_features.run_encode``: the chunks still missing from the resumable work folder
become one Ray Data pipeline whose ``map_batches`` runs on an actor pool — each actor builds the encoder once (one
model per worker) and encodes batches with the project's chunk encoder, so unreadable images, ``--skip-bad`` and the
arrays are handled exactly as in-process. The driver gathers rows back by (chunk, position) and writes each chunk
as soon as it is complete, so an interrupted distributed run resumes like a local one, and the assembled cache (one
manifest) is identical. ``address=None`` starts a local Ray instance; otherwise ``ray.init(address=...)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.encode_features import ChunkEncoder, ChunkResult, EncodeOptions, EncodeOutcome
from mcmfh.encoders.base import Encoder
from mcmfh.errors import MCMFHError
from mcmfh.items import Item


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 (the Data extra must be installed too)
    except ImportError as e:
        raise MCMFHError("distributed encoding needs Ray Data: pip install 'mcmfh[scale]'") from e
    return ray


class _EncodeActor:
    """One per Ray worker: holds one encoder, encodes batches of rows into the chunk arrays."""

    def __init__(self, encoder_name: str, encoder_opts: dict[str, Any], options: EncodeOptions) -> None:
        from mcmfh.encoders import get_encoder

        self.outcome = EncodeOutcome(features=None, path=Path("."), reused=False, n_items=0)  # type: ignore[arg-type]
        self.encode = ChunkEncoder(get_encoder(encoder_name, **encoder_opts), options, self.outcome)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [
            Item(str(i), Path(img) if img else None, str(t), (), "train")
            for i, img, t in zip(batch["id"], batch["image"], batch["text"], strict=True)
        ]
        t0 = (self.outcome.image_seconds, self.outcome.text_seconds)
        arrays, skipped = self.encode(records)
        why = dict(skipped)
        n = len(records)
        return {
            "chunk": batch["chunk"],
            "pos": batch["pos"],
            **arrays,
            "skip": np.array([why.get(r.id, "") for r in records], dtype=object),
            # seconds this batch spent in the encoder, spread over its rows so the driver can sum them
            "t_image": np.full(n, (self.outcome.image_seconds - t0[0]) / n),
            "t_text": np.full(n, (self.outcome.text_seconds - t0[1]) / n),
        }


@dataclass
class RayChunkRunner:
    """Runs the encoder ``encoder_name`` (built with ``encoder_opts`` on every worker) on a Ray actor pool."""

    encoder_name: str
    encoder_opts: dict[str, Any] = field(default_factory=dict)
    address: str | None = None  # None: a local instance with ``num_workers`` CPUs
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # e.g. 1.0 with encoder_opts {"device": "cuda"} on a GPU cluster
    batch_size: int | None = None  # rows per map_batches call; default: the encode batch size

    def _init(self, ray: Any) -> None:
        if ray.is_initialized():
            return
        try:
            if self.address is None:
                ray.init(num_cpus=max(1, int(self.num_workers * self.cpus_per_worker)), include_dashboard=False)
            else:
                ray.init(address=self.address)
        except Exception as e:  # ConnectionError and friends: report the address, not a traceback
            raise MCMFHError(f"ray: cannot start or reach Ray at {self.address or 'a local instance'} ({e})") from e

    def __call__(
        self,
        encoder: Encoder,
        missing: list[tuple[int, Sequence[Item]]],
        options: EncodeOptions,
        outcome: EncodeOutcome,
    ) -> Iterator[ChunkResult]:
        if not missing:
            return
        ray = _ray()
        self._init(ray)
        ray.data.DataContext.get_current().enable_progress_bars = options.progress.enabled
        rows = [
            {"chunk": i, "pos": j, "id": r.id, "image": "" if r.image is None else str(r.image), "text": r.text}
            for i, part in missing
            for j, r in enumerate(part)
        ]
        sizes = {i: len(part) for i, part in missing}
        ids = {i: [r.id for r in part] for i, part in missing}
        ds = ray.data.from_items(rows).map_batches(
            _EncodeActor,
            fn_constructor_args=(self.encoder_name, self.encoder_opts, options),
            batch_size=self.batch_size or options.batch_size,
            batch_format="numpy",
            concurrency=self.num_workers,
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
        )
        pending: dict[int, list[dict[str, np.ndarray]]] = {}
        filled: dict[int, int] = {}
        t0 = time.perf_counter()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in np.unique(batch["chunk"]):
                m = batch["chunk"] == i
                pending.setdefault(int(i), []).append({k: v[m] for k, v in batch.items()})
                filled[int(i)] = filled.get(int(i), 0) + int(m.sum())
                if filled[int(i)] == sizes[int(i)]:
                    yield self._chunk(int(i), pending.pop(int(i)), ids[int(i)], encoder, outcome)
        if pending:
            raise MCMFHError(f"ray: the pipeline ended with chunks {sorted(pending)[:5]} incomplete")
        outcome.wall_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]

    @staticmethod
    def _chunk(
        i: int, parts: list[dict[str, np.ndarray]], ids: list[str], encoder: Encoder, outcome: EncodeOutcome
    ) -> ChunkResult:
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.argsort(cat["pos"], kind="stable")
        if not np.array_equal(cat["pos"][order], np.arange(len(ids))):
            raise MCMFHError(f"ray: chunk {i} came back with missing or repeated rows")
        arrays = {
            "image": np.ascontiguousarray(cat["image"][order], np.float32).reshape(len(ids), encoder.image_dim),
            "text": np.ascontiguousarray(cat["text"][order], np.float32).reshape(len(ids), encoder.text_dim),
            "has_image": cat["has_image"][order].astype(np.uint8),
            "kept": cat["kept"][order].astype(np.uint8),
        }
        skipped = [(ids[j], str(cat["skip"][order][j])) for j in range(len(ids)) if cat["skip"][order][j]]
        outcome.n_images += int((arrays["has_image"] & arrays["kept"]).sum())
        outcome.n_texts += len(ids)
        outcome.image_seconds += float(cat["t_image"].sum())
        outcome.text_seconds += float(cat["t_text"].sum())
        return i, arrays, skipped
