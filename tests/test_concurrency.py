"""Many hands on one archive: real writer processes adding at once (some SIGKILLed and re-run), a reader searching
throughout, the writer lock's timeout and its recovery from a killed holder."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mcmfh.archive import Archive
from mcmfh.data import load_dataset
from mcmfh.data.synthetic import make_synthetic_dataset
from mcmfh.encode_features import encode_dataset
from mcmfh.encoders import get_encoder
from mcmfh.locking import LockTimeout, writer_lock
from mcmfh.training.runs import train_run

SRC = Path(__file__).resolve().parents[1] / "src"
WORKERS, PER_WORKER, BATCH = 6, 12, 3


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small archive (synthetic data, tiny encoder, 16-bit CCA-ITQ) and the CSV dataset new items come from."""
    root = tmp_path_factory.mktemp("concurrency")
    data = make_synthetic_dataset(root / "syn", n=WORKERS * PER_WORKER + 24, seed=1)
    fs = encode_dataset(load_dataset("csv", data), get_encoder("tiny"), root / "features")
    run = train_run(root / "features", "cca-itq", 16, 0, root / "run")
    Archive.build(run, fs, root / "idx", splits=("train",)).close()
    return {"root": root, "data": data, "idx": root / "idx"}


def worker_records(data: Path, worker: int) -> list:
    """Worker ``worker``'s items: its own slice of the dataset under new ids, so workers' items are disjoint."""
    records = load_dataset("csv", data).records
    mine = records[worker * PER_WORKER : (worker + 1) * PER_WORKER]
    return [dataclasses.replace(r, id=f"w{worker}-{r.id}") for r in mine]


WRITER = r"""
import sys
sys.path.insert(0, {tests!r})
from test_concurrency import BATCH, worker_records
from mcmfh.archive import Archive

folder, data, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
records = worker_records(data, worker)
with Archive.open(folder, writable=True, lock_timeout=120) as archive:
    for start in range(0, len(records), BATCH):
        added = archive.add_records(records[start : start + BATCH], source=f"worker{{worker}}")
        print("committed", added["texts"], flush=True)
"""

READER = r"""
import os, sys, time
from mcmfh.archive import Archive

folder, stop = sys.argv[1], sys.argv[2]
searches = errors = 0
last = None
while not os.path.exists(stop):
    try:
        with Archive.open(folder) as archive:  # a fresh reader each time: opens race every commit
            for _ in range(3):
                hits = archive.search_text("a small bright square", k=5)
                assert len(hits) == 5 and len({{h.item.id for h in hits}}) == 5
                searches += 1
            n = len(archive)
            assert last is None or n >= last, (n, last)  # adds only: a reader never sees the count go back
            last = n
            # Every new item has an image: a change is seen in both sub-indexes or in neither (commit record).
            new = [{{it.id for it in archive.indexes[m] if it.id[0] == "w"}} for m in ("images", "texts")]
            assert new[0] == new[1], ("half-commit", new[0] ^ new[1])
    except Exception as e:
        errors += 1
        print("reader error:", type(e).__name__, e, flush=True)
print("searches", searches, "errors", errors, flush=True)
"""


def spawn(script: str, *args: str, tmp_path: Path, name: str) -> subprocess.Popen:
    path = tmp_path / f"{name}.py"
    path.write_text(script.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(path), *args], stdout=subprocess.PIPE, text=True, env=env)


def writers_with_kills(
    folder: Path,
    data: Path,
    workers: range,
    killed: tuple[int, ...],
    reader_script: str,
    tmp_path: Path,
    seed: int = 0,
    max_wait_s: float = 0.3,
    timeout_s: float = 300,
) -> None:
    """Writer processes adding at once, a reader searching throughout; each ``killed`` writer is SIGKILLed at a
    random moment of its next add once it has committed something, then re-run. Every writer must finish and the
    reader must have searched and never erred."""
    stop = tmp_path / "stop"
    reader = spawn(reader_script, str(folder), str(stop), tmp_path=tmp_path, name="reader")
    writers = {w: spawn(WRITER, str(folder), str(data), str(w), tmp_path=tmp_path, name=f"w{w}") for w in workers}
    rng = np.random.default_rng(seed)
    for w in killed:
        assert writers[w].stdout is not None
        assert writers[w].stdout.readline().startswith("committed"), f"writer {w} exited early"
        time.sleep(rng.uniform(0.0, max_wait_s))
        writers[w].send_signal(signal.SIGKILL)
        writers[w].wait(timeout=60)
        writers[w] = spawn(WRITER, str(folder), str(data), str(w), tmp_path=tmp_path, name=f"w{w}")
    for w, p in writers.items():
        out, _ = p.communicate(timeout=timeout_s)
        assert p.returncode == 0, (w, out)
    stop.write_text("")
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0 and out.strip().endswith("errors 0"), out
    assert int(out.split()[-3]) > 0, out  # it did search while the writers ran


def codes_by_id(folder: Path) -> dict[tuple[str, str], bytes]:
    """Every stored code, by (sub-index, item id)."""
    out = {}
    with Archive.open(folder) as archive:
        for m, ix in archive.indexes.items():
            keys, codes = ix.index.ids, ix.index.codes
            for item, code in zip(ix.get(keys), codes, strict=True):
                out[(m, item.id)] = code.tobytes()
    return out


@pytest.mark.slow  # six writer processes killed and restarted: about 2 minutes on 2 busy cores
def test_writers_at_once_with_kills_give_the_union_and_a_reader_never_errors(base, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(base["idx"], folder)
    n0 = len(Archive.open(folder))
    writers_with_kills(folder, base["data"], range(WORKERS), (1, 4), READER, tmp_path)

    # The final archive holds exactly the union, ids unique, codes identical to one serial build of the same items.
    serial = tmp_path / "serial"
    shutil.copytree(base["idx"], serial)
    with Archive.open(serial, writable=True) as archive:
        for w in range(WORKERS):
            archive.add_records(worker_records(base["data"], w), source="serial")
    with Archive.open(folder) as archive:
        assert len(archive) == n0 + WORKERS * PER_WORKER
        ids = [it.id for it in archive.indexes["texts"]]
        assert len(ids) == len(set(ids))
        expected = {r.id for w in range(WORKERS) for r in worker_records(base["data"], w)}
        assert expected <= set(ids)
    assert codes_by_id(folder) == codes_by_id(serial)


def test_second_writer_waits_then_fails_with_one_line(base, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(base["idx"], folder)
    with writer_lock(folder):
        t0 = time.monotonic()
        with Archive.open(folder, writable=True, lock_timeout=0.5) as archive, pytest.raises(LockTimeout) as err:
            archive.remove(["anything"])
        assert 0.5 <= time.monotonic() - t0 < 5
    assert f"pid {os.getpid()}" in str(err.value) and "another writer holds the lock" in str(err.value)
    assert "\n" not in str(err.value)
    # Through the CLI: one line, exit code 2, nothing changed.
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mcmfh.locking import writer_lock\n"
         f"with writer_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cmd = [sys.executable, "-m", "mcmfh", "index", "remove", str(folder), "x", "--lock-timeout", "0.3"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "another writer holds the lock" in lines[0], r.stderr
        assert f"pid {holder.pid}" in lines[0]
        # The holder is SIGKILLed: the kernel drops its lock, and the next writer goes ahead at once.
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        t0 = time.monotonic()
        with Archive.open(folder, writable=True, lock_timeout=5) as archive:
            archive.remove(["x"])
        assert time.monotonic() - t0 < 2
    finally:
        holder.kill()


def test_compact_keeps_results_and_tie_order(base, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(base["idx"], folder)
    with Archive.open(folder, writable=True) as archive:
        for w in range(3):  # several small adds: several segments
            recs = worker_records(base["data"], w)
            for start in range(0, len(recs), BATCH):
                archive.add_records(recs[start : start + BATCH], source="x")
        archive.remove([worker_records(base["data"], 0)[1].id])
        assert len(archive.indexes["texts"].index.segments) > 1
        queries = ["a small bright square", "a large dark circle", "stripes"]
        before = [[(h.item.id, h.distance) for h in archive.search_text(q, k=40)] for q in queries]
        assert archive.compact() == {"images": True, "texts": True}
        assert len(archive.indexes["texts"].index.segments) == 1
        after = [[(h.item.id, h.distance) for h in archive.search_text(q, k=40)] for q in queries]
    assert after == before
    with Archive.open(folder) as archive:
        assert [[(h.item.id, h.distance) for h in archive.search_text(q, k=40)] for q in queries] == before


def test_cli_compact_and_info_show_segments(base, tmp_path, capsys):
    import json

    from mcmfh.cli import main

    folder = tmp_path / "idx"
    shutil.copytree(base["idx"], folder)
    with Archive.open(folder, writable=True) as archive:
        recs = worker_records(base["data"], 2)
        archive.add_records(recs[:2], source="x")
        archive.add_records(recs[2:3], source="x")
    assert main(["index", "info", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["segments"]["texts"] == 3  # the built one, then 2 items, then 1
    assert main(["index", "compact", str(folder)]) == 0
    assert "compacted images, texts" in capsys.readouterr().out
    assert main(["index", "compact", str(folder)]) == 0
    assert "already compact" in capsys.readouterr().out
    main(["index", "info", str(folder)])
    assert json.loads(capsys.readouterr().out)["segments"] == {"images": 1, "texts": 1}
