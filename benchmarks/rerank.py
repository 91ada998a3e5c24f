"""Two-stage search latency (issue 17, first cut): single-query p50/p99 at 10^6 random 16-bit codes, int8 payload.

    python benchmarks/rerank.py

Times ``two_stage_search`` (bucket index candidates, budget 10 k, int8 re-scoring of the relaxed vectors, 16 bytes
per item on top of the 2-byte code) against the one-stage ``search`` on the same index and queries. The full
comparison (10^7 items, batch and one-thread q/s, FAISS references) is in ``benchmarks/search.py`` (two-stage rows)."""

from __future__ import annotations

import time

import numpy as np

from mcmfh.index import make_index
from mcmfh.index.payload import make_codec
from mcmfh.index.rerank import two_stage_search

rng = np.random.default_rng(0)
n = 10**6
vec = np.tanh(rng.normal(size=(n, 16))).astype(np.float32)
codes = np.packbits(vec > 0, axis=1, bitorder="little")
codec = make_codec("int8", 16)
payload = codec.encode(vec)
index = make_index(16)
index.add(codes)
qv = np.tanh(rng.normal(size=(300, 16))).astype(np.float32)
qc = np.packbits(qv > 0, axis=1, bitorder="little")
for k in (10, 100):
    two_stage_search(index, qc[:1], qv[:1], payload, codec, k)
    lat = []
    for i in range(300):
        t = time.perf_counter()
        two_stage_search(index, qc[i : i + 1], qv[i : i + 1], payload, codec, k)
        lat.append(time.perf_counter() - t)
    one = []
    for i in range(300):
        t = time.perf_counter()
        index.search(qc[i : i + 1], k)
        one.append(time.perf_counter() - t)
    p = lambda a, q: np.percentile(a, q) * 1e3  # noqa: E731
    print(
        f"n=1e6 k={k} oversample=10 int8: two-stage p50 {p(lat, 50):.3f} ms p99 {p(lat, 99):.3f} ms; "
        f"one-stage p50 {p(one, 50):.3f} ms p99 {p(one, 99):.3f} ms"
    )
