"""Scale-out benchmark: Milvus (BIN_FLAT, BIN_IVF_FLAT) vs the local index vs FAISS IndexBinaryFlat, and Ray vs
in-process encoding. Needs the scale venv (``pip install -e '.[offline,dev,scale]'``).

    python benchmarks/scale.py --quick            # 10^5 codes, 200 encode items
    python benchmarks/scale.py                    # 10^6 codes, 1000 encode items
    python benchmarks/scale.py --milvus-uri http://host:19530   # an existing Milvus instead of the embedded one

Queries are database codes with ``--flip`` random bits flipped (a near-duplicate lookup, as in retrieval).
``exact`` = every query's k distances equal the brute-force reference (FlatIndex); ``recall`` = fraction of the
reference top-k ids found (ties make ids ambiguous, so exact distances are the criterion). Milvus runs in this
process's machine (embedded server), so its numbers include the gRPC round trip a real deployment also pays.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.index import FlatIndex, make_index
from mcmfh.items import Item


@dataclass
class SearchRow:
    backend: str
    n: int
    bits: int
    k: int
    queries: int
    build_s: float
    qps: float
    exact: bool
    recall: float


@dataclass
class EncodeRow:
    runner: str
    encoder: str
    items: int
    workers: int
    seconds: float
    items_per_s: float
    max_abs_diff: float  # vs the in-process embeddings


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _row(
    name: str, db: np.ndarray, q: np.ndarray, k: int, bits: int, build_s: float, search: Any, ref: Any
) -> SearchRow:
    search(q[:2], k)  # warm-up: JIT compilation and connection set-up are not search time
    (d, i), s = _timed(lambda: search(q, k))
    rd, ri = ref
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(i, ri, strict=True)]))
    row = SearchRow(
        name,
        len(db),
        bits,
        k,
        len(q),
        round(build_s, 2),
        round(len(q) / s, 1),
        bool(np.array_equal(d, rd)),
        round(recall, 4),
    )
    print(row, flush=True)  # as measured: a long run that is cut short still leaves its rows in the log
    return row


def bench_search(args: argparse.Namespace) -> list[SearchRow]:
    rng = np.random.default_rng(args.seed)
    n, bits, k = args.n, args.bits, args.k
    db = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    picks = db[rng.integers(0, n, args.queries)]
    flips = np.zeros((args.queries, bits), bool)
    for row in flips:
        row[rng.choice(bits, args.flip, replace=False)] = True
    q = picks ^ np.packbits(flips, axis=1, bitorder="little")
    rows = []
    flat = FlatIndex(bits)
    _, b = _timed(lambda: flat.add(db))
    ref, _ = _timed(lambda: flat.search(q, k))
    rows.append(_row("local flat", db, q, k, bits, b, flat.search, ref))
    local = make_index(bits)
    _, b = _timed(lambda: local.add(db))
    rows.append(_row(f"local {local.kind}", db, q, k, bits, b, local.search, ref))
    try:
        import faiss

        fx = faiss.IndexBinaryFlat(bits)
        _, b = _timed(lambda: fx.add(db))

        def faiss_search(qq: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
            return fx.search(qq, kk)

        rows.append(_row("faiss IndexBinaryFlat", db, q, k, bits, b, faiss_search, ref))
    except ImportError:
        print("faiss not installed: no FAISS row")
    if args.postgres_dsn:
        rows.append(bench_postgres(args, db, q, flat))
    if not args.skip_milvus:
        rows += bench_milvus(args, db, q, ref)
    return rows


def bench_postgres(args: argparse.Namespace, db: np.ndarray, q: np.ndarray, flat: FlatIndex) -> SearchRow:
    """SQL ``bit_count(code # q)`` k-NN (a sequential scan) over ``--postgres-n`` items; exact vs FlatIndex."""
    from mcmfh.index.postgres import PostgresItemStore

    n = min(args.postgres_n, len(db))
    items = [Item(f"i{j}", None, "", source="bench") for j in range(n)]
    store = PostgresItemStore(args.postgres_dsn, args.bits)
    keys, b = _timed(lambda: store.add(db[:n], items, keys=np.arange(n)))
    sub = FlatIndex(args.bits)
    sub.add(db[:n])
    nq = min(len(q), args.milvus_queries)
    rd, ri = sub.search(q[:nq], args.k)

    def sql_knn(qq: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        hits = [store.search_hamming(c, args.bits, limit=kk) for c in qq]
        return (
            np.array([[h.distance for h in hs] for hs in hits]),
            np.array([[h.item.key for h in hs] for hs in hits]),
        )

    row = _row(f"postgres bit_count scan n={n}", db[:n], q[:nq], args.k, args.bits, b, sql_knn, (rd, ri))
    store.close()
    return row


def bench_milvus(args: argparse.Namespace, db: np.ndarray, q: np.ndarray, ref: Any) -> list[SearchRow]:
    from mcmfh.index.milvus import MilvusIndex

    server, uri = None, args.milvus_uri
    if uri is None:
        from milvus import default_server as server

        server.set_base_dir(tempfile.mkdtemp(prefix="mcmfh-milvus-bench-"))
        _, s = _timed(server.start)
        print(f"embedded Milvus started in {s:.1f} s")
        uri = f"http://127.0.0.1:{server.listen_port}"
    rows = []
    try:
        nlist = args.nlist or max(16, int(4 * np.sqrt(len(db))))
        for index_type in ("BIN_FLAT",) if args.no_ivf else ("BIN_FLAT", "BIN_IVF_FLAT"):
            idx = MilvusIndex(
                args.bits,
                uri=uri,
                collection=f"bench_{uuid.uuid4().hex[:8]}",
                index_type=index_type,
                nlist=nlist,
                nprobe=args.nprobe,
            )
            try:
                _, b = _timed(lambda idx=idx: (idx.add(db), idx.flush()))
                label = (
                    "milvus BIN_FLAT"
                    if index_type == "BIN_FLAT"
                    else f"milvus BIN_IVF_FLAT nlist={nlist} nprobe={args.nprobe}"
                )
                nq = min(len(q), args.milvus_queries)
                rows.append(_row(label, db, q[:nq], args.k, args.bits, b, idx.search, (ref[0][:nq], ref[1][:nq])))
            finally:
                idx.drop()
                idx.close()
    finally:
        if server is not None:
            server.stop()
    return rows


def bench_encode(args: argparse.Namespace) -> list[EncodeRow]:
    from PIL import Image

    from mcmfh.data.records import Dataset, LoadReport
    from mcmfh.distributed import RayChunkRunner
    from mcmfh.encode_features import EncodeOptions, run_encode
    from mcmfh.encoders import get_encoder
    from mcmfh.features import FeatureSet

    tmp = Path(tempfile.mkdtemp(prefix="mcmfh-encode-bench-"))
    rng = np.random.default_rng(args.seed)
    records = []
    for i in range(args.encode_n):
        path = tmp / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
        records.append(
            Item(f"r{i}", path, f"chest x-ray {i}: opacity in the {('left', 'right')[i % 2]} lobe", ("a",), "train")
        )
    ds = Dataset("bench", records, "bench", ["a"], LoadReport())
    enc = get_encoder(args.encoder)
    opts = EncodeOptions(batch_size=args.batch_size, chunk_size=args.chunk_size)
    local, s_local = _timed(lambda: run_encode(ds, enc, tmp / "local", opts))
    runner = RayChunkRunner(args.encoder, num_workers=args.ray_workers)
    import ray

    _, s_init = _timed(lambda: ray.init(num_cpus=args.ray_workers, include_dashboard=False, log_to_driver=False))
    print(f"local Ray started in {s_init:.1f} s (not counted below)")
    _, s_ray = _timed(lambda: run_encode(ds, enc, tmp / "ray", opts, chunk_runner=runner))
    ray.shutdown()
    a, b = FeatureSet.load(tmp / "local"), FeatureSet.load(tmp / "ray")
    diff = float(max(np.abs(a.image - b.image).max(), np.abs(a.text - b.text).max()))
    n = len(ds)
    return [
        EncodeRow("in-process", args.encoder, n, 1, round(s_local, 2), round(n / s_local, 1), 0.0),
        EncodeRow("ray local", args.encoder, n, args.ray_workers, round(s_ray, 2), round(n / s_ray, 1), diff),
    ]


def _table(rows: list[Any]) -> str:
    if not rows:
        return ""
    cols = list(asdict(rows[0]))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in asdict(r).values()) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10^5 codes and 200 encode items (default 10^6 and 1000)")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--milvus-queries", type=int, default=100, help="Milvus is slower; fewer queries keep it short")
    p.add_argument("--flip", type=int, default=6, help="bits flipped in a database code to make a query")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--nlist", type=int, default=None, help="BIN_IVF_FLAT clusters (default 4 sqrt(n))")
    p.add_argument("--no-ivf", action="store_true", help="skip BIN_IVF_FLAT (its k-means build is slow at 10^6)")
    p.add_argument("--milvus-uri", default=None, help="existing Milvus; default: start the embedded server")
    p.add_argument("--encoder", default="tiny", help="encoder for the Ray vs in-process comparison")
    p.add_argument("--encode-n", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--ray-workers", type=int, default=2)
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--skip-milvus", action="store_true")
    p.add_argument("--postgres-dsn", default=None, help="an empty PostgreSQL database to measure SQL Hamming k-NN in")
    p.add_argument("--postgres-n", type=int, default=100_000)
    p.add_argument("--skip-encode", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    args = p.parse_args()
    args.n = 10**5 if args.quick else 10**6
    args.encode_n = args.encode_n or (200 if args.quick else 1000)
    search = [] if args.skip_search else bench_search(args)
    encode = [] if args.skip_encode else bench_encode(args)
    print(_table(search))
    print()
    print(_table(encode))
    from mcmfh.io import atomic_write_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),  # other work on the machine slows every row alike; say how much there was
    }
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    atomic_write_json(
        args.out,
        {
            "config": config,
            "machine": machine,
            "search": [asdict(r) for r in search],
            "encode": [asdict(r) for r in encode],
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
