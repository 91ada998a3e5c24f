"""What one ``add`` costs on a big archive: append-only segments against the old full rewrite, same machine, same run.

    python benchmarks/adds.py --json benchmarks/results/adds_1e7.json          # 10^7 items, 1,000 adds of 1 item
    python benchmarks/adds.py --n 100000 --adds 100 --json /tmp/adds.json      # a quick look

Builds a 16-bit ``ItemIndex`` (the local sub-index of an archive: codes, keys, SQLite metadata, manifest) of N random
codes in chunks, compacts it to one segment, then times ``--adds`` committed adds of ``--batch`` items each
(wall time of ``ItemIndex.add``: lock, new segment files, SQLite transaction, manifest rename, fsyncs, and any
segment merge). The old design rewrote every code and key and rebuilt the in-memory bucket table on each add; its
cost is measured by performing exactly those steps (``_files.write_arrays`` of N + batch codes and keys, and a bucket
index built over them) ``--old-reps`` times at the same N. What this does not show: the cost of encoding the new
items (``benchmarks/encode.py``), the one-time open of a big archive (reading and checksumming its files), and
removals, which still rebuild the in-memory table of each segment they touch.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mcmfh import __version__
from mcmfh.index import _files
from mcmfh.index.factory import make_index
from mcmfh.index.local_store import ItemIndex
from mcmfh.items import Item

CHUNK = 1_000_000  # items per build step: bounds the memory held by their metadata mappings


def build(folder: Path, n: int, bits: int, rng: np.random.Generator) -> tuple[ItemIndex, float]:
    t0 = time.perf_counter()
    idx = ItemIndex.create(folder, bits, kind="bucket")
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        codes = rng.integers(0, 256, size=(stop - start, bits // 8), dtype=np.uint8)
        idx.add(codes, [Item(f"b{i}", None, "") for i in range(start, stop)])
    idx.compact()
    return idx, time.perf_counter() - t0


def time_new(idx: ItemIndex, adds: int, batch: int, bits: int, rng: np.random.Generator) -> list[float]:
    out = []
    for a in range(adds):
        codes = rng.integers(0, 256, size=(batch, bits // 8), dtype=np.uint8)
        items = [Item(f"new{a}-{j}", None, "") for j in range(batch)]
        t0 = time.perf_counter()
        idx.add(codes, items)
        out.append(time.perf_counter() - t0)
    return out


def time_old(folder: Path, n: int, batch: int, bits: int, reps: int, rng: np.random.Generator) -> list[float]:
    """The old add's steps at N items: rewrite all codes + keys (checked, fsynced) and rebuild the bucket table."""
    codes = rng.integers(0, 256, size=(n + batch, bits // 8), dtype=np.uint8)
    keys = np.arange(n + batch, dtype=np.int64)
    out = []
    for r in range(reps):
        t0 = time.perf_counter()
        _files.write_arrays(folder, {"codes": codes, "keys": keys}, suffix=f"-{r}")
        make_index(bits, "bucket").add(codes, keys)
        out.append(time.perf_counter() - t0)
        for p in folder.glob(f"*-{r}.npy"):
            p.unlink()
    return out


def stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000
    return {"median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
            "mean_ms": float(a.mean()), "n": len(a)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--adds", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--bits", type=int, default=16)
    ap.add_argument("--old-reps", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None, help="Where the index is built (default: a temp folder).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="mcmfh-adds-", dir=args.workdir))
    try:
        idx, build_s = build(work / "idx", args.n, args.bits, rng)
        new = stats(time_new(idx, args.adds, args.batch, args.bits, rng))
        segments = len(idx.index.segments)
        idx.close()
        (work / "old").mkdir()
        old = stats(time_old(work / "old", args.n, args.batch, args.bits, args.old_reps, rng))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "n": args.n, "bits": args.bits, "adds": args.adds, "batch": args.batch, "build_s": build_s,
        "segments_after": segments, "segments": new, "old_full_rewrite": old,
        "speedup_median": old["median_ms"] / new["median_ms"],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "mcmfh_version": __version__, "python": platform.python_version(), "machine": platform.machine(),
    }  # fmt: skip
    print(f"{args.adds} adds of {args.batch} item(s) to a {args.n:,}-item {args.bits}-bit index (built in "
          f"{build_s:.0f} s; {segments} segments after)")  # fmt: skip
    print(f"{'design':<28}{'median ms':>11}{'p99 ms':>10}{'max ms':>10}")
    for name, s in (("segments (this version)", new), ("full rewrite (old design)", old)):
        print(f"{name:<28}{s['median_ms']:>11.2f}{s['p99_ms']:>10.2f}{s['max_ms']:>10.2f}")
    print(f"median add: {result['speedup_median']:.0f}x faster; peak RSS {result['peak_rss_gib']:.1f} GiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
