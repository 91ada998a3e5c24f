"""Binary codes: boolean (N, bits) arrays pack into uint8 (N, bits // 8), little-endian bit order inside a byte."""

from __future__ import annotations

import numpy as np

from mcmfh.errors import MCMFHError


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """Bool or ±1 / {0,1} codes (N, bits) → packed uint8 (N, bits // 8)."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] % 8:
        raise MCMFHError(f"codes: expected shape (N, bits) with bits a multiple of 8, got {codes.shape}")
    return np.packbits(codes > 0, axis=1, bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Packed uint8 (N, B) → bool (N, bits)."""
    packed = np.asarray(packed, dtype=np.uint8)
    out = np.unpackbits(packed, axis=1, bitorder="little").astype(bool)
    return out if bits is None else out[:, :bits]


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming_matrix(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances between packed codes: (Q, B) and (N, B) uint8 → (Q, N) int32."""
    q = np.asarray(queries, dtype=np.uint8)
    d = np.asarray(database, dtype=np.uint8)
    if q.shape[1] != d.shape[1]:
        raise MCMFHError(f"codes: query width {q.shape[1]} bytes != database width {d.shape[1]} bytes")
    out = np.zeros((q.shape[0], d.shape[0]), dtype=np.int32)
    for b in range(q.shape[1]):
        out += _POPCOUNT8[np.bitwise_xor(q[:, b, None], d[None, :, b])]
    return out
