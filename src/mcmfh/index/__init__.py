"""Hamming search: one FAISS-style index interface over several implementations.

``make_index(bits)`` returns an exact index (bucket for <= 16 bits, multi-index hashing above); ``FlatIndex`` is the
brute-force reference; ``ItemIndex`` (mcmfh.index.local_store) is the persistent, crash-safe index with item metadata.
"""

from mcmfh.index.base import CodesIndex, HammingIndex
from mcmfh.index.bucket import BucketIndex
from mcmfh.index.factory import INDEX_KINDS, default_kind, make_index, read_index, write_index
from mcmfh.index.flat import FlatIndex
from mcmfh.index.mih import MIHIndex

__all__ = [
    "INDEX_KINDS",
    "BucketIndex",
    "CodesIndex",
    "FlatIndex",
    "HammingIndex",
    "MIHIndex",
    "default_kind",
    "make_index",
    "read_index",
    "write_index",
]
