"""The built-in synthetic dataset: deterministic, fast, loadable by the generic CSV loader, pictures match labels."""

from __future__ import annotations

import time

import numpy as np

from mcmfh.data import load_dataset, load_image
from mcmfh.data.synthetic import FINDINGS, REGIONS, make_synthetic_dataset


def test_synthetic_dataset_is_fast_and_loadable(tmp_path):
    t = time.perf_counter()
    a = make_synthetic_dataset(tmp_path / "a", n=600, seed=0)
    assert time.perf_counter() - t < 5.0
    ds = load_dataset("csv", a)
    assert len(ds) == 600 and ds.split_counts() == {"train": 420, "dev": 60, "test": 120}
    assert len(ds.label_vocab) == len(REGIONS) + len(FINDINGS)
    assert all(len(r.labels) == 2 for r in ds.records)
    assert len({r.text for r in ds.records}) > 100  # varied captions


def test_synthetic_dataset_is_deterministic_by_seed(tmp_path):
    a, b, c = (make_synthetic_dataset(tmp_path / k, n=40, seed=s) for k, s in (("a", 0), ("b", 0), ("c", 1)))
    assert (a / "synthetic.csv").read_text() == (b / "synthetic.csv").read_text()
    assert (a / "images" / "syn00007.png").read_bytes() == (b / "images" / "syn00007.png").read_bytes()
    assert (a / "synthetic.csv").read_text() != (c / "synthetic.csv").read_text()


def test_synthetic_captions_and_pixels_follow_the_finding(tmp_path):
    ds = load_dataset("csv", make_synthetic_dataset(tmp_path / "s", n=100, seed=3))
    for r in ds.records:
        finding = next(t.split(":", 1)[1] for t in r.labels if t.startswith("finding:"))
        words = {
            "lesion": ("lesion", "mass", "nodule"),
            "cyst": ("cyst", "collection"),
            "calcification": ("calcif",),
            "fracture": ("fracture",),
            "normal": ("normal", "unremarkable"),
        }
        assert any(w in r.text.lower() for w in words[finding]), r.text

    # A bright lesion adds near-white pixels to the same region's background; a normal image has fewer of them.
    def bright(label):
        imgs = [np.asarray(load_image(r.image))[..., 0] for r in ds.records if label in r.labels]
        return np.mean([(im > 230).sum() for im in imgs])

    assert bright("finding:lesion") > bright("finding:normal")


def test_prepare_synthetic_via_cli_and_loader(tmp_path):
    from mcmfh.cli import main

    out = tmp_path / "syn"
    assert main(["prepare", "synthetic", "--out", str(out)]) == 0
    ds = load_dataset("synthetic", out)
    assert len(ds) == 600 and ds.records[0].image.is_file()
