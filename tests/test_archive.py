"""The archive (run + image/text Hamming indexes + metadata), its CLI, and the service engine over it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from mcmfh.archive import Archive
from mcmfh.cli import main
from mcmfh.data import load_dataset
from mcmfh.data.synthetic import make_synthetic_dataset
from mcmfh.encode_features import encode_dataset
from mcmfh.encoders import get_encoder
from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.index.codes import hamming_matrix, pack_codes
from mcmfh.training.runs import train_run


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Synthetic images + captions -> tiny-encoder features -> a 16-bit CCA-ITQ run -> an archive of train+dev."""
    root = tmp_path_factory.mktemp("archive")
    data = make_synthetic_dataset(root / "syn", n=96, seed=0)
    ds = load_dataset("csv", data)
    fs = encode_dataset(ds, get_encoder("tiny"), root / "features")
    run = train_run(root / "features", "cca-itq", 16, 0, root / "run")
    Archive.build(run, fs, root / "idx").close()
    return {"root": root, "data": data, "ds": ds, "fs": fs, "run": run, "idx": root / "idx"}


def test_build_holds_database_split_with_metadata(chain):
    fs, ds = chain["fs"], chain["ds"]
    with Archive.open(chain["idx"]) as archive:
        db = fs.splits("train", "dev")
        assert len(archive) == len(db) == len(archive.indexes["images"])
        record = {r.id: r for r in ds.records}[db.ids[0]]
        item = archive.get(db.ids[0])
        assert item.text == record.text and set(item.labels) == set(record.labels)
        assert archive.get("no-such-id") is None
        assert archive.image_root == data_root(chain)


def data_root(chain):
    return chain["data"].resolve()


def test_text_search_equals_bruteforce_over_image_codes(chain):
    fs = chain["fs"]
    query = "bright solid nodule in the right lung"
    with Archive.open(chain["idx"]) as archive:
        hits = archive.search_text(query, k=10, rerank="none")
        db = fs.splits("train", "dev")
        q = pack_codes(archive.method.encode_texts(archive.encoder.encode_texts([query])))
        dist = hamming_matrix(q, pack_codes(archive.method.encode_images(db.image)))[0]
    order = np.argsort(dist, kind="stable")[:10]  # ties: insertion (database) order
    assert [h.item.id for h in hits] == [db.ids[i] for i in order]
    assert [h.distance for h in hits] == dist[order].tolist()
    assert all(h.score is None for h in hits)


def test_two_stage_is_the_default_and_equals_rescoring_the_stored_payload(chain):
    """Stage 1 = whole Hamming tie groups, stage 2 = int8 relaxed outputs stored at build (mcmfh.index.rerank)."""
    from mcmfh.index.payload import make_codec
    from mcmfh.index.rerank import two_stage_arrays

    fs = chain["fs"]
    query = "bright solid nodule in the right lung"
    with Archive.open(chain["idx"]) as archive:
        assert archive.manifest["payload"] == {"codec": "int8", "dim": 16} and archive.default_rerank() == "int8"
        hits = archive.search_text(query, k=10)
        db = fs.splits("train", "dev")
        emb = archive.encoder.encode_texts([query])
        codec = make_codec("int8", 16)
        expected = two_stage_arrays(
            pack_codes(archive.method.encode_images(db.image)), codec.encode(archive.method.relaxed_images(db.image)),
            pack_codes(archive.method.encode_texts(emb)), archive.method.relaxed_texts(emb), codec, 10,
        )  # fmt: skip
        with pytest.raises(MCMFHError, match="stores int8 payloads"):
            archive.search_text(query, k=10, rerank="float16")
    assert [h.item.id for h in hits] == [db.ids[i] for i in expected.ids[0]]
    assert [h.distance for h in hits] == expected.distances[0].tolist()
    assert np.allclose([h.score for h in hits], expected.similarities[0], atol=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_image_search_returns_ranked_reports(chain):
    image = next(r.image for r in chain["ds"].records if r.split == "test")
    with Archive.open(chain["idx"]) as archive:
        hits = archive.search_image(image, k=5, rerank="none")
        assert len(hits) == 5
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        rescored = archive.search_image(image, k=5)  # two-stage: ordered by re-scored similarity
        assert [h.score for h in rescored] == sorted((h.score for h in rescored), reverse=True)
        with pytest.raises(MCMFHError, match="empty text query"):
            archive.search_text("   ", 5)


def test_add_is_idempotent_and_remove(chain, tmp_path):
    import shutil

    idx = tmp_path / "idx"
    shutil.copytree(chain["idx"], idx)
    test = [r for r in chain["ds"].records if r.split == "test"]
    renamed = [dataclasses.replace(r, id=f"new-{r.id}") for r in test[:4]]
    with Archive.open(idx, writable=True) as archive:
        n0 = len(archive)
        assert archive.add_records(renamed, source="ward") == {"images": 4, "texts": 4}
        assert archive.add_records(renamed, source="ward") == {"images": 0, "texts": 0}  # a rerun adds nothing
        assert len(archive) == n0 + 4
        assert archive.get("new-" + test[0].id).source == "ward"
        assert archive.remove(["new-" + test[0].id]) == 1
        assert len(archive) == n0 + 3
    with Archive.open(idx) as archive:  # committed
        assert len(archive) == n0 + 3


def test_archive_refuses_sub_index_of_another_model(chain, tmp_path):
    import shutil

    idx = tmp_path / "idx"
    shutil.copytree(chain["idx"], idx)
    manifest = json.loads((idx / "manifest.json").read_text())
    manifest["run_id"] = "0" * 16
    (idx / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match="run_id"):
        Archive.open(idx)


def test_build_refuses_features_of_another_encoder(chain, tmp_path):
    fs = chain["fs"]
    other = dataclasses.replace(fs, manifest={**fs.manifest, "encoder": "offline"})
    with pytest.raises(ArtefactError, match="encoder"):
        Archive.build(chain["run"], other, tmp_path / "idx")


def test_cli_search_and_info(chain, capsys):
    assert main(["search", str(chain["idx"]), "--text", "cyst in the liver", "--k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["results"]) == 3 and out["results"][0]["rank"] == 1
    assert all(isinstance(r["score"], float) for r in out["results"])  # two-stage by default
    assert main(["search", str(chain["idx"]), "--text", "cyst in the liver", "--k", "3", "--rerank", "none"]) == 0
    table = capsys.readouterr().out
    assert "d=" in table and "s=" not in table
    assert table.splitlines()[-1].startswith("d = Hamming distance") and "s = " not in table  # the column said
    assert main(["search", str(chain["idx"]), "--text", "cyst in the liver", "--k", "3"]) == 0
    key = capsys.readouterr().out.splitlines()[-1]
    assert key.startswith("d = Hamming distance") and "; s = two-stage similarity" in key
    assert main(["search", str(chain["idx"]), "--text", "cyst", "--rerank", "float16"]) == 2
    assert "stores int8 payloads" in capsys.readouterr().err
    assert main(["search", str(chain["idx"])]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["index", "info", str(chain["idx"])]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["texts"] == len(chain["fs"].splits("train", "dev"))


def test_service_over_archive(chain):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mcmfh.service.app import create_app
    from mcmfh.service.archive_engine import open_engine
    from mcmfh.service.settings import Settings

    engine = open_engine(chain["idx"])
    app = create_app(engine, Settings(image_root=engine.image_root))
    with TestClient(app) as client:
        r = client.post("/search/text", json={"query": "fracture of the chest wall", "k": 5})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 5
        scores = [h["score"] for h in results]  # two-stage by default: ordered by the re-scored similarity
        assert all(isinstance(x, float) for x in scores) and scores == sorted(scores, reverse=True)
        with Archive.open(chain["idx"]) as archive:
            direct = archive.search_text("fracture of the chest wall", 5)
        assert [(h["id"], h["distance"]) for h in results] == [(h.item.id, h.distance) for h in direct]
        first = results[0]
        assert client.get(f"/items/{first['id']}").json()["text"] == first["text"]
        img = client.get(first["image_url"])
        assert img.status_code == 200 and img.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.post("/search/text", json={"query": "", "k": 5}).status_code in (400, 422)
        assert client.get("/health").json()["items"] == len(chain["fs"].splits("train", "dev"))


def test_concurrent_batched_queries_equal_one_at_a_time(chain, monkeypatch):
    """Queries from many threads share encoder calls (micro-batching) and get exactly the one-at-a-time results."""
    from concurrent.futures import ThreadPoolExecutor

    from mcmfh.archive.query import BATCH_ENV

    records = [r for r in chain["ds"].records if r.split == "test"][:12]
    texts = [r.text for r in records] + ["bright solid nodule in the right lung"]
    images = [r.image for r in records]

    def run_all(archive):
        with ThreadPoolExecutor(16) as pool:
            t = [pool.submit(archive.search_text, q, 7) for q in texts]
            i = [pool.submit(archive.search_image, q, 7) for q in images]
            return [[(h.item.id, h.distance) for h in f.result()] for f in t + i]

    with Archive.open(chain["idx"]) as archive:
        monkeypatch.setenv(BATCH_ENV, "0")
        single = run_all(archive)
        assert archive.coder.batchers == {}
        monkeypatch.delenv(BATCH_ENV)
        batched = run_all(archive)
        # images: encoded one each, hashed together
        assert set(archive.coder.batchers) == {"encode-texts", "hash-images"}
    assert batched == single


def _copy_with_new(chain, tmp_path, n=3):
    import shutil

    idx = tmp_path / "idx"
    shutil.copytree(chain["idx"], idx)
    test = [r for r in chain["ds"].records if r.split == "test" and r.image is not None]
    return idx, [dataclasses.replace(r, id=f"half-{r.id}") for r in test[:n]]


def test_a_writer_killed_between_sub_indexes_is_never_seen_half_done(chain, tmp_path):
    """Images committed, texts and the record not (a kill between them): readers see neither; the next writer
    rolls the images back and a rerun adds both."""
    from mcmfh.index.local_store import ItemIndex

    idx, new = _copy_with_new(chain, tmp_path)
    with Archive.open(idx) as before:
        n0, n0_images = len(before), len(before.indexes["images"])
        query = new[0].text
        hits_before = [(h.item.id, h.distance) for h in before.search_text(query, k=n0_images)]
    with Archive.open(idx) as archive:  # the codes the add would write
        codes = archive.method.encode_images(archive.encoder.encode_images([r.image for r in new]))
    with ItemIndex.open(idx / "images", writable=True) as images:  # what a writer did before it was killed
        images.add(pack_codes(codes), [dataclasses.replace(r, source="ward") for r in new])
    with Archive.open(idx) as reader:  # a reader opening now is pinned to the record
        assert len(reader.indexes["images"]) == n0_images and len(reader) == n0
        assert [(h.item.id, h.distance) for h in reader.search_text(query, k=n0_images)] == hits_before
        with Archive.open(idx, writable=True) as writer:
            assert writer.add_records(new, source="ward") == {"images": 3, "texts": 3}
        assert reader.refresh()  # now both modalities show the new items together
        assert len(reader.indexes["images"]) == n0_images + 3 and len(reader) == n0 + 3
        assert {h.item.id for h in reader.search_text(query, k=n0_images + 3, per_study=0)} >= {r.id for r in new}
    assert ItemIndex.open(idx / "images").manifest == json.loads((idx / "commit.json").read_text())["images"]


def test_a_change_that_fails_half_way_leaves_the_committed_archive(chain, tmp_path, monkeypatch):
    from mcmfh.index.local_store import ItemIndex

    idx, new = _copy_with_new(chain, tmp_path)
    with Archive.open(idx, writable=True) as archive:
        n0, n0_images = len(archive), len(archive.indexes["images"])
        record = (idx / "commit.json").read_text()

        def texts_fail(*a, **k):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(archive.indexes["texts"], "add", texts_fail)
        with pytest.raises(OSError):
            archive.add_records(new, source="ward")
        assert len(archive.indexes["images"]) == n0_images  # rolled back in memory ...
    assert (idx / "commit.json").read_text() == record
    with ItemIndex.open(idx / "images") as images:  # ... and on disk
        assert len(images) == n0_images and not images.keys_of([r.id for r in new])
    monkeypatch.undo()
    with Archive.open(idx, writable=True) as archive:
        assert archive.add_records(new, source="ward") == {"images": 3, "texts": 3}
        assert len(archive) == n0 + 3


def test_an_archive_without_a_commit_record_opens_and_gets_one(chain, tmp_path):
    idx, new = _copy_with_new(chain, tmp_path)
    (idx / "commit.json").unlink()  # archives made before commit records existed
    with Archive.open(idx, writable=True) as archive:
        n0 = len(archive)
        archive.add_records(new[:1], source="ward")
    record = json.loads((idx / "commit.json").read_text())
    assert record["texts"]["count"] == n0 + 1
    (idx / "commit.json").write_text("{not json")
    with pytest.raises(ArtefactError, match="commit.json: unreadable commit record"):
        Archive.open(idx)


def test_refresh_from_another_thread_during_a_change_does_not_undo_it(chain, tmp_path):
    """The service's reload thread refreshes while a write endpoint changes the same Archive object."""
    import threading

    from mcmfh.index.local_store import ItemIndex

    idx, new = _copy_with_new(chain, tmp_path, n=6)
    stop = threading.Event()
    with Archive.open(idx, writable=True) as archive:
        n0, i0 = len(archive), len(archive.indexes["images"])

        def refresh_forever():
            while not stop.is_set():
                archive.refresh()

        thread = threading.Thread(target=refresh_forever)
        thread.start()
        try:
            for r in new:
                assert archive.add_records([r], source="ward") == {"images": 1, "texts": 1}
        finally:
            stop.set()
            thread.join()
        assert len(archive) == n0 + 6 and len(archive.indexes["images"]) == i0 + 6
    record = json.loads((idx / "commit.json").read_text())
    for m in ("images", "texts"):
        assert ItemIndex.open(idx / m).manifest == record[m]
    with Archive.open(idx) as archive:
        assert len(archive) == n0 + 6 and all(archive.get(r.id) for r in new)
