"""Exact Hamming search benchmark: mcmfh indexes against FAISS on the same codes, queries and threads.

    python benchmarks/search.py --quick --json OUT.json      # n = 1e6 only (a few minutes on 2 cores)
    python benchmarks/search.py --json OUT.json              # n = 1e4 .. 1e7

For every (bits, n, codes, k): our default index (bucket <= 16 bits, MIH above) — batch q/s over all queries,
p50/p99 latency of single-query calls, build time, bytes per item — and, on one thread each in process CPU time
(numba and FAISS pinned to one thread; process_time counts every thread of the process, and other processes on a
shared machine cannot inflate it), our q/s against FAISS IndexBinaryFlat and against the fastest exact FAISS
configuration: IndexBinaryHash (b-bit prefix) and IndexBinaryMultiHash (nhash x b) each at the smallest nflip whose
results have the brute-force distance multiset on the sample queries. ``exact`` compares our distances and ids with
a numpy brute force on a sample of queries (same distance lists; ids really are at those distances; ties follow
insertion order). At 16 bits on random codes, ``memory_limit`` estimates the fastest any bucket-table search could
be (see memory_limit_16). A float contrast row times cosine top-k over 512-d float32 vectors (numpy and FAISS
IndexFlatIP).
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
from mcmfh.index import make_index
from mcmfh.index.codes import hamming_matrix


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
    extra: dict[str, Any] = field(default_factory=dict)


QUICK = Config(sizes=(1_000_000,))


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
                nf = int(min(cfg.faiss_queries, max(nq, cfg.faiss_budget_s / per_q)))
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
    ap.add_argument("--quick", action="store_true", help="n = 1e6 only")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--bits", type=int, nargs="+")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--ks", type=int, nargs="+")
    ap.add_argument("--codes", nargs="+", choices=["random", "clustered"])
    ap.add_argument("--queries", type=int)
    ap.add_argument("--no-float", action="store_true", help="skip the float cosine contrast")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    for name in ("bits", "sizes", "ks", "codes"):
        if getattr(args, name):
            setattr(cfg, name, tuple(getattr(args, name)))
    if args.queries:
        cfg.queries = args.queries

    import faiss
    import numba

    threads = numba.get_num_threads()
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    print(f"mcmfh {__version__}, faiss {faiss.__version__}, {threads} threads, {cfg.queries} queries", flush=True)
    print(HEADER, flush=True)
    rows = []
    for n in cfg.sizes:
        for bits in cfg.bits:
            for kind in cfg.codes:
                rows.extend(bench_one(bits, n, kind, cfg, rng))
    float_row = None if args.no_float else bench_float(cfg, rng)
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
    print(f"total {total:.0f} s; all exact: {all(r['exact'] for r in rows)}")
    if args.json:
        out = {
            "rows": rows,
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
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
