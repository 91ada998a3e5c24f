"""Ray Data encoding on a local 2-worker Ray instance writes the same feature cache as the in-process encode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mcmfh.data.records import Dataset, LoadReport, build_vocab
from mcmfh.encode_features import EncodeOptions, run_encode
from mcmfh.encoders import get_encoder
from mcmfh.features import FeatureSet
from mcmfh.items import Item

pytestmark = pytest.mark.scale


def _dataset(tmp_path: Path, n: int = 90) -> Dataset:
    from PIL import Image

    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        image = None
        if i % 4:  # every fourth item has no image
            image = tmp_path / f"img{i}.png"
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
        labels = (f"l{i % 5}",)
        records.append(Item(f"r{i}", image, f"report {i} finding {i % 7}", labels, ("train", "dev", "test")[i % 3]))
    (tmp_path / "img5.png").write_bytes(b"not a png")  # one unreadable image, skipped with --skip-bad
    vocab = build_vocab([r.labels for r in records], 1)
    return Dataset("toy", records, "toy", vocab, LoadReport())


def test_ray_encode_equals_in_process(tmp_path: Path, ray_local) -> None:  # noqa: F811
    from mcmfh.distributed import RayChunkRunner

    ds = _dataset(tmp_path)
    enc = get_encoder("tiny")
    opts = EncodeOptions(batch_size=8, chunk_size=32, skip_bad=True)
    local = run_encode(ds, enc, tmp_path / "local", opts)
    dist = run_encode(ds, enc, tmp_path / "ray", opts, chunk_runner=RayChunkRunner("tiny", num_workers=2))
    assert not dist.reused and dist.n_texts == len(ds) and dist.n_images == local.n_images
    a, b = FeatureSet.load(tmp_path / "local"), FeatureSet.load(tmp_path / "ray")
    assert a.ids == b.ids and "r5" not in b.ids and dist.skipped == local.skipped
    np.testing.assert_allclose(b.image, a.image, atol=1e-6, rtol=0)
    np.testing.assert_allclose(b.text, a.text, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(b.has_image, a.has_image)
    assert b.manifest["cache_key"] == a.manifest["cache_key"]
    # The same command again reuses the cache without starting any work.
    again = run_encode(ds, enc, tmp_path / "ray", opts, chunk_runner=RayChunkRunner("tiny", num_workers=2))
    assert again.reused


def test_cli_encode_ray_writes_the_same_cache(tmp_path: Path, ray_local) -> None:  # noqa: F811
    import json

    from typer.testing import CliRunner

    from mcmfh.cli import app

    ds = _dataset(tmp_path, n=30)
    lines = [
        {
            "id": r.id,
            "image": str(r.image) if r.image else None,
            "text": r.text,
            "labels": list(r.labels),
            "split": r.split,
        }
        for r in ds.records
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    base = [
        "encode",
        "--dataset",
        "jsonl",
        "--data-root",
        str(tmp_path / "items.jsonl"),
        "--encoder",
        "tiny",
        "--skip-bad",
        "--no-progress",
    ]
    runner = CliRunner()
    r1 = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    r2 = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--ray", "local", "--ray-workers", "2"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a, b = FeatureSet.load(tmp_path / "a"), FeatureSet.load(tmp_path / "b")
    assert a.ids == b.ids and a.manifest["cache_key"] == b.manifest["cache_key"]
    np.testing.assert_allclose(b.image, a.image, atol=1e-6, rtol=0)
    np.testing.assert_allclose(b.text, a.text, atol=1e-6, rtol=0)
