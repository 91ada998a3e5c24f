"""PACS-aware results: study metadata on hits, filters by modality / body part (exact: the best k that match),
links to the PACS viewer from a URL template, and the engine reading what `mcmfh index sync` recorded."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mcmfh.cli import main
from mcmfh.errors import MCMFHError
from mcmfh.service.app import create_app
from mcmfh.service.settings import Settings
from service_fake import TEXTS, FakeEngine, pattern_image, png_bytes
from test_archive import chain  # noqa: F401 (fixture: a real tiny-encoder archive)

VIEWER = "https://pacs.example/viewer?StudyInstanceUID={study_uid}&series={series_uid}"


def _study(i: int) -> dict[str, str]:
    return {"study_uid": f"1.2.840.{i // 2}", "series_uid": f"1.2.840.{i // 2}.1", "sop_uid": f"1.2.840.{i}.9",
            "modality": "CT" if i % 2 else "MR", "body_part": "HEAD" if i < 3 else "CHEST",
            "study_date": "20240102"}  # fmt: skip


@pytest.fixture
def engine(tmp_path):
    fake = FakeEngine(tmp_path)
    fake.study = {item_id: _study(i) for i, item_id in enumerate(fake.ids) if i != 0}  # item 0: not from a PACS
    return fake


def _client(engine, **settings) -> TestClient:
    return TestClient(create_app(engine, Settings(image_root=engine.root, **settings)))


def test_hits_carry_study_metadata_and_viewer_links(engine) -> None:
    client = _client(engine, viewer_url=VIEWER)
    hits = client.post("/search/text", json={"query": TEXTS[3], "k": len(TEXTS)}).json()["results"]
    by_id = {h["id"]: h for h in hits}
    three = by_id[engine.ids[3]]
    assert (three["modality"], three["body_part"], three["study_date"]) == ("CT", "CHEST", "20240102")
    assert three["viewer_url"] == "https://pacs.example/viewer?StudyInstanceUID=1.2.840.1&series=1.2.840.1.1"
    assert by_id[engine.ids[0]]["viewer_url"] is None and by_id[engine.ids[0]]["modality"] is None
    assert all(h["viewer_url"] is None for h in _client(engine).post(
        "/search/text", json={"query": TEXTS[3], "k": 3}).json()["results"])  # fmt: skip
    assert client.get("/facets").json() == {"modality": ["CT", "MR"], "body_part": ["CHEST", "HEAD"]}


FILTERS = [{"modality": "CT"}, {"body_part": "HEAD"}, {"modality": "MR", "body_part": "CHEST"}]


@pytest.mark.parametrize("filters", FILTERS)
def test_filters_give_the_best_k_that_match(engine, filters) -> None:
    client = _client(engine)
    query = {"query": TEXTS[2], "k": 2}
    everything = client.post("/search/text", json={**query, "k": len(TEXTS)}).json()["results"]
    matching = [h["id"] for h in everything if all(h.get(f) == v for f, v in filters.items())]
    got = client.post("/search/text", json={**query, **filters}).json()["results"]
    assert [h["id"] for h in got] == matching[:2] and matching  # exact: widening, not a filter of the top k
    form = {"k": "2", **filters}
    image = png_bytes(pattern_image(2))
    got = client.post("/search/image", files={"file": ("q.png", image, "image/png")}, data=form).json()["results"]
    assert got and all(all(h[f] == v for f, v in filters.items()) for h in got)


def test_no_match_is_an_empty_answer_and_an_archive_without_pacs_has_no_facets(engine, tmp_path) -> None:
    assert _client(engine).post("/search/text", json={"query": "x", "modality": "PET"}).json()["results"] == []
    plain = FakeEngine(tmp_path / "plain")
    assert _client(plain).get("/facets").json() == {"modality": [], "body_part": []}


@pytest.mark.parametrize("bad", ["ftp://pacs/{study_uid}", "https://pacs/{patient_id}", "https://pacs/viewer",
                                 "javascript:alert(1)//{study_uid}"])  # fmt: skip
def test_a_bad_viewer_template_is_refused_with_one_line(bad, chain, capsys) -> None:  # noqa: F811
    with pytest.raises(MCMFHError, match="--viewer-url"):
        Settings(viewer_url=bad)
    assert main(["serve", str(chain["idx"]), "--viewer-url", bad]) == 2
    assert "--viewer-url" in capsys.readouterr().err


def test_archive_engine_reads_the_sync_state(chain, tmp_path) -> None:  # noqa: F811
    import shutil

    from mcmfh.pacs.query import InstanceRef
    from mcmfh.pacs.state import SyncState
    from mcmfh.service.archive_engine import open_engine

    idx = tmp_path / "idx"
    shutil.copytree(chain["idx"], idx)
    engine = open_engine(idx, warm_up=False, reload_interval=None)
    try:
        ids = chain["fs"].splits("train", "dev").ids[:3]
        assert engine.study_metadata(list(ids)) == {} and engine.facets() == {"modality": [], "body_part": []}
        state = SyncState(idx)  # what a sync records once the archive committed its items
        refs = [InstanceRef(f"1.2.{i}", f"1.2.{i}.1", f"1.2.{i}.1.1", modality="CR", body_part="CHEST")
                for i in range(2)]  # fmt: skip
        state.record(refs, list(ids[:2]))
        state.close()
        meta = engine.study_metadata(list(ids))
        assert set(meta) == set(ids[:2]) and meta[ids[0]]["study_uid"] == "1.2.0"
        assert engine.facets() == {"modality": ["CR"], "body_part": ["CHEST"]}
        client = TestClient(create_app(engine, Settings(image_root=engine.image_root, viewer_url=VIEWER)))
        hits = client.post("/search/text", json={"query": "nodule", "k": 50, "modality": "CR"}).json()["results"]
        assert {h["id"] for h in hits} == set(ids[:2]) and all(h["viewer_url"] for h in hits)
    finally:
        engine.close()


def test_an_engine_without_the_whole_contract_is_refused_at_start_up(tmp_path) -> None:
    class Old(FakeEngine):
        facets = None  # an engine written before the study-metadata methods existed

    with pytest.raises(TypeError, match="lacks facets"):
        create_app(Old(tmp_path), Settings())


def test_per_study_groups_results_and_reaches_the_engine(tmp_path) -> None:
    """``per_study`` (JSON field / form field) reaches the engine; grouped hits carry the rest of their case as
    ``others`` (with image URLs) and the ids of folded duplicate texts; absent, the engine's default applies."""
    from service_fake import StudyFakeEngine

    engine = StudyFakeEngine(tmp_path)
    client = _client(engine)
    raw = client.post("/search/text", json={"query": TEXTS[3], "k": len(TEXTS)}).json()["results"]
    assert engine.per_study_asked is None and all(h["others"] == [] for h in raw)
    grouped = client.post("/search/text", json={"query": TEXTS[3], "k": len(TEXTS), "per_study": 1}).json()
    grouped = grouped["results"]
    assert engine.per_study_asked == 1
    cases = [h["study_id"] for h in grouped]
    first_of: dict[str, str] = {}
    for h in raw:
        first_of.setdefault(h["study_id"], h["id"])
    assert len(set(cases)) == len(cases) == len(first_of) < len(raw)  # one entry per case
    assert [h["id"] for h in grouped] == list(first_of.values())  # the best-matching member of each case
    for h in grouped:
        mates = [i for i in engine.ids if engine.items[i].study_id == h["study_id"] and i != h["id"]]
        assert [m["id"] for m in h["others"]] == mates
    assert any(m["image_url"] for h in grouped for m in h["others"])
    for bad in (-1, True, 1001):
        r = client.post("/search/text", json={"query": "x", "per_study": bad})
        assert r.status_code == 422, bad
    r = client.post("/search/image", files={"file": ("q.png", png_bytes(pattern_image(2)))}, data={"per_study": "0"})
    assert r.status_code == 200 and engine.per_study_asked == 0
