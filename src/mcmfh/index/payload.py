"""Per-item payloads for two-stage search: a few bytes per item that re-score Hamming candidates more finely.

Every codec stores an item as a fixed-width row of uint8 bytes (so an archive keeps one opaque blob per item) and
scores a query against gathered rows as a *similarity* (higher is better), always a cosine in [-1, 1]:

- ``int8`` / ``int4``: a real-valued vector (the hash head's relaxed output tanh(h), or any pre-sign projection)
  scaled by its own largest magnitude to the full integer range and rounded: ``dim`` / ``dim / 2`` bytes. The
  cosine does not depend on an item's scale, so no scale is stored and the only loss is the rounding.
- ``float16``: the vector as half floats (``2 * dim`` bytes); ``float32``: lossless (``4 * dim`` bytes), the
  reference that equals cosine ranking on the relaxed outputs.
- ``code``: a longer binary code of the same method (e.g. 64 bits = 8 bytes), scored as ``1 - 2 h / bits`` with h
  the Hamming distance — the cosine of the two ±1 vectors.

The query side is never quantised: it is the query's own real-valued vector (or its longer code), coded alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.index.codes import pack_codes, unpack_codes

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


class PayloadCodec(ABC):
    """Encodes items into (N, bytes_per_item) uint8 rows and scores queries against gathered rows."""

    name: ClassVar[str]
    binary: ClassVar[bool] = False  # True: encode takes bool codes, not real-valued vectors

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise MCMFHError(f"payload {self.name}: dim must be >= 1, got {dim}")
        self.dim = int(dim)

    @property
    @abstractmethod
    def bytes_per_item(self) -> int: ...

    @abstractmethod
    def encode(self, x: np.ndarray) -> np.ndarray:
        """(N, dim) vectors (bool codes for ``binary`` codecs) -> (N, bytes_per_item) uint8 rows."""

    @abstractmethod
    def decode(self, rows: np.ndarray) -> np.ndarray:
        """(..., bytes_per_item) uint8 -> (..., dim) float32 (±1 for binary codecs), up to the item's scale."""

    def prepare_queries(self, queries: np.ndarray) -> np.ndarray:
        """Query vectors as ``score`` wants them: unit-norm float32 (binary codecs: ±1 / sqrt(dim))."""
        q = self._check(queries, "queries").astype(np.float32)
        if self.binary:
            q = np.where(q > 0, 1.0, -1.0).astype(np.float32)
        return q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)

    def score(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cosine similarities (Q, C) between prepared queries (Q, dim) and gathered rows (Q, C, bytes_per_item)."""
        x = self.decode(rows)
        norms = np.linalg.norm(x, axis=-1)
        dots = np.einsum("qcd,qd->qc", x, queries)
        return (dots / np.maximum(norms, 1e-12)).astype(np.float32)

    def _check(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise MCMFHError(f"payload {self.name}: {what} must be (N, {self.dim}), got {x.shape}")
        if not self.binary and not np.all(np.isfinite(x)):
            raise MCMFHError(f"payload {self.name}: {what} contain NaN or infinite values")
        return x


def _max_abs_scaled(x: np.ndarray, levels: int) -> np.ndarray:
    """Each row divided by its largest magnitude and rounded to integers in [-levels, levels] (zero rows stay 0)."""
    x = x.astype(np.float64)
    peak = np.abs(x).max(axis=1, keepdims=True)
    return np.rint(x / np.where(peak > 0, peak, 1.0) * levels).astype(np.int8)


class Int8Codec(PayloadCodec):
    name = "int8"

    @property
    def bytes_per_item(self) -> int:
        return self.dim

    def encode(self, x: np.ndarray) -> np.ndarray:
        return _max_abs_scaled(self._check(x, "items"), 127).view(np.uint8)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows, dtype=np.uint8).view(np.int8).astype(np.float32)


class Int4Codec(PayloadCodec):
    """Two signed 4-bit values per byte (low nibble first), each in [-7, 7]."""

    name = "int4"

    @property
    def bytes_per_item(self) -> int:
        return -(-self.dim // 2)

    def encode(self, x: np.ndarray) -> np.ndarray:
        q = _max_abs_scaled(self._check(x, "items"), 7).astype(np.int16) & 0xF
        if self.dim % 2:
            q = np.concatenate([q, np.zeros((q.shape[0], 1), q.dtype)], axis=1)
        return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.uint8)
        nib = np.stack([rows & 0xF, rows >> 4], axis=-1).reshape(*rows.shape[:-1], -1)[..., : self.dim]
        return np.where(nib > 7, nib.astype(np.float32) - 16, nib.astype(np.float32))


class Float16Codec(PayloadCodec):
    name = "float16"

    @property
    def bytes_per_item(self) -> int:
        return 2 * self.dim

    def encode(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x, "items").astype(np.float64)
        # Scaled like the integer codecs: large pre-sign projections would overflow half floats otherwise.
        peak = np.abs(x).max(axis=1, keepdims=True)
        return np.ascontiguousarray((x / np.where(peak > 0, peak, 1.0)).astype("<f2")).view(np.uint8)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(rows, dtype=np.uint8)).view("<f2").astype(np.float32)


class Float32Codec(PayloadCodec):
    name = "float32"

    @property
    def bytes_per_item(self) -> int:
        return 4 * self.dim

    def encode(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._check(x, "items").astype("<f4")).view(np.uint8)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(rows, dtype=np.uint8)).view("<f4").astype(np.float32)


class CodeCodec(PayloadCodec):
    """A longer binary code (bool (N, dim), dim a multiple of 8) packed like the index's codes."""

    name = "code"
    binary = True

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        if dim % 8:
            raise MCMFHError(f"payload code: bits must be a multiple of 8, got {dim}")

    @property
    def bytes_per_item(self) -> int:
        return self.dim // 8

    def encode(self, x: np.ndarray) -> np.ndarray:
        return pack_codes(self._check(x, "items"))

    def decode(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.uint8)
        bits = unpack_codes(rows.reshape(-1, rows.shape[-1]), self.dim).reshape(*rows.shape[:-1], self.dim)
        return np.where(bits, 1.0, -1.0).astype(np.float32)

    def score(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        # Integer popcounts, not float dot products: equal distances give exactly equal similarities.
        packed = pack_codes(queries > 0)
        rows = np.asarray(rows, dtype=np.uint8)
        h = _POPCOUNT8[np.bitwise_xor(rows, packed[:, None, :])].sum(axis=-1, dtype=np.int32)
        return (1.0 - 2.0 * h / self.dim).astype(np.float32)


CODECS: dict[str, type[PayloadCodec]] = {c.name: c for c in (Int8Codec, Int4Codec, Float16Codec, Float32Codec)}
PAYLOADS = (*CODECS, "code64")  # names accepted by ``make_codec``; "code<B>" is a B-bit code of the same method


def code_bits(name: str) -> int | None:
    """64 for "code64"; None for the real-valued codecs."""
    if name.startswith("code") and name[4:].isdigit():
        return int(name[4:])
    return None


# What an archive stores per item and per study, and what the evaluation scores as the archive's ranking: the
# relaxed output at int8 (2 + 16 bytes per item at 16 bits). benchmarks/payloads.py, 3 seeds, MedPix and vqa_rad
# (benchmarks/results/payloads_16bit.md): int4 ties it in mAP, P@10 and paired recall at 8 bytes less, but rounds
# distinct items onto one code + payload (3-seed mean: 11 of 157 vqa_rad images, 2.3 of 1,843 MedPix images;
# int8: none), and grouped search folds equal code + payload as copies (``mcmfh.diversify.copy_key``). The fused
# token at int8 (128 bytes) lifts MedPix P@10 and paired recall but loses mAP on both sets and every figure on
# vqa_rad; a 64-bit companion's relaxed output (64 bytes) or code (8 bytes) loses P@10 and needs a second model.
DEFAULT_PAYLOAD = "int8"


def make_codec(name: str, dim: int) -> PayloadCodec:
    """The codec called ``name`` ("int8", "int4", "float16", "float32", or "code<B>" with dim = B) for ``dim``-wide
    vectors."""
    bits = code_bits(name)
    if bits is not None:
        if bits != dim:
            raise MCMFHError(f"payload {name}: expected {bits}-bit codes, got width {dim}")
        return CodeCodec(dim)
    if name not in CODECS:
        raise MCMFHError(f"unknown payload {name!r}; expected one of {', '.join(CODECS)} or code<bits> (e.g. code64)")
    return CODECS[name](dim)
