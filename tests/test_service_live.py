"""A served archive stays live: `mcmfh index add` / `remove` run by another process show in the service within 1 s,
and no request fails while the engine swaps state. Error bodies never carry server paths."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mcmfh.archive import Archive
from mcmfh.data import load_dataset
from mcmfh.data.synthetic import make_synthetic_dataset
from mcmfh.encode_features import encode_dataset
from mcmfh.encoders import get_encoder
from mcmfh.service.app import create_app, public_message
from mcmfh.service.archive_engine import open_engine
from mcmfh.service.settings import Settings
from mcmfh.training.runs import train_run

SRC = Path(__file__).resolve().parents[1] / "src"
PROMISE_S = 1.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("live")
    data = make_synthetic_dataset(root / "syn", n=72, seed=0)
    fs = encode_dataset(load_dataset("csv", data), get_encoder("tiny"), root / "features")
    run = train_run(root / "features", "cca-itq", 16, 0, root / "run")
    Archive.build(run, fs, root / "idx", splits=("train",)).close()
    engine = open_engine(root / "idx", warm_up=True, reload_interval=0.1)
    client = TestClient(create_app(engine, Settings(image_root=data.resolve())))
    yield {"root": root, "data": data, "idx": root / "idx", "engine": engine, "client": client}
    engine.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run([sys.executable, "-m", "mcmfh", *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def wait_for(check, what: str) -> float:
    """Seconds until ``check()`` holds (fails past twice the promise, then the assert below says by how much)."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > 2 * PROMISE_S + 5:
            pytest.fail(f"{what}: not visible after {time.monotonic() - t0:.1f} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def test_add_and_remove_by_another_process_show_within_one_second(served):
    client = served["client"]
    n0 = client.get("/health").json()["items"]
    new_ids = [r.id for r in load_dataset("csv", served["data"]).records if r.split == "test"]
    assert client.get(f"/items/{new_ids[0]}").status_code == 404

    errors: list[str] = []
    stop = threading.Event()

    def searcher() -> None:  # searches and lookups throughout: none may fail mid-swap
        while not stop.is_set():
            r = client.post("/search/text", json={"query": "a small bright square", "k": 10})
            if r.status_code != 200 or len(r.json()["results"]) != 10:
                errors.append(f"{r.status_code} {r.text[:100]}")

    worker = threading.Thread(target=searcher)
    worker.start()
    try:
        cli("index", "add", str(served["idx"]), "--dataset", "csv", "--data-root", str(served["data"]),
            "--splits", "test")  # fmt: skip
        took_add = wait_for(lambda: client.get("/health").json()["items"] == n0 + len(new_ids), "add")
        assert client.get(f"/items/{new_ids[0]}").status_code == 200
        cli("index", "remove", str(served["idx"]), new_ids[0], new_ids[1])
        took_remove = wait_for(lambda: client.get(f"/items/{new_ids[0]}").status_code == 404, "remove")
        assert client.get("/health").json()["items"] == n0 + len(new_ids) - 2
        assert client.get(f"/items/{new_ids[1]}").status_code == 404
        assert client.get(f"/items/{new_ids[2]}").status_code == 200
    finally:
        stop.set()
        worker.join()
    assert took_add <= PROMISE_S and took_remove <= PROMISE_S, (took_add, took_remove)
    assert not errors, errors[:3]
    assert served["engine"].reloads >= 2


def test_a_failed_reload_keeps_serving_the_last_state(served, monkeypatch, caplog):
    engine, client = served["engine"], served["client"]
    before = client.get("/health").json()["items"]
    monkeypatch.setattr(engine.archive, "state_token", lambda: ("changed",))
    monkeypatch.setattr(engine.archive, "refresh", lambda: (_ for _ in ()).throw(OSError("disk gone")))
    assert engine.check_for_changes() is False
    assert "still serving the previous state" in caplog.text
    assert client.get("/health").json()["items"] == before


def test_error_bodies_carry_no_server_paths():
    msg = "index /srv/archives/a/images: no items with keys [4]"
    assert public_message(msg) == "index images: no items with keys [4]"
    assert public_message("'/data/x/scan.dcm': unreadable") == "'scan.dcm': unreadable"
    assert public_message("see http://host/a/b, k must be 1/2") == "see http://host/a/b, k must be 1/2"
