"""Encode throughput of the offline encoder: images/s eager vs ONNX Runtime, and texts/s.

    python benchmarks/encode.py --json encode.json            # 200 MedPix 2.0 images and captions
    python benchmarks/encode.py --n 64 --threads 2 --json x.json

Images and captions come from ../shared/data/medpix2 (or --data); without it, generated 512x512 PNGs and
sentences are used and the output says so. Each backend gets one warm-up batch (the ONNX export, if not cached,
happens there and is timed separately). "end to end" = read + resize + crop + network (wall clock); "per CPU-s" =
items per second of process CPU time (all threads), steadier on a shared machine; "network" = the model alone on
one already-preprocessed piece of the size encode_images runs (best of 3, one call at a time). Prints a table
and writes JSON with the machine's core count and load average.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "medpix2"


@dataclass(frozen=True)
class Config:
    n: int = 200
    batch_size: int = 32
    threads: int | None = None  # torch and ONNX Runtime threads; default: all cores
    data: Path = DEFAULT_DATA
    seed: int = 0


def _inputs(cfg: Config, scratch: Path) -> tuple[list[Path], list[str], str]:
    table = cfg.data / "medpix2.csv"
    if table.is_file():
        with table.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))[: cfg.n]
        return [cfg.data / r["image"] for r in rows], [r["text"] for r in rows], f"MedPix 2.0 ({cfg.data})"
    from PIL import Image

    rng = np.random.default_rng(cfg.seed)
    words = ["axial", "coronal", "CT", "MRI", "brain", "liver", "lung", "lesion", "mass", "contrast", "nodule", "cyst"]
    paths, texts = [], []
    for i in range(cfg.n):
        p = scratch / f"gen{i}.png"
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(p)
        paths.append(p)
        texts.append(" ".join(rng.choice(words, size=27)))
    return paths, texts, "generated 512x512 PNGs and 27-word sentences (MedPix 2.0 not found)"


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _wall_and_cpu(fn) -> tuple[float, float]:
    """Wall seconds and process CPU seconds (all threads): on a shared, loaded machine the second is steadier."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _threads(cfg: Config) -> dict[str, int]:
    """ONNX Runtime threads per call only when --threads is given: the encoder's default (one per call, one
    worker per core) is what `mcmfh encode` runs; None here used to mean all cores per call on every worker, whose
    spinning threads fought over the same cores."""
    return {"threads": cfg.threads} if cfg.threads else {}


def bench_images(cfg: Config, paths: list[Path], backend: str) -> dict[str, object]:
    from mcmfh.encoders import get_encoder
    from mcmfh.encoders.offline import ONNX_PIECE

    enc = get_encoder("offline", backend=backend, **_threads(cfg))
    warm = paths[: cfg.batch_size]
    warmup_s = _time(lambda: enc.encode_images(warm, batch_size=cfg.batch_size))
    emb = None

    def run() -> None:
        nonlocal emb
        emb = enc.encode_images(paths, batch_size=cfg.batch_size)

    total, cpu = _wall_and_cpu(run)
    run_net = enc._image_runner()
    # The network at the piece size encode_images uses, warmed up at that shape (a first call at a new batch
    # shape allocates), best of 3: what the cores can do with the decoding taken away.
    piece = min(len(warm), ONNX_PIECE) if enc.backend_used == "onnx" else len(warm)
    x = np.stack([enc.preprocess(p) for p in warm[:piece]])
    run_net(x)
    net = min(_time(lambda: run_net(x)) for _ in range(3)) / len(x)
    return {
        "backend": enc.backend_used,
        "images_per_s": len(paths) / total,
        "images_per_cpu_s": len(paths) / cpu,
        "network_images_per_s": 1.0 / net,
        "warmup_s": warmup_s,
        "onnx_export": enc.onnx_info or None,
        "_emb": emb,
    }


def bench_texts(cfg: Config, texts: list[str]) -> dict[str, object]:
    from mcmfh.encoders import get_encoder

    enc = get_encoder("offline", **_threads(cfg))
    enc.encode_texts(texts[: cfg.batch_size], batch_size=cfg.batch_size)  # warm-up: model load
    total, cpu = _wall_and_cpu(lambda: enc.encode_texts(texts, batch_size=cfg.batch_size))
    words = float(np.mean([len(t.split()) for t in texts]))
    return {"texts_per_s": len(texts) / total, "texts_per_cpu_s": len(texts) / cpu, "mean_words": words}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=Config.n)
    ap.add_argument("--batch-size", type=int, default=Config.batch_size)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", type=Path, required=True, help="where to write the results")
    ap.add_argument(
        "--backends",
        nargs="+",
        default=["eager", "onnx"],
        choices=["eager", "onnx"],
        help="image backends to time (eager torch is ~20x slower: 'onnx' alone for a quick run)",
    )
    a = ap.parse_args(argv)
    cfg = Config(n=a.n, batch_size=a.batch_size, threads=a.threads, data=a.data)

    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory() as scratch:
        paths, texts, source = _inputs(cfg, Path(scratch))
        runs = {b: bench_images(cfg, paths, b) for b in a.backends}
        text = bench_texts(cfg, texts)
    embs = [r.pop("_emb") for r in runs.values()]
    diff = float(np.abs(embs[0] - embs[1]).max()) if len(embs) == 2 else None
    result = {
        "config": {**asdict(cfg), "data": str(cfg.data)},
        "inputs": source,
        "n_images": len(paths),
        "n_texts": len(texts),
        **runs,
        "onnx_vs_eager_max_abs_diff": diff,
        "text": text,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")

    print(f"offline encoder, {len(paths)} items from {source}; batch {cfg.batch_size}, {os.cpu_count()} cores")
    print(f"{'':24s}{'end to end /s':>14s}{'per CPU-s':>11s}{'network /s':>12s}")
    labels = {"eager": "images, eager torch", "onnx": "images, ONNX Runtime"}
    for backend, r in runs.items():
        label = labels[backend]
        print(f"{label:24s}{r['images_per_s']:14.1f}{r['images_per_cpu_s']:11.1f}{r['network_images_per_s']:12.1f}")
    print(f"{'texts (MiniLM)':24s}{text['texts_per_s']:14.1f}{text['texts_per_cpu_s']:11.1f}")
    shown = f"{diff:.2e}" if diff is not None else "not measured (one backend)"
    print(f"ONNX vs eager max |diff| {shown}; load average {result['machine']['load_average_1m_at_end']:.1f}")
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
