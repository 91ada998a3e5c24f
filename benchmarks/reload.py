"""How soon a served archive shows another process's commit: `mcmfh index add` / `remove` against the engine of
`mcmfh serve` (its watcher at the default interval), on a tiny synthetic archive.

    python benchmarks/reload.py [--rounds 5]

The clock starts when the commit lands on disk (a second reader polls the text sub-index's ``state_token`` every
millisecond while the CLI runs) and stops when the serving engine answers the lookup with the new state, so CLI
start-up and shutdown are not counted. Prints each round and the maximum; the promise (issue 11) is 1 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mcmfh.archive import Archive
from mcmfh.data import load_dataset
from mcmfh.data.synthetic import make_synthetic_dataset
from mcmfh.encode_features import encode_dataset
from mcmfh.encoders import get_encoder
from mcmfh.service.archive_engine import open_engine
from mcmfh.training.runs import train_run


def _timed_commit(probe: Archive, args: list[str], visible: Callable[[], bool]) -> float:
    before = probe.indexes["texts"].state_token()
    proc = subprocess.Popen([sys.executable, "-m", "mcmfh", *args], stdout=subprocess.DEVNULL)
    try:
        while probe.indexes["texts"].state_token() == before:
            if proc.poll() is not None and proc.returncode != 0:
                raise SystemExit(f"mcmfh {' '.join(args)} failed")
            time.sleep(0.001)
        committed = time.monotonic()
        while not visible():
            time.sleep(0.001)
        return time.monotonic() - committed
    finally:
        proc.wait(timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_synthetic_dataset(root / "syn", n=72, seed=0)
        dataset = load_dataset("csv", data)
        features = encode_dataset(dataset, get_encoder("tiny"), root / "features")
        run = train_run(root / "features", "cca-itq", 16, 0, root / "run")
        Archive.build(run, features, root / "idx", splits=("train",)).close()
        engine, probe = open_engine(root / "idx"), Archive.open(root / "idx")
        new = [r.id for r in dataset.records if r.split == "test"]
        add = ["index", "add", str(root / "idx"), "--dataset", "csv", "--data-root", str(data), "--splits", "test"]
        adds, removes = [], []
        for i in range(args.rounds):
            adds.append(_timed_commit(probe, add, lambda: engine.get_item(new[0]) is not None))
            removes.append(_timed_commit(probe, ["index", "remove", str(root / "idx"), *new],
                                         lambda: engine.get_item(new[0]) is None))  # fmt: skip
            print(f"round {i + 1}: add visible after {adds[-1]:.3f} s, remove after {removes[-1]:.3f} s", flush=True)
        print(f"max: add {max(adds):.3f} s, remove {max(removes):.3f} s (promise: 1 s)")
        engine.close()
        probe.close()


if __name__ == "__main__":
    main()
