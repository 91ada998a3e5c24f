"""Query coding: a text or image query to its code (and relaxed output, for two-stage search), many at a time.

A ``QueryCoder`` is built with what coding needs (the run's encoder name and version, its method, the archive's
payload codec) and nothing of the archive, so it never calls back into it. Texts: concurrent queries share one
encoder-and-hash call (``mcmfh.batching``). Images: the image network costs the same per image at any batch size, so
each image is encoded on its own by one of ``image_workers`` threads as soon as one is free (a batch would make every
image wait for the slowest of its batch), and only the hashing, which is cheaper per row in batches, is shared.
``MCMFH_BATCH_QUERIES=0`` encodes one query at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from mcmfh.batching import BatchingConfig, MicroBatcher
from mcmfh.encoders.base import Encoder
from mcmfh.errors import ArtefactError
from mcmfh.index.payload import PayloadCodec
from mcmfh.method import HashMethod
from mcmfh.numpy_hash import NUMPY_QUERY_ROWS, NumpyHasher

BATCH_ENV = "MCMFH_BATCH_QUERIES"  # "0": encode queries one at a time (the behaviour before micro-batching)


def hash_rows(method: HashMethod, modality: str, x: np.ndarray, relaxed: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes of ``modality`` rows, and their relaxed outputs when asked: one pass of the model, the codes being the
    signs of the relaxed outputs (``HashMethod``'s contract, tested per method)."""
    if not relaxed:
        return (method.encode_images(x) if modality == "images" else method.encode_texts(x)), None
    out = method.relaxed_images(x) if modality == "images" else method.relaxed_texts(x)
    return out > 0, out


def load_encoder(name: str, version: str, what: str) -> Encoder:
    """Encoder ``name``, checked to be the ``version`` the model was trained on (``what`` names the archive)."""
    from mcmfh.encoders import get_encoder

    encoder = get_encoder(name)
    if encoder.version != version:
        raise ArtefactError(f"{what}: trained on encoder {name} version {version}, this installation has "
                            f"{encoder.version}")  # fmt: skip
    return encoder


class QueryCoder:
    """Codes queries of one archive: ``code(modality, query) -> (code (bits,), relaxed (dim,) or None)``.

    ``method`` returns the run's fitted method (loaded on first use by the caller); ``hasher``, the numpy copy of the
    model where there is one (``mcmfh.numpy_hash``), codes small query batches so a CLI search never imports torch."""

    def __init__(self, method: Callable[[], HashMethod], encoder: str, encoder_version: str,
                 codec: PayloadCodec | None, what: str, hasher: NumpyHasher | None = None,
                 batching: BatchingConfig | None = None) -> None:  # fmt: skip
        self.method, self.hasher, self.codec, self.what = method, hasher, codec, what
        self.batching = batching or BatchingConfig()
        self.batchers: dict[str, MicroBatcher[Any]] = {}
        self._encoder_name, self._encoder_version = encoder, encoder_version
        self._encoder: Encoder | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # starts the encoder, the batchers and the pool once

    @property
    def encoder(self) -> Encoder:
        """The run's encoder, loaded on first use."""
        with self._lock:
            return self._encoder_locked()

    def _encoder_locked(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_encoder(self._encoder_name, self._encoder_version, self.what)
        return self._encoder

    def code(self, modality: str, query: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """One query's code and relaxed output (None without a payload codec); ``modality``: images or texts."""
        with self._lock:
            encoder = self._encoder_locked()
            if os.environ.get(BATCH_ENV, "1") == "0":
                return self._encode_batch(encoder, modality, [query])[0]
            if modality == "texts":
                batcher = self._batcher("encode-texts", partial(self._encode_batch, encoder, modality))
            else:
                batcher = self._batcher("hash-images", lambda rows: self.hash(modality, np.stack(rows)))
                if self._pool is None:
                    workers = self.batching.image_workers or os.cpu_count() or 1
                    self._pool = ThreadPoolExecutor(workers, thread_name_prefix="encode-image")
                pool = self._pool
        if modality == "texts":
            return batcher.submit(query)
        embedding = pool.submit(encoder.encode_images, [query], 1).result()
        return batcher.submit(embedding[0])

    def _batcher(self, name: str, fn: Any) -> MicroBatcher[Any]:
        if name not in self.batchers:
            self.batchers[name] = MicroBatcher(fn, self.batching, name=name)
        return self.batchers[name]

    def _encode_batch(self, encoder: Encoder, modality: str, queries: list[Any]) -> list[tuple[Any, Any]]:
        emb = encoder.encode_texts(queries) if modality == "texts" else encoder.encode_images(queries, batch_size=1)
        return self.hash(modality, emb)

    def hash(self, modality: str, emb: np.ndarray) -> list[tuple[Any, Any]]:
        """Per row of embeddings ``emb``: its code and relaxed output (None without a payload codec)."""
        codes, relaxed = self.hash_arrays(modality, emb)
        return [(codes[i], None if relaxed is None else relaxed[i]) for i in range(len(emb))]

    def hash_arrays(self, modality: str, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Codes and relaxed outputs of ``emb``: the numpy copy of the model, with torch for the rows it marks unsafe
        (a sign or expert choice within float32 rounding), so codes are always torch's."""
        with_relaxed = self.codec is not None
        if self.hasher is None or len(emb) > NUMPY_QUERY_ROWS:
            return hash_rows(self.method(), modality, emb, relaxed=with_relaxed)
        out, safe = self.hasher.relaxed(emb, modality)
        if not safe.all():
            rows = np.flatnonzero(~safe)
            method = self.method()
            fn = method.relaxed_images if modality == "images" else method.relaxed_texts
            out[rows] = fn(emb[rows])
        return out > 0, (out if with_relaxed else None)

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()
        self.batchers = {}
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
