"""Feature cache: reuse, mismatch, resume after a crash, half-written caches, unreadable images."""

import json
import time

import numpy as np
import pytest
from PIL import Image

from mcmfh.data import Dataset
from mcmfh.encode_features import EncodeOptions, encode_dataset, run_encode
from mcmfh.encoders.tiny import TinyEncoder
from mcmfh.errors import ArtefactError, DataError
from mcmfh.features import FeatureSet
from mcmfh.items import Item


class CountingEncoder(TinyEncoder):
    """Counts how many images/texts it encodes; raises after ``fail_after`` image batches if set."""

    def __init__(self, fail_after: int | None = None, **options):
        super().__init__(**options)
        self.images = self.texts = self.calls = 0
        self.fail_after = fail_after

    def encode_images(self, images, batch_size=32, progress=False):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        self.calls += 1
        self.images += len(images)
        return super().encode_images(images, batch_size, progress)

    def encode_texts(self, texts, batch_size=64, progress=False):
        self.texts += len(texts)
        return super().encode_texts(texts, batch_size, progress)


def make_dataset(root, n=12, text_only=(), label_set="labels"):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        img = None
        if i not in text_only:
            img = root / f"img{i}.png"
            if not img.exists():
                Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(img)
        split = ("train", "dev", "test")[i % 3]
        records.append(Item(f"id{i}", img, f"caption {i} about organ {i % 4}", (f"tag{i % 4}",), split))
    return Dataset("gen", records, label_set, [f"tag{j}" for j in range(4)])


def test_encode_then_reuse_without_encoding(tmp_path):
    ds = make_dataset(tmp_path / "data", text_only=(3,))
    enc = CountingEncoder()
    fs = encode_dataset(ds, enc, tmp_path / "f", batch_size=4)
    assert (enc.images, enc.texts) == (11, 12)
    assert fs.image.shape == (12, 32) and fs.text.shape == (12, 24)
    assert not fs.has_image[3] and not fs.image[3].any()
    np.testing.assert_allclose(np.linalg.norm(fs.image[fs.has_image], axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(fs.labels, ds.label_matrix())
    m = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert m["kind"] == "features" and m["encoder"] == "tiny" and m["label_set"] == "labels"
    assert m["image_dim"] == 32 and m["label_vocab_size"] == 4 and m["n_with_image"] == 11
    assert m["input_fingerprint"] and m["mcmfh_version"] and m["preprocessing"]
    assert not (tmp_path / ".f.partial").exists()

    enc2 = CountingEncoder()
    out = run_encode(ds, enc2, tmp_path / "f")
    assert out.reused and enc2.images == enc2.texts == 0
    np.testing.assert_array_equal(out.features.image, fs.image)
    assert FeatureSet.load(tmp_path / "f").ids == fs.ids


@pytest.mark.parametrize("change", ["encoder", "label_set", "text", "image"])
def test_mismatch_is_recomputed_or_refused(tmp_path, change):
    ds = make_dataset(tmp_path / "data")
    run_encode(ds, CountingEncoder(), tmp_path / "f")
    enc = CountingEncoder()
    if change == "encoder":
        enc = CountingEncoder(seed=7)
    elif change == "label_set":
        ds = Dataset(ds.name, ds.records, "labels_coarse", ds.label_vocab)
    elif change == "text":
        recs = list(ds.records)
        recs[0] = Item(recs[0].id, recs[0].image, "another caption", recs[0].labels, recs[0].split)
        ds = Dataset(ds.name, recs, ds.label_set, ds.label_vocab)
    else:  # same path, new pixels: size or mtime changes
        time.sleep(0.01)
        Image.new("RGB", (30, 30), "red").save(ds.records[1].image)

    with pytest.raises(ArtefactError, match="made from something else"):
        run_encode(ds, enc, tmp_path / "f", EncodeOptions(on_mismatch="refuse"))
    assert enc.texts == 0
    out = run_encode(ds, enc, tmp_path / "f")
    assert not out.reused and enc.texts == len(ds)  # recomputed in full, never mixed
    assert FeatureSet.load(tmp_path / "f").manifest["encoder_version"] == enc.version
    assert run_encode(ds, enc, tmp_path / "f").reused


def test_resume_after_crash_skips_finished_chunks(tmp_path):
    ds = make_dataset(tmp_path / "data", n=10)
    opts = EncodeOptions(chunk_size=3, batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        run_encode(ds, CountingEncoder(fail_after=2), tmp_path / "f", opts)
    assert not (tmp_path / "f").exists()  # nothing that looks like a cache
    assert len(list((tmp_path / ".f.partial").glob("chunk-*"))) == 2

    enc = CountingEncoder()
    out = run_encode(ds, enc, tmp_path / "f", opts)
    assert out.n_resumed == 6 and enc.images == 4  # only the two unfinished chunks
    fresh = run_encode(ds, CountingEncoder(), tmp_path / "g", opts).features
    np.testing.assert_allclose(out.features.image, fresh.image, atol=1e-6)
    np.testing.assert_allclose(out.features.text, fresh.text, atol=1e-6)
    assert not (tmp_path / ".f.partial").exists()


def test_no_resume_and_foreign_partial_work_start_over(tmp_path):
    ds = make_dataset(tmp_path / "data", n=6)
    opts = EncodeOptions(chunk_size=2)
    with pytest.raises(KeyboardInterrupt):
        run_encode(ds, CountingEncoder(fail_after=1), tmp_path / "f", opts)
    enc = CountingEncoder(seed=3)  # another encoder: its chunks must not be reused
    run_encode(ds, enc, tmp_path / "f", opts)
    assert enc.images == 6
    with pytest.raises(KeyboardInterrupt):
        run_encode(ds, CountingEncoder(fail_after=1), tmp_path / "g", opts)
    enc = CountingEncoder()
    run_encode(ds, enc, tmp_path / "g", EncodeOptions(chunk_size=2, resume=False))
    assert enc.images == 6


def test_half_written_cache_is_never_taken_as_complete(tmp_path):
    ds = make_dataset(tmp_path / "data", n=4)
    run_encode(ds, CountingEncoder(), tmp_path / "f")
    (tmp_path / "f" / "manifest.json").unlink()  # as if a writer died before the manifest
    with pytest.raises(ArtefactError, match="not a feature cache"):
        run_encode(ds, CountingEncoder(), tmp_path / "f")
    with pytest.raises(ArtefactError, match="not a finished"):
        FeatureSet.load(tmp_path / "f")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ArtefactError, match="not a feature cache"):
        run_encode(ds, CountingEncoder(), tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_corrupt_chunk_is_encoded_again(tmp_path):
    ds = make_dataset(tmp_path / "data", n=6)
    opts = EncodeOptions(chunk_size=2)
    with pytest.raises(KeyboardInterrupt):
        run_encode(ds, CountingEncoder(fail_after=2), tmp_path / "f", opts)
    (tmp_path / ".f.partial" / "chunk-00000.safetensors").write_bytes(b"garbage")
    enc = CountingEncoder()
    out = run_encode(ds, enc, tmp_path / "f", opts)
    assert out.n_resumed == 2 and enc.images == 4


def test_unreadable_image_fails_or_is_skipped(tmp_path):
    ds = make_dataset(tmp_path / "data", n=6)
    ds.records[2].image.write_bytes(b"\x89PNG truncated")
    with pytest.raises(DataError, match="img2.png"):
        run_encode(ds, CountingEncoder(), tmp_path / "f")
    assert not (tmp_path / "f").exists()
    out = run_encode(ds, CountingEncoder(), tmp_path / "f", EncodeOptions(skip_bad=True))
    assert out.features.ids == ["id0", "id1", "id3", "id4", "id5"]
    assert out.skipped[0][0] == "id2" and "img2.png" in out.skipped[0][1]
    assert out.features.manifest["skipped"][0][0] == "id2"
    assert out.features.labels.shape == (5, 4)
    assert run_encode(ds, CountingEncoder(), tmp_path / "f", EncodeOptions(skip_bad=True)).reused
    with pytest.raises(DataError, match="img2.png"):  # without --skip-bad the incomplete cache is not accepted
        run_encode(ds, CountingEncoder(), tmp_path / "f")


def test_empty_dataset_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no records"):
        run_encode(Dataset("gen", [], "labels", []), CountingEncoder(), tmp_path / "f")


def test_same_files_named_relatively_reuse_the_cache(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path / "data", n=3)
    run_encode(ds, CountingEncoder(), tmp_path / "f")
    monkeypatch.chdir(tmp_path)
    rel = [Item(r.id, r.image.relative_to(tmp_path), r.text, r.labels, r.split) for r in ds.records]
    assert run_encode(Dataset(ds.name, rel, ds.label_set, ds.label_vocab), CountingEncoder(), "f").reused


def test_studies_reach_the_cache_and_change_its_key(tmp_path):
    """A source's study grouping is stored with the features; regrouping is a new cache, not a stale one."""
    from dataclasses import replace

    ds = make_dataset(tmp_path / "data")
    plain = encode_dataset(ds, CountingEncoder(), tmp_path / "plain", batch_size=4)
    assert not plain.has_studies
    grouped = Dataset(ds.name, [replace(r, study_id=f"S{i // 2}") for i, r in enumerate(ds.records)], ds.label_set,
                      ds.label_vocab)  # fmt: skip
    enc = CountingEncoder()
    fs = encode_dataset(grouped, enc, tmp_path / "plain", batch_size=4)
    assert enc.images == 12  # another grouping: recomputed, never served from the ungrouped cache
    assert fs.study.tolist() == [f"S{i // 2}" for i in range(12)]
    assert FeatureSet.load(tmp_path / "plain").study_ids().tolist() == fs.study.tolist()
    np.testing.assert_array_equal(fs.image, plain.image)
