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
from mcmfh.encoders import get_encoder
from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.feature_cache import encode_dataset
from mcmfh.index.codes import hamming_matrix, pack_codes
from mcmfh.runs import train_run


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
        assert item.caption == record.text and set(item.labels) == set(record.labels)
        assert archive.get("no-such-id") is None
        assert archive.image_root == data_root(chain)


def data_root(chain):
    return chain["data"].resolve()


def test_text_search_equals_bruteforce_over_image_codes(chain):
    fs = chain["fs"]
    query = "bright solid nodule in the right lung"
    with Archive.open(chain["idx"]) as archive:
        hits = archive.search_text(query, k=10)
        db = fs.splits("train", "dev")
        q = pack_codes(archive.method.encode_texts(archive.encoder.encode_texts([query])))
        dist = hamming_matrix(q, pack_codes(archive.method.encode_images(db.image)))[0]
    order = np.argsort(dist, kind="stable")[:10]  # ties: insertion (database) order
    assert [h.item.item_id for h in hits] == [db.ids[i] for i in order]
    assert [h.distance for h in hits] == dist[order].tolist()


def test_image_search_returns_ranked_reports(chain):
    image = next(r.image for r in chain["ds"].records if r.split == "test")
    with Archive.open(chain["idx"]) as archive:
        hits = archive.search_image(image, k=5)
        assert len(hits) == 5
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
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
    assert main(["search", str(chain["idx"])]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["index", "info", str(chain["idx"])]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["texts"] == len(chain["fs"].splits("train", "dev"))


def test_service_over_archive(chain):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mcmfh.service.app import create_app
    from mcmfh.service.search_engine import open_engine
    from mcmfh.service.settings import Settings

    engine = open_engine(chain["idx"])
    app = create_app(engine, Settings(image_root=engine.image_root))
    with TestClient(app) as client:
        r = client.post("/search/text", json={"query": "fracture of the chest wall", "k": 5})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 5
        first = results[0]
        assert client.get(f"/items/{first['id']}").json()["text"] == first["text"]
        img = client.get(first["image_url"])
        assert img.status_code == 200 and img.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.post("/search/text", json={"query": "", "k": 5}).status_code in (400, 422)
        assert client.get("/health").json()["items"] == len(chain["fs"].splits("train", "dev"))


def test_concurrent_batched_queries_equal_one_at_a_time(chain, monkeypatch):
    """Queries from many threads share encoder calls (micro-batching) and get exactly the one-at-a-time results."""
    from concurrent.futures import ThreadPoolExecutor

    from mcmfh.archive import BATCH_ENV

    records = [r for r in chain["ds"].records if r.split == "test"][:12]
    texts = [r.text for r in records] + ["bright solid nodule in the right lung"]
    images = [r.image for r in records]

    def run_all(archive):
        with ThreadPoolExecutor(16) as pool:
            t = [pool.submit(archive.search_text, q, 7) for q in texts]
            i = [pool.submit(archive.search_image, q, 7) for q in images]
            return [[(h.item.item_id, h.distance) for h in f.result()] for f in t + i]

    with Archive.open(chain["idx"]) as archive:
        monkeypatch.setenv(BATCH_ENV, "0")
        single = run_all(archive)
        assert archive._batchers == {}
        monkeypatch.delenv(BATCH_ENV)
        batched = run_all(archive)
        assert set(archive._batchers) == {"texts", "images"}
    assert batched == single
