"""The optional write endpoints over a real (tiny-encoder) archive: token only, images inside the root, the writer
lock shared with the CLI (503 + Retry-After when held), and the change visible to another server within 1 s."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from mcmfh.archive import Archive
from mcmfh.data import load_dataset
from mcmfh.data.synthetic import make_synthetic_dataset
from mcmfh.encode_features import encode_dataset
from mcmfh.encoders import get_encoder
from mcmfh.locking import writer_lock
from mcmfh.service.app import create_app
from mcmfh.service.archive_engine import open_engine
from mcmfh.service.settings import Settings
from mcmfh.training.runs import train_run

TOKEN = "write-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROMISE_S = 1.0


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("writes")
    data = make_synthetic_dataset(root / "syn", n=48, seed=1)
    fs = encode_dataset(load_dataset("csv", data), get_encoder("tiny"), root / "features")
    run = train_run(root / "features", "cca-itq", 16, 0, root / "run")
    Archive.build(run, fs, root / "idx", splits=("train",)).close()
    engine = open_engine(root / "idx", reload_interval=0.1, writable=True, lock_timeout=0.3)
    settings = Settings(token=TOKEN, allow_writes=True, image_root=data.resolve())
    client = TestClient(create_app(engine, settings))
    reader = open_engine(root / "idx", reload_interval=0.1)  # a second `mcmfh serve` on the same archive
    yield {"data": data, "idx": root / "idx", "client": client, "reader": reader}
    engine.close()
    reader.close()


def test_add_then_remove_through_the_api(archive) -> None:
    client = archive["client"]
    n0 = client.get("/health", headers=AUTH).json()["items"]
    body = {"id": "api/new ünï", "text": "a bright round nodule in the left lung", "image": "images/syn00003.png",
            "labels": ["lung"]}  # fmt: skip
    assert client.post("/items", json=body).status_code == 401
    r = client.post("/items", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json() == {"id": body["id"], "changed": True, "url": "/items/" + quote(body["id"], safe="")}
    item = client.get(r.json()["url"], headers=AUTH).json()
    assert item["text"] == body["text"] and item["labels"] == ["lung"] and item["image_url"]
    assert client.get("/health", headers=AUTH).json()["items"] == n0 + 1
    again = client.post("/items", json=body, headers=AUTH)
    assert again.status_code == 200 and again.json()["changed"] is False
    hits = client.post("/search/text", json={"query": body["text"], "k": 50}, headers=AUTH).json()["results"]
    assert body["id"] in [h["id"] for h in hits]

    assert client.delete(r.json()["url"], headers=AUTH).status_code == 200
    assert client.get(r.json()["url"], headers=AUTH).status_code == 404
    assert client.delete(r.json()["url"], headers=AUTH).status_code == 404
    assert client.get("/health", headers=AUTH).json()["items"] == n0


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"id": "x1", "text": "c", "image": "../run/weights.safetensors"}, 422, "inside it"),
        ({"id": "x2", "text": "c", "image": "/etc/passwd"}, 422, "relative to the image root"),
        ({"id": "x3", "text": "c", "image": "images/none.png"}, 422, "no such file"),
        ({"id": "x\u0001", "text": "c"}, 422, "control characters"),
        ({"id": "x5", "text": ""}, 422, "text"),
        ({"id": "x6", "text": "c", "labels": "lung"}, 422, "labels"),
        ({"id": "x7", "text": "\ud800"}, 422, "unicode"),
        ({"id": "x8", "text": "c", "extra": 1}, 422, "extra"),
    ],
)
def test_bad_new_items_are_refused(archive, body: dict, status: int, fragment: str) -> None:
    import json

    raw = json.dumps(body).encode()  # json.dumps escapes a lone surrogate, as a client would send it
    r = archive["client"].post("/items", content=raw, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == status and fragment in r.json()["error"].lower(), r.text
    assert "/" + str(archive["data"]).strip("/") not in r.text


def test_a_held_writer_lock_answers_503_with_retry_after(archive) -> None:
    client = archive["client"]
    with writer_lock(archive["idx"], 0):  # e.g. a CLI `mcmfh index add` in progress
        t0 = time.monotonic()
        r = client.post("/items", json={"id": "locked", "text": "waits for the lock"}, headers=AUTH)
        assert time.monotonic() - t0 < 5
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
    assert "busy" in r.json()["error"] and str(archive["idx"]) not in r.text
    assert client.post("/items", json={"id": "locked", "text": "now it can"}, headers=AUTH).status_code == 201
    client.delete("/items/locked", headers=AUTH)


def test_an_api_write_reaches_another_server_within_a_second(archive) -> None:
    client, reader = archive["client"], archive["reader"]
    assert client.post("/items", json={"id": "shared/1", "text": "cyst"}, headers=AUTH).status_code == 201
    t0 = time.monotonic()
    while reader.get_item("shared/1") is None:
        assert time.monotonic() - t0 < 2 * PROMISE_S + 5, "never seen"
        time.sleep(0.02)
    took = time.monotonic() - t0
    client.delete("/items/shared%2F1", headers=AUTH)
    assert took <= PROMISE_S, took
