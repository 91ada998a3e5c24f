"""Pick and construct an index by name, like FAISS ``index_factory``."""

from __future__ import annotations

from typing import Any

from mcmfh.errors import MCMFHError
from mcmfh.index.base import HammingIndex
from mcmfh.index.bucket import BucketIndex
from mcmfh.index.flat import FlatIndex
from mcmfh.index.mih import MIHIndex

INDEX_KINDS: dict[str, type[HammingIndex]] = {"flat": FlatIndex, "bucket": BucketIndex, "mih": MIHIndex}
BUCKET_MAX_AUTO_BITS = 16  # up to 65,536 buckets: the table fits in L2 and a query never scans items


def default_kind(bits: int) -> str:
    """Bucket index up to 16 bits, multi-index hashing above."""
    return "bucket" if bits <= BUCKET_MAX_AUTO_BITS else "mih"


def make_index(bits: int, kind: str | None = None, **params: Any) -> HammingIndex:
    """An empty index for ``bits``-bit codes; ``kind`` in {"flat", "bucket", "mih"} or None for the default."""
    kind = kind or default_kind(bits)
    if kind not in INDEX_KINDS:
        raise MCMFHError(f"index: unknown kind {kind!r}; expected one of {sorted(INDEX_KINDS)}")
    return INDEX_KINDS[kind](bits, **params)
