import json

import numpy as np
import pytest

from conftest import make_features
from mcmfh.data import Dataset
from mcmfh.errors import ArtefactError, DataError
from mcmfh.features import FeatureSet
from mcmfh.index.codes import hamming_matrix, pack_codes, unpack_codes
from mcmfh.io import atomic_dir, atomic_write_json
from mcmfh.items import Item
from mcmfh.manifest import fingerprint, new_manifest, read_manifest, require_match


def test_feature_set_roundtrip(tmp_path):
    fs = make_features(n=30)
    fs.manifest = new_manifest("features", encoder="generated")
    fs.save(tmp_path / "f")
    back = FeatureSet.load(tmp_path / "f")
    assert back.ids == fs.ids
    np.testing.assert_array_equal(back.image, fs.image)
    np.testing.assert_array_equal(back.labels, fs.labels)
    assert back.splits("test").ids == [i for i, s in zip(fs.ids, fs.split, strict=True) if s == "test"]


def test_feature_cache_without_manifest_is_incomplete(tmp_path):
    fs = make_features(n=10)
    fs.manifest = new_manifest("features")
    fs.save(tmp_path / "f")
    (tmp_path / "f" / "manifest.json").unlink()
    with pytest.raises(ArtefactError, match="not a finished"):
        FeatureSet.load(tmp_path / "f")


def test_feature_set_rejects_mismatched_rows():
    fs = make_features(n=10)
    with pytest.raises(ArtefactError, match="text"):
        FeatureSet(fs.ids, fs.image, fs.text[:5], fs.labels, fs.label_vocab, fs.split)


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "art"
    with atomic_dir(target) as d:
        (d / "x").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "x").write_text("new")
        raise RuntimeError("crash")
    assert (target / "x").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_manifest_kind_and_mismatch(tmp_path):
    atomic_write_json(tmp_path / "manifest.json", new_manifest("run", encoder="a"))
    assert read_manifest(tmp_path, "run")["encoder"] == "a"
    with pytest.raises(ArtefactError, match="expected a 'index'"):
        read_manifest(tmp_path, "index")
    with pytest.raises(ArtefactError, match="encoder"):
        require_match({"encoder": "a"}, {"encoder": "b"}, ["encoder"], "evaluate")
    assert fingerprint({"a": 1}) == fingerprint({"a": 1}) != fingerprint({"a": 2})
    json.loads((tmp_path / "manifest.json").read_text())


def test_pack_and_hamming_match_bruteforce():
    rng = np.random.default_rng(0)
    a, b = rng.random((7, 32)) > 0.5, rng.random((9, 32)) > 0.5
    pa, pb = pack_codes(a), pack_codes(b)
    assert pa.shape == (7, 4)
    np.testing.assert_array_equal(unpack_codes(pa), a)
    expected = (a[:, None, :] != b[None, :, :]).sum(-1)
    np.testing.assert_array_equal(hamming_matrix(pa, pb), expected)


def test_dataset_rejects_duplicates_and_unknown_split():
    r = Item("a", None, "t", ("x",), "train")
    with pytest.raises(DataError, match="duplicate"):
        Dataset("d", [r, r], "labels", ["x"])
    with pytest.raises(DataError, match="unknown split"):
        Dataset("d", [Item("b", None, "t", (), "val")], "labels", [])
    ds = Dataset("d", [r, Item("b", None, "t", ("y", "z"), "test")], "labels", ["x", "y"])
    np.testing.assert_array_equal(ds.label_matrix(), [[1, 0], [0, 1]])
