"""``mcmfh encode`` / ``mcmfh encoders`` end to end with the tiny encoder (the dataset loader is stubbed)."""

import numpy as np
import pytest
from PIL import Image

from mcmfh.cli import encode as encode_cli
from mcmfh.cli import main
from mcmfh.data import Dataset
from mcmfh.features import FeatureSet
from mcmfh.items import Item


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    records = []
    for i in range(9):
        img = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(img)
        records.append(Item(f"r{i}", img, f"text {i}", (f"t{i % 2}",), ("train", "dev", "test")[i % 3]))
    ds = Dataset("gen", records, "labels", ["t0", "t1"])
    calls = []

    def fake_load(name, root, label_set, skip_bad, encoding=None):
        calls.append((name, root, label_set, skip_bad))
        return ds

    monkeypatch.setattr(encode_cli, "_load_dataset", fake_load)
    return calls


def test_encode_writes_then_reuses(tmp_path, dataset, capsys):
    args = ["encode", "--dataset", "gen", "--data-root", str(tmp_path), "--encoder", "tiny"]
    args += ["--out", str(tmp_path / "F"), "--no-progress", "-E", "image_dim=16", "-E", "seed=3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "9 items (train 3, dev 3, test 3)" in out and "encoded 9 images" in out and "wrote cache" in out
    fs = FeatureSet.load(tmp_path / "F")
    assert fs.image_dim == 16 and fs.manifest["encoder"] == "tiny"
    assert main(args) == 0
    assert "reused cache" in capsys.readouterr().out
    assert main([*args[:-4], "-E", "image_dim=8"]) == 2  # another cache at --out: refused without --overwrite
    assert "made from something else" in capsys.readouterr().err
    assert dataset[0][0] == "gen"


def test_bad_encoder_option_is_one_line(tmp_path, dataset, capsys):
    args = ["encode", "--dataset", "gen", "--data-root", str(tmp_path), "--encoder", "tiny"]
    args += ["--out", str(tmp_path / "F")]
    assert main([*args, "-E", "novalue"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main([*args[:-2], "--out", str(tmp_path / "x"), "--encoder", "nope"]) == 2
    assert "unknown encoder 'nope'" in capsys.readouterr().err


def test_encoders_lists_builtins(capsys):
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    assert "offline" in out and "EfficientNet-Lite0" in out and "tiny" in out
