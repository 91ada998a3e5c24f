"""Exact Hamming search benchmark: mcmfh indexes against FAISS on the same codes, queries and threads.

    python benchmarks/search.py --quick --json OUT.json      # n = 1e6, k = 100, random codes (+ --ks, --codes)
    python benchmarks/search.py --json OUT.json              # n = 1e4 .. 1e7

For every (bits, n, codes, k): our default index (bucket <= 16 bits, MIH above) — batch q/s over all queries,
p50/p99 latency of single-query calls, build time, bytes per item — and, on one thread each in process CPU time
(numba and FAISS pinned to one thread; process_time counts every thread of the process, and other processes on a
shared machine cannot inflate it; ``cpu_clock_check`` records, per row, one call timed by process, thread and wall
clocks: process <= wall shows the pinning held, process - thread is the work numba did on a worker thread), our q/s
against FAISS IndexBinaryFlat and against the fastest exact FAISS configuration: IndexBinaryHash (b-bit prefix) and
IndexBinaryMultiHash (nhash x b) each at the smallest nflip whose results have the brute-force distance multiset on
the sample queries. ``exact`` compares our distances and ids with a numpy brute force on a sample of queries (same
distance lists; ids really are at those distances; ties follow insertion order). At 16 bits on random codes,
``memory_limit`` estimates the fastest any bucket-table search could be (see memory_limit_16). A float contrast row
times cosine top-k over 512-d float32 vectors (numpy and FAISS IndexFlatIP).

Two-stage rows (issue 17; ``--two-stage-1e7`` adds 10^7 items, ``--two-stage-only`` skips the rest): 16-bit codes
that are the signs of 16-d relaxed outputs (tanh of Gaussian vectors; clustered: noisy copies of centres), an int8
payload of those outputs (16 bytes per item), ``mcmfh.index.rerank.two_stage_search`` over the default (bucket)
index with budget ``oversample * k``: batch q/s, p50/p99 of single-query calls, one-thread q/s in process CPU time,
bytes per item (index + payload). ``exact``: same results as the same two stages over a brute-force FlatIndex on the
sample queries; ``recall``: overlap of the top k with the exhaustive float32 cosine top k on the relaxed outputs.
FAISS cannot compose ``IndexRefineFlat`` with binary indexes (``IndexBinary*`` is another class hierarchy; its
constructor refuses them), so the FAISS side is (a) ``IndexRefineFlat(IndexLSH(16, 16))`` — native FAISS two-stage
whose base stores the same sign bits and scans them flat (brute-force Hamming), re-scored with float32 vectors
(``k_factor = oversample``) — and (b) ``IndexBinaryHash`` (smallest nflip exact for ``oversample * k`` candidates on
the sample) or ``IndexBinaryFlat`` candidates, the same count, re-scored in numpy with float32 vectors as
IndexRefineFlat does. FAISS bytes per item: code + 4 x 16 float32 (index overheads not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh import __version__
from mcmfh.index import FlatIndex, make_index
from mcmfh.index.codes import hamming_matrix
from mcmfh.index.payload import make_codec
from mcmfh.index.rerank import candidate_budget, two_stage_search


@dataclass
class Config:
    bits: tuple[int, ...] = (16, 32, 64)
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000, 10_000_000)
    ks: tuple[int, ...] = (1, 10, 100)
    codes: tuple[str, ...] = ("random", "clustered")
    queries: int = 1000
    latency_queries: int = 200  # single-query calls timed for p50/p99
    faiss_queries: int = 1000  # FAISS configurations are timed on up to this many queries ...
    faiss_budget_s: float = 1.0  # ... and fewer when one call would take longer than this
    exact_queries: int = 20  # queries checked against the numpy brute force
    repeats: int = 3  # our batch search is timed this many times, the best counts
    faiss_repeats: int = 2
    centres: int = 100  # clustered codes: items are noisy copies of this many centres
    flip: float = 0.06  # ... each bit flipped with this probability
    float_dim: int = 512
    float_n: int = 1_000_000
    float_queries: int = 20
    hash_bits: tuple[int, ...] = (16, 20)  # IndexBinaryHash prefix lengths tried
    multihash: tuple[tuple[int, int], ...] = ((2, 16), (4, 16), (3, 20), (4, 8), (8, 8))  # (nhash, b) tried
    nflip_stop: float = 2.0  # stop raising nflip once a query costs this many flat scans
    seed: int = 0
    two_stage_sizes: tuple[int, ...] = (1_000_000,)  # --two-stage-1e7 adds 10_000_000
    two_stage_ks: tuple[int, ...] = (10, 100)
    two_stage_dim: int = 16  # relaxed outputs = code bits; int8 payload = 16 bytes per item
    two_stage_noise: float = 0.35  # clustered relaxed outputs: centre + this much Gaussian noise, before tanh
    oversample: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)


QUICK = Config(sizes=(1_000_000,), ks=(100,), codes=("random",))  # the done-when rows of issue 13


def make_codes(kind: str, n: int, bits: int, cfg: Config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(database, queries) packed codes; clustered queries come from the same centres as the data."""
    nbytes = bits // 8
    if kind == "random":
        return rng.integers(0, 256, (n, nbytes), dtype=np.uint8), rng.integers(0, 256, (cfg.queries, nbytes), np.uint8)
    centres = rng.integers(0, 256, (cfg.centres, nbytes), dtype=np.uint8)

    def noisy(m: int) -> np.ndarray:
        out = centres[rng.integers(0, cfg.centres, m)]
        for start in range(0, m, 1_000_000):  # bounded memory for the bool noise
            stop = min(m, start + 1_000_000)
            flips = np.packbits(rng.random((stop - start, bits)) < cfg.flip, axis=1, bitorder="little")
            out[start:stop] ^= flips
        return out

    return noisy(n), noisy(cfg.queries)


class BruteForce:
    """Numpy reference for a sample of queries: the full distance matrix and its stable order, computed once."""

    def __init__(self, db: np.ndarray, q: np.ndarray) -> None:
        self.h = hamming_matrix(q, db).astype(np.uint8)  # <= 255 for <= 255 bits; uint8 sorts by radix
        self.order = np.argsort(self.h, axis=1, kind="stable")

    def exact(self, dist: np.ndarray, ids: np.ndarray, k: int) -> bool:
        """Distances equal the brute-force k smallest; each id is at its distance; ties in insertion order."""
        order = self.order[:, :k]
        ref = np.take_along_axis(self.h, order, 1).astype(np.int32)
        m = order.shape[1]
        if not np.array_equal(dist[:, :m], ref):
            return False
        if not np.array_equal(np.take_along_axis(self.h, ids[:, :m], 1), ref):
            return False
        return bool(np.array_equal(ids[:, :m], order))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    import faiss
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


def timed(fn: Any, *args: Any, clock: Any = time.perf_counter) -> tuple[float, Any]:
    t = clock()
    out = fn(*args)
    return clock() - t, out


def best_of(repeats: int, fn: Any, *args: Any, clock: Any = time.perf_counter) -> tuple[float, Any]:
    """The fastest of ``repeats`` runs (as timeit advises: slower runs measure interference, not the code)."""
    runs = [timed(fn, *args, clock=clock) for _ in range(repeats)]
    return min(r[0] for r in runs), runs[0][1]


# One-thread figures use process CPU time: it counts every thread of this process (a numba or OpenMP worker that
# ran part of the work is not missed, as thread_time would miss it) and not other processes on a shared machine.
CPU_CLOCK = time.process_time


def clock_check(fn: Any, *args: Any) -> dict[str, float]:
    """One call timed by three clocks at once, inside ``one_thread``: process CPU time must not exceed wall time
    (more would mean a second thread really ran: the pinning failed), and process CPU time minus the calling
    thread's is the work done on other threads (a numba or OpenMP worker), which thread_time would have missed."""
    w, p, t = time.perf_counter(), time.process_time(), time.thread_time()
    fn(*args)
    t, p, w = time.thread_time() - t, time.process_time() - p, time.perf_counter() - w
    return {"wall_s": w, "process_s": p, "thread_s": t, "other_threads_s": p - t, "process_per_wall": p / w,
            "one_thread": p <= 1.05 * w + 1e-3}  # fmt: skip


def faiss_candidates(bits: int, cfg: Config) -> Iterator[tuple[str, Any]]:
    """Every FAISS binary index that can be exact here, each with the nflip values to try, smallest first:
    IndexBinaryFlat; IndexBinaryHash on a b-bit prefix; IndexBinaryMultiHash with nhash tables of b bits."""
    import faiss

    yield "Flat", lambda: faiss.IndexBinaryFlat(bits)
    for b in cfg.hash_bits:
        if b <= bits:
            yield f"Hash(b={b})", lambda b=b: faiss.IndexBinaryHash(bits, b)
    for nhash, b in cfg.multihash:
        if nhash * b <= bits and nhash > 1:
            yield f"MultiHash({nhash}x{b})", lambda nhash=nhash, b=b: faiss.IndexBinaryMultiHash(bits, nhash, b)


def distances_exact(dist: np.ndarray, brute: BruteForce, k: int) -> bool:
    """FAISS returns each query's k smallest distances sorted: the multiset must equal brute force's."""
    ref = np.take_along_axis(brute.h, brute.order[:, :k], 1).astype(np.int64)
    return bool(np.array_equal(dist[:, : ref.shape[1]].astype(np.int64), ref))


def fastest_faiss(
    db: np.ndarray, q: np.ndarray, k: int, brute: BruteForce, built: dict[str, Any], cfg: Config
) -> list[dict[str, Any]]:
    """Per FAISS index: the smallest nflip that is exact on the sample, timed on one thread in CPU time.

    nflip grows until the sample is exact or one query costs more than ``nflip_stop`` times the flat scan (a slower
    exact setting cannot be the fastest). Exactness is checked on ``exact_queries`` queries, not proved."""
    bits = db.shape[1] * 8
    out: list[dict[str, Any]] = []
    flat_per_q = None
    nq = len(brute.h)
    for name, make in faiss_candidates(bits, cfg):
        if name not in built:
            index = make()
            build_s, _ = timed(index.add, db)
            built[name] = (index, build_s)
        index, build_s = built[name]
        b = getattr(index, "b", 0)
        flips: list[int | None] = [None] if name == "Flat" else list(range(0, b + 1))
        for nflip in flips:
            if nflip is not None:
                index.nflip = nflip
            with one_thread():
                probe_s, (fd, _) = timed(index.search, q[:nq], k, clock=CPU_CLOCK)
            per_q = max(probe_s / nq, 1e-9)
            if distances_exact(fd, brute, k):
                nf = int(min(cfg.faiss_queries, len(q), max(nq, cfg.faiss_budget_s / per_q)))  # never past q
                with one_thread():
                    cpu_s, _ = best_of(cfg.faiss_repeats, index.search, q[:nf], k, clock=CPU_CLOCK)
                row = {"config": name if nflip is None else f"{name} nflip={nflip}", "cpu_qps_1t": nf / cpu_s,
                       "queries": nf, "build_s": build_s}  # fmt: skip
                if name == "Flat":
                    flat_per_q = cpu_s / nf
                out.append(row)
                break
            if flat_per_q is not None and per_q > cfg.nflip_stop * flat_per_q:
                break
    return out


def bench_one(bits: int, n: int, kind: str, cfg: Config, rng: np.random.Generator) -> list[dict[str, Any]]:
    db, q = make_codes(kind, n, bits, cfg, rng)
    warm = make_index(bits)  # load the jitted kernels from numba's cache before timing the build
    warm.add(db[:100])
    warm.search(q[:1], 1)
    index = make_index(bits)
    build_s, _ = timed(lambda: (index.add(db), index.search(q[:1], 1)))  # MIH builds its tables lazily
    bytes_per_item = index.nbytes() / n
    brute = BruteForce(db, q[: cfg.exact_queries])
    built: dict[str, Any] = {}
    rows = []
    for k in cfg.ks:
        index.search(q[:2], k)  # warm up (numba cache load, first-touch of buffers)
        search_s, (dist, ids) = best_of(cfg.repeats, index.search, q, k)
        lat = np.array([timed(index.search, q[i : i + 1], k)[0] for i in range(cfg.latency_queries)]) * 1e3
        exact = brute.exact(dist[: cfg.exact_queries], ids[: cfg.exact_queries], k)
        with one_thread():
            search1_s, _ = best_of(cfg.repeats, index.search, q, k, clock=CPU_CLOCK)
            check = clock_check(index.search, q, k)
        peers = fastest_faiss(db, q, k, brute, built, cfg)
        flat = next(p for p in peers if p["config"] == "Flat")
        best = max(peers, key=lambda p: p["cpu_qps_1t"])
        ours = len(q) / search1_s
        row = {
            "bits": bits,
            "n": n,
            "k": k,
            "codes": kind,
            "index": index.kind,
            "qps": len(q) / search_s,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "cpu_qps_1t": ours,
            "faiss_flat_cpu_qps_1t": flat["cpu_qps_1t"],
            "faiss_best": best["config"],
            "faiss_best_cpu_qps_1t": best["cpu_qps_1t"],
            "ratio_vs_faiss_best_cpu_1t": ours / best["cpu_qps_1t"],
            "ratio_vs_faiss_flat_cpu_1t": ours / flat["cpu_qps_1t"],
            "faiss_exact_configs": peers,
            "exact": bool(exact),
            "cpu_clock_check": check,
            "bytes_per_item": bytes_per_item,
            "faiss_bytes_per_item": bits / 8,
            "build_s": build_s,
        }
        if bits == 16 and kind == "random":
            row["memory_limit"] = memory_limit_16(db, q[: cfg.exact_queries * 10], k, index.nbytes())
            row["ratio_vs_memory_limit"] = row["memory_limit"]["qps"] / ours
        rows.append(row)
        print(fmt_row(row), flush=True)
    return rows


def memory_limit_16(db: np.ndarray, q: np.ndarray, k: int, index_bytes: int) -> dict[str, Any]:
    """A lower bound on one-thread time per query for any bucket-table search over these 16-bit codes.

    An exact top-k must at least read the offsets of every bucket at distance < the k-th distance (plus enough of
    the k-th level) and the positions stored in them: we count the distinct 64-byte lines that the buckets a query
    needs occupy (offsets: int32 per bucket; positions: int32 per item, in bucket order). Those loads are
    independent (within a level, and across the queries of a batch, which out-of-order execution overlaps), so
    the bound is lines x the measured cost of one independent random line load from an array of the index's size
    (numba gather). The dependent-load latency (pointer chase) is reported too: a single query, which cannot
    overlap with others, needs at least 2 of them per level (offsets, then positions). A real search also merges,
    sorts and writes k results, which this bound leaves out."""
    keys = db[:, 0].astype(np.int64) | (db[:, 1].astype(np.int64) << 8)
    counts = np.bincount(keys, minlength=1 << 16)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    qk = q[:, 0].astype(np.int64) | (q[:, 1].astype(np.int64) << 8)
    masks = np.arange(1 << 16)
    pop = np.unpackbits(masks.astype("<u2").view(np.uint8).reshape(-1, 2), axis=1).sum(1)
    lines, levels = [], []
    for key in qk:
        got, lv, off_lines, pos_lines = 0, 0, set(), set()
        for d in range(17):
            buckets = key ^ masks[pop == d]
            for b in buckets:
                off_lines.add(int(b) * 4 // 64)
                if counts[b]:
                    pos_lines.update(range(int(offsets[b]) * 4 // 64, (int(offsets[b + 1]) * 4 - 1) // 64 + 1))
            got += int(counts[buckets].sum())
            lv += 1
            if got >= k:
                break
        lines.append(len(off_lines) + len(pos_lines))
        levels.append(lv)
    gather_ns, chase_ns = load_costs(max(index_bytes, 1 << 20))
    per_q_s = np.mean(lines) * gather_ns * 1e-9
    return {"lines_per_query": float(np.mean(lines)), "levels_per_query": float(np.mean(levels)),
            "independent_line_ns": gather_ns, "dependent_load_ns": chase_ns, "qps": 1 / per_q_s,
            "single_query_latency_bound_us": 2 * np.mean(levels) * chase_ns / 1e3}  # fmt: skip


def load_costs(nbytes: int) -> tuple[float, float]:
    """ns per independent random 64-byte-line load and per dependent load, from an array of ``nbytes``."""
    from numba import njit

    @njit(cache=False)
    def gather(arr: np.ndarray, idx: np.ndarray) -> int:
        s = 0
        for i in idx:
            s += arr[i]
        return s

    @njit(cache=False)
    def chase(nxt: np.ndarray, steps: int) -> int:
        p = 0
        for _ in range(steps):
            p = nxt[p]
        return p

    n = nbytes // 4
    stride = 16  # int32s per 64-byte line
    rng = np.random.default_rng(1)
    arr = np.zeros(n, np.int32)
    idx = rng.integers(0, n // stride, 2_000_000) * stride
    perm = rng.permutation(n // stride) * stride
    nxt = np.zeros(n, np.int64)
    nxt[perm] = np.roll(perm, -1)
    gather(arr, idx[:10])
    chase(nxt, 10)
    g, _ = best_of(3, gather, arr, idx, clock=CPU_CLOCK)
    steps = 1_000_000
    c, _ = best_of(3, chase, nxt, steps, clock=CPU_CLOCK)
    return g / len(idx) * 1e9, c / steps * 1e9


def bench_float(cfg: Config, rng: np.random.Generator) -> dict[str, Any]:
    """Cosine top-100 over float32 vectors: the memory/speed contrast to binary codes."""
    import faiss

    x = rng.standard_normal((cfg.float_n, cfg.float_dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, cfg.float_n, cfg.float_queries)] + 0.1 * rng.standard_normal(
        (cfg.float_queries, cfg.float_dim), dtype=np.float32
    )
    k = 100

    def numpy_topk() -> np.ndarray:
        out = []
        for start in range(0, len(q), 25):  # bounded (25, n) score blocks
            s = q[start : start + 25] @ x.T
            out.append(np.argpartition(-s, k, axis=1)[:, :k])
        return np.concatenate(out)

    np_s, _ = timed(numpy_topk)
    fi = faiss.IndexFlatIP(cfg.float_dim)
    fi.add(x)
    f_s, _ = timed(fi.search, q, k)
    return {
        "kind": "float_cosine",
        "dim": cfg.float_dim,
        "n": cfg.float_n,
        "k": k,
        "numpy_qps": len(q) / np_s,
        "faiss_flat_ip_qps": len(q) / f_s,
        "bytes_per_item": cfg.float_dim * 4,
    }


def make_relaxed(kind: str, n: int, cfg: Config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(database, queries) float32 relaxed outputs in (-1, 1); their signs are the codes."""
    d = cfg.two_stage_dim
    if kind == "random":
        db = np.empty((n, d), np.float32)
        for start in range(0, n, 1_000_000):  # bounded float64 temporaries
            stop = min(n, start + 1_000_000)
            db[start:stop] = np.tanh(rng.standard_normal((stop - start, d)))
        return db, np.tanh(rng.standard_normal((cfg.queries, d))).astype(np.float32)
    centres = rng.standard_normal((cfg.centres, d))

    def noisy(m: int) -> np.ndarray:
        out = np.empty((m, d), np.float32)
        for start in range(0, m, 1_000_000):
            stop = min(m, start + 1_000_000)
            c = centres[rng.integers(0, cfg.centres, stop - start)]
            out[start:stop] = np.tanh(c + cfg.two_stage_noise * rng.standard_normal((stop - start, d)))
        return out

    return noisy(n), noisy(cfg.queries)


def sign_codes(x: np.ndarray) -> np.ndarray:
    return np.packbits(x > 0, axis=1, bitorder="little")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def float_rescore(ids: np.ndarray, xn: np.ndarray, qn: np.ndarray, k: int) -> np.ndarray:
    """FAISS-side stage 2 (what IndexRefineFlat does): float32 cosine of the candidates' unit vectors, top k ids."""
    valid = ids >= 0
    s = np.einsum("qcd,qd->qc", xn[np.where(valid, ids, 0)], qn)
    s[~valid] = -np.inf
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, top, axis=1)


def exhaustive_topk(xn: np.ndarray, qn: np.ndarray, k: int) -> list[set[int]]:
    """The top k by float32 cosine over every item, per sample query (the ceiling two-stage approximates)."""
    out = []
    for q in qn:
        s = xn @ q
        out.append(set(np.argpartition(-s, k)[:k].tolist()))
    return out


def recall(ids: np.ndarray, truth: list[set[int]], k: int) -> float:
    return float(np.mean([len(truth[i] & set(ids[i, :k].tolist())) / k for i in range(len(truth))]))


def latencies_ms(fn: Any, n: int) -> np.ndarray:
    """Wall-clock ms of ``fn(i)`` for i < n (single-query calls)."""
    return np.array([timed(fn, i)[0] for i in range(n)]) * 1e3


def budget_queries(per_q_s: float, cfg: Config, most: int) -> int:
    """Queries to time a slow configuration on: about ``faiss_budget_s`` of work, at least 5, at most ``most``."""
    return int(min(most, max(5, cfg.faiss_budget_s / max(per_q_s, 1e-9))))


def bench_two_stage(n: int, kind: str, cfg: Config, rng: np.random.Generator) -> list[dict[str, Any]]:
    import faiss

    d = cfg.two_stage_dim
    vec, qv = make_relaxed(kind, n, cfg, rng)
    db, qc = sign_codes(vec), sign_codes(qv)
    codec = make_codec("int8", d)
    payload = codec.encode(vec)
    index = make_index(8 * db.shape[1])
    build_s, _ = timed(lambda: (index.add(db), index.search(qc[:1], 1)))
    flat = FlatIndex(8 * db.shape[1])
    flat.add(db)
    xn, qn = unit(vec), unit(qv)
    ne = cfg.exact_queries
    brute = BruteForce(db, qc[:ne])
    refine = faiss.IndexRefineFlat(faiss.IndexLSH(d, 8 * db.shape[1], False, False))
    refine_build_s, _ = timed(refine.add, xn)  # unit vectors: FAISS's L2 order is the cosine order
    bhash = faiss.IndexBinaryHash(8 * db.shape[1], 8 * db.shape[1])
    bflat = faiss.IndexBinaryFlat(8 * db.shape[1])
    bhash.add(db)
    bflat.add(db)
    rows = []
    for k in cfg.two_stage_ks:
        cap = candidate_budget(k, cfg.oversample)
        truth = exhaustive_topk(xn, qn[:ne], k)

        def ours(i: int, j: int | None = None, k: int = k) -> Any:
            sl = slice(i, i + 1) if j is None else slice(i, j)
            return two_stage_search(index, qc[sl], qv[sl], payload, codec, k, cfg.oversample)

        ours(0)  # warm up the jitted kernels
        batch_s, res = best_of(cfg.repeats, ours, 0, len(qc))
        lat = latencies_ms(ours, cfg.latency_queries)
        with one_thread():
            cpu_s, _ = best_of(cfg.repeats, ours, 0, len(qc), clock=CPU_CLOCK)
        ref = two_stage_search(flat, qc[:ne], qv[:ne], payload, codec, k, cfg.oversample)
        exact = bool(np.array_equal(res.ids[:ne], ref.ids) and np.array_equal(res.similarities[:ne], ref.similarities))
        row: dict[str, Any] = {
            "kind": "two_stage", "bits": 8 * db.shape[1], "n": n, "k": k, "codes": kind, "index": index.kind,
            "payload": "int8", "oversample": cfg.oversample, "budget": cap,
            "qps": len(qc) / batch_s, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "cpu_qps_1t": len(qc) / cpu_s, "mean_candidates": float(res.candidates.mean()),
            "truncated_queries": float(res.truncated.mean()), "exact": exact,
            "recall_vs_exhaustive_float": recall(res.ids, truth, k),
            "bytes_per_item": index.nbytes() / n + codec.bytes_per_item, "payload_bytes_per_item": codec.bytes_per_item,
            "build_s": build_s,
        }  # fmt: skip
        # One-stage on the same index and queries, for the cost of stage 2.
        one_lat = latencies_ms(lambda i, k=k: index.search(qc[i : i + 1], k), cfg.latency_queries)
        row["one_stage_p50_ms"] = float(np.percentile(one_lat, 50))
        faiss_rows = []

        # (a) native FAISS two-stage: IndexRefineFlat over the same sign bits (IndexLSH, flat Hamming scan).
        refine.k_factor = float(cfg.oversample)
        probe_s, _ = timed(refine.search, qn[:ne], k)
        nf = budget_queries(probe_s / ne, cfg, min(cfg.faiss_queries, len(qc)))
        _, fi = refine.search(qn[:ne], k)
        name = f"IndexRefineFlat(IndexLSH) k_factor={cfg.oversample:g}"
        faiss_rows.append(
            faiss_row(name, cfg, nf, lambda a, b, k=k: refine.search(qn[a:b], k), fi, truth, k, d, refine_build_s)
        )

        # (b) binary-index candidates (same budget) + float32 re-score in numpy.
        nflip = next(
            (f for f in range(0, 8 * db.shape[1] + 1)
             if distances_exact(_set_nflip(bhash, f).search(qc[:ne], cap)[0], brute, cap)),
            None,
        )  # fmt: skip
        for name, bindex in ((f"IndexBinaryHash(b=16) nflip={nflip}", bhash), ("IndexBinaryFlat", bflat)):
            if name.startswith("IndexBinaryHash") and nflip is None:
                continue

            def search(a: int, b: int, bindex: Any = bindex, cap: int = cap, k: int = k) -> np.ndarray:
                _, cand = bindex.search(qc[a:b], cap)
                return float_rescore(cand, xn, qn[a:b], k)

            probe_s, _ = timed(search, 0, ne)
            nf = budget_queries(probe_s / ne, cfg, min(cfg.faiss_queries, len(qc)))
            faiss_rows.append(faiss_row(f"{name} + numpy float32 re-score", cfg, nf, search, search(0, ne), truth,
                                        k, d, 0.0))  # fmt: skip
        row["faiss"] = faiss_rows
        best = max(faiss_rows, key=lambda r: r["cpu_qps_1t"])
        row["faiss_best"] = best["config"]
        row["ratio_vs_faiss_best_cpu_1t"] = row["cpu_qps_1t"] / best["cpu_qps_1t"]
        rows.append(row)
        print(fmt_two_stage(row), flush=True)
    return rows


def _set_nflip(index: Any, nflip: int) -> Any:
    index.nflip = nflip
    return index


def faiss_row(
    config: str,
    cfg: Config,
    nf: int,
    search: Any,
    sample_ids: np.ndarray,
    truth: list[set[int]],
    k: int,
    d: int,
    build_s: float,
) -> dict[str, Any]:
    """q/s (wall and one thread in CPU time) over ``nf`` queries, and single-query latency, of a FAISS two-stage."""
    wall_s, _ = best_of(cfg.faiss_repeats, search, 0, nf)
    with one_thread():
        cpu_s, _ = best_of(cfg.faiss_repeats, search, 0, nf, clock=CPU_CLOCK)
    lat = latencies_ms(lambda i: search(i, i + 1), min(cfg.latency_queries, nf))
    return {
        "config": config, "queries": nf, "qps": nf / wall_s, "cpu_qps_1t": nf / cpu_s,
        "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
        "recall_vs_exhaustive_float": recall(np.asarray(sample_ids), truth, k),
        "bytes_per_item": 2 + 4 * d, "build_s": build_s,
    }  # fmt: skip


TWO_STAGE_HEADER = (
    f"{'n':>9} {'codes':>9} {'k':>4} {'system':>58} {'q/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'1t q/s':>8} "
    f"{'recall':>6} {'B/item':>6} {'cands':>6} {'trunc':>5} {'exact':>5}"
)


def fmt_two_stage(r: dict[str, Any]) -> str:
    ours = f"mcmfh two-stage ({r['index']} + int8, oversample {r['oversample']:g})"
    ratio = r["ratio_vs_faiss_best_cpu_1t"]
    note = f"(one-stage p50 {r['one_stage_p50_ms']:.3f} ms; mcmfh / fastest FAISS 1t: {ratio:.1f}x)"
    lines = [
        f"{r['n']:>9} {r['codes']:>9} {r['k']:>4} {ours:>58} "
        f"{r['qps']:>9.0f} {r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f} {r['cpu_qps_1t']:>8.0f} "
        f"{r['recall_vs_exhaustive_float']:>6.3f} {r['bytes_per_item']:>6.2f} {r['mean_candidates']:>6.0f} "
        f"{r['truncated_queries']:>5.2f} {r['exact']!s:>5}"
    ]
    for f in r["faiss"]:
        lines.append(
            f"{'':>9} {'':>9} {'':>4} {'FAISS ' + f['config']:>58} {f['qps']:>9.0f} {f['p50_ms']:>7.3f} "
            f"{f['p99_ms']:>7.3f} {f['cpu_qps_1t']:>8.0f} {f['recall_vs_exhaustive_float']:>6.3f} "
            f"{f['bytes_per_item']:>6.2f} {r['budget']:>6} {'':>5} {'':>5}"
        )
    lines.append(f"{'':>24} {note}")
    return "\n".join(lines)


HEADER = (
    f"{'bits':>4} {'n':>9} {'codes':>9} {'k':>4} {'index':>6} {'q/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'1t q/s':>9} {'FAISS flat':>10} {'fastest exact FAISS':>28} {'1t q/s':>9} {'ratio':>7} {'vs flat':>8} "
    f"{'exact':>5} {'B/item':>6} {'build s':>7}"
)


def fmt_row(r: dict[str, Any]) -> str:
    return (
        f"{r['bits']:>4} {r['n']:>9} {r['codes']:>9} {r['k']:>4} {r['index']:>6} {r['qps']:>10.0f} "
        f"{r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f} {r['cpu_qps_1t']:>9.0f} {r['faiss_flat_cpu_qps_1t']:>10.0f} "
        f"{r['faiss_best']:>28} {r['faiss_best_cpu_qps_1t']:>9.0f} {r['ratio_vs_faiss_best_cpu_1t']:>6.1f}x "
        f"{r['ratio_vs_faiss_flat_cpu_1t']:>7.1f}x {r['exact']!s:>5} {r['bytes_per_item']:>6.2f} {r['build_s']:>7.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n = 1e6, k = 100, random codes")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--bits", type=int, nargs="+")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--ks", type=int, nargs="+")
    ap.add_argument("--codes", nargs="+", choices=["random", "clustered"])
    ap.add_argument("--queries", type=int)
    ap.add_argument("--no-float", action="store_true", help="skip the float cosine contrast")
    ap.add_argument("--no-two-stage", action="store_true", help="skip the two-stage rows")
    ap.add_argument("--two-stage-only", action="store_true", help="only the two-stage rows")
    ap.add_argument("--two-stage-1e7", action="store_true", help="two-stage rows at 1e7 items too (several GB)")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    for name in ("bits", "sizes", "ks", "codes"):
        if getattr(args, name):
            setattr(cfg, name, tuple(getattr(args, name)))
    if args.queries:
        cfg.queries = args.queries
    if args.two_stage_1e7:
        cfg.two_stage_sizes = (*cfg.two_stage_sizes, 10_000_000)
    if args.no_two_stage:
        cfg.two_stage_sizes = ()

    import faiss
    import numba

    threads = numba.get_num_threads()
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    print(f"mcmfh {__version__}, faiss {faiss.__version__}, {threads} threads, {cfg.queries} queries", flush=True)
    rows = []
    if not args.two_stage_only:
        print(HEADER, flush=True)
        for n in cfg.sizes:
            for bits in cfg.bits:
                for kind in cfg.codes:
                    rows.extend(bench_one(bits, n, kind, cfg, rng))
    two_stage = []
    if cfg.two_stage_sizes:
        print(TWO_STAGE_HEADER, flush=True)
        for n in cfg.two_stage_sizes:
            for kind in cfg.codes:
                two_stage.extend(bench_two_stage(n, kind, cfg, rng))
    float_row = None if args.no_float or args.two_stage_only else bench_float(cfg, rng)
    if float_row:
        print(
            f"float32 {cfg.float_dim}-d cosine, n={cfg.float_n}, k=100: numpy {float_row['numpy_qps']:.0f} q/s, "
            f"FAISS IndexFlatIP {float_row['faiss_flat_ip_qps']:.0f} q/s, {float_row['bytes_per_item']} B/item"
        )
    for r in rows:
        if "memory_limit" in r:
            m = r["memory_limit"]
            print(f"16-bit k={r['k']}: memory limit ~{m['qps']:.0f} q/s ({m['lines_per_query']:.0f} random lines x "
                  f"{m['independent_line_ns']:.1f} ns); mcmfh 1t {r['cpu_qps_1t']:.0f} q/s = limit / "
                  f"{r['ratio_vs_memory_limit']:.1f}; single-query latency bound {m['levels_per_query']:.1f} levels "
                  f"x 2 x {m['dependent_load_ns']:.0f} ns = {m['single_query_latency_bound_us']:.2f} us, "
                  f"measured p50 {r['p50_ms'] * 1e3:.1f} us")  # fmt: skip
    total = time.perf_counter() - t0
    checks = [r["cpu_clock_check"] for r in rows]
    if checks:
        print(f"one-thread clock check: process CPU <= wall in {sum(c['one_thread'] for c in checks)}/{len(checks)} "
              f"rows; CPU time on threads other than the caller's: up to "
              f"{max(c['other_threads_s'] / max(c['process_s'], 1e-9) for c in checks):.0%} of the process's "
              f"(counted by process_time, missed by thread_time)")  # fmt: skip
    print(f"total {total:.0f} s; all exact: {all(r['exact'] for r in rows + two_stage)}")
    if args.json:
        out = {
            "rows": rows,
            "two_stage": two_stage,
            "float": float_row,
            "config": asdict(cfg),
            "env": {
                "mcmfh": __version__,
                "faiss": faiss.__version__,
                "numba": numba.__version__,
                "numpy": np.__version__,
                "threads": threads,
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "load_avg": os.getloadavg(),
            },
            "total_s": total,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if all(r["exact"] for r in rows + two_stage) else 1


if __name__ == "__main__":
    sys.exit(main())
