"""Many hands on one server-backed archive (codes in a real embedded Milvus, metadata in a real PostgreSQL): writer
processes adding at once with SIGKILLs thrown in, a reader process searching throughout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mcmfh.archive import Archive, drop_server_stores
from mcmfh.data import load_dataset
from mcmfh.features import FeatureSet
from mcmfh.index.backends import StoreConfig
from mcmfh.index.codes import pack_codes
from test_concurrency import base, worker_records, writers_with_kills  # noqa: F401 (base: fixture)

pytestmark = pytest.mark.scale
WORKERS = 4
# One long-lived reader that refreshes, as `mcmfh serve` does (reconnecting to Milvus per loop would time
# connection set-up, not the store); the local test's reader reopens instead, to race opens against commits.
READER = r"""
import os, sys
from mcmfh.archive import Archive

folder, stop = sys.argv[1], sys.argv[2]
searches = errors = 0
last = None
archive = Archive.open(folder)
while not os.path.exists(stop):
    try:
        archive.refresh()
        for _ in range(3):
            hits = archive.search_text("a small bright square", k=5)
            assert len(hits) == 5 and len({{h.item.id for h in hits}}) == 5
            searches += 1
        n = len(archive)
        assert last is None or n >= last, (n, last)  # adds only: a reader never sees the count go back
        last = n
    except Exception as e:
        errors += 1
        print("reader error:", type(e).__name__, e, flush=True)
print("searches", searches, "errors", errors, flush=True)
"""


@pytest.fixture
def server_archive(base, milvus_uri: str, postgres_dsn: str, tmp_path: Path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MCMFH_POSTGRES_DSN", postgres_dsn)  # the writer and reader processes inherit it
    out = tmp_path / "srv"
    fs = FeatureSet.load(base["root"] / "features")
    store = StoreConfig("milvus", uri=milvus_uri, metadata="postgres", dsn=postgres_dsn)
    Archive.build(base["root"] / "run", fs, out, splits=("train",), store=store).close()
    yield out
    drop_server_stores(out)


def _distances(archive: Archive, queries: dict[str, np.ndarray]) -> dict[str, list[set]]:
    """Per sub-index and query, the set of (item id, distance) over every item: equal iff every code is equal."""
    return {
        m: [{(h.item.id, h.distance) for h in hits}
            for hits in archive.indexes[m].search(queries[m], len(archive.indexes[m]))]
        for m in ("images", "texts")
    }  # fmt: skip


def test_server_writers_at_once_with_kills_give_the_union_and_a_reader_never_errors(base, server_archive, tmp_path):  # noqa: F811
    folder = server_archive
    with Archive.open(folder) as archive:
        n0 = len(archive)
    writers_with_kills(
        folder, base["data"], range(WORKERS), (1, 3), READER, tmp_path, seed=1, max_wait_s=0.5, timeout_s=600
    )

    # Exactly the union, ids unique, every code equal to a serial local build of the same items.
    serial = tmp_path / "serial"
    shutil.copytree(base["idx"], serial)
    with Archive.open(serial, writable=True) as archive:
        for w in range(WORKERS):
            archive.add_records(worker_records(base["data"], w), source="serial")
    expected = {r.id for w in range(WORKERS) for r in worker_records(base["data"], w)}
    with Archive.open(folder) as srv, Archive.open(serial) as ref:
        assert len(srv) == n0 + WORKERS * len(worker_records(base["data"], 0)) == len(ref)
        assert len(srv.indexes["images"]) == len(ref.indexes["images"])
        assert all(srv.get(i) is not None for i in expected)
        test = [r for r in load_dataset("csv", base["data"]).records][:5]
        queries = {
            "images": pack_codes(ref.method.encode_texts(ref.encoder.encode_texts([r.text for r in test]))),
            "texts": pack_codes(ref.method.encode_images(ref.encoder.encode_images([r.image for r in test]))),
        }
        assert _distances(srv, queries) == _distances(ref, queries)
