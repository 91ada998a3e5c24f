"""Archives with studies (issue 14, section 3): the study sub-indexes, their upkeep on add/remove, readers pinned to
commits, the no-fusion fallback for a method without a study head, and the CLI / HTTP ``target studies``."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mcmfh.archive import Archive
from mcmfh.archive.commit import CommittedIndexes
from mcmfh.cli import main
from mcmfh.data import load_dataset
from mcmfh.data.synthetic import make_synthetic_dataset
from mcmfh.encode_features import encode_dataset
from mcmfh.encoders import get_encoder
from mcmfh.errors import MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.index.codes import hamming_matrix, pack_codes
from mcmfh.items import Item
from mcmfh.service.app import create_app
from mcmfh.service.archive_engine import ArchiveEngine
from mcmfh.service.settings import Settings
from mcmfh.training.runs import train_run
from tiny_config import TINY_MCMFH

QUERY = "bright solid nodule in the right lung"
STUDY_SIZE = 3


def _with_studies(data) -> None:
    """Group the synthetic csv's rows into studies of three (every seventh row is a study of its own)."""
    path = data / "synthetic.csv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["study_id"] = "" if i % 7 == 6 else f"st{i // STUDY_SIZE:03d}"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Synthetic data with studies -> tiny-encoder features -> a tiny MCMFH run (with its study head) and a
    CCA-ITQ run -> archives of train+dev; plus an archive built from the same features without their studies."""
    root = tmp_path_factory.mktemp("studies")
    data = make_synthetic_dataset(root / "syn", n=96, seed=0)
    _with_studies(data)
    ds = load_dataset("csv", data)
    fs = encode_dataset(ds, get_encoder("tiny"), root / "features")
    assert fs.has_studies
    run = train_run(root / "features", "mcmfh", 16, 0, root / "run", options=TINY_MCMFH)
    base = train_run(root / "features", "cca-itq", 16, 0, root / "base")
    Archive.build(run, fs, root / "idx", dataset=ds).close()
    Archive.build(base, fs, root / "base-idx", dataset=ds).close()
    Archive.build(base, dataclasses.replace(fs, study=None), root / "plain-idx", dataset=ds).close()
    return {"root": root, "data": data, "ds": ds, "fs": fs, "run": run, "idx": root / "idx",
            "base_idx": root / "base-idx", "plain_idx": root / "plain-idx"}  # fmt: skip


def copy_archive(chain, tmp_path, name="idx"):
    import shutil

    shutil.copytree(chain[name], tmp_path / "a")
    return tmp_path / "a"


def reference_codes(method, fs: FeatureSet) -> tuple[list[str], np.ndarray]:
    """Study codes from the members' inputs rounded to float16 (what the archive stores), in feature order."""
    inputs = method.study_inputs(fs.image, fs.text).astype(np.float16).astype(np.float32)
    studies, codes = method.encode_study_inputs(inputs, fs.has_image, fs.study_ids())
    return studies.ids, codes


def stored_codes(archive: Archive) -> dict[str, np.ndarray]:
    ix = archive.indexes["studies"]
    codes = dict(zip(ix.index.ids.tolist(), ix.index.codes, strict=True))
    return {it.id: codes[it.key].tolist() for it in ix}


def query_code(archive: Archive, text: str = QUERY) -> np.ndarray:
    return pack_codes(archive.method.encode_texts(archive.encoder.encode_texts([text])))


def test_build_keeps_one_fused_code_per_study(chain):
    db = chain["fs"].splits("train", "dev")
    with Archive.open(chain["idx"]) as archive:
        assert archive.study_rule == "fused" and archive.has_studies
        assert set(archive.record) >= {"images", "texts", "studies", "study_members"}
        ids, codes = reference_codes(archive.method, db)
        stored = stored_codes(archive)
        assert sorted(stored) == sorted(ids)
        for sid, code in zip(ids, pack_codes(codes), strict=True):
            assert stored[sid] == code.tolist(), sid
        # float16 inputs code (almost) every study as the float32 ones do
        full_studies, full = archive.method.encode_studies(db)
        same = [stored[s] == c.tolist() for s, c in zip(full_studies.ids, pack_codes(full), strict=True)]
        assert np.mean(same) >= 0.9
        # a study's members carry its id; an item of no study is a study of its own
        item = archive.get(db.ids[0])
        assert item is not None and item.study_id == "st000"
        assert archive.get(db.ids[6]).study_id is None and db.ids[6] in stored


def test_study_search_equals_bruteforce_over_study_codes(chain):
    db = chain["fs"].splits("train", "dev")
    with Archive.open(chain["idx"]) as archive:
        hits = archive.search_studies_text(QUERY, k=8, rerank="none")
        ids, codes = reference_codes(archive.method, db)
        dist = hamming_matrix(query_code(archive), pack_codes(codes))[0]
        by_id = dict(zip(ids, dist.tolist(), strict=True))
        assert [h.distance for h in hits] == sorted(dist.tolist())[:8]
        assert all(by_id[h.study_id] == h.distance for h in hits)
        members = {s: [db.ids[i] for i in np.flatnonzero(db.study_ids() == s)] for s in ids}
        for h in hits:
            assert [it.id for it in h.members] == members[h.study_id]
        image = chain["data"] / "images" / f"{db.ids[0]}.png"
        assert len(archive.search_studies_image(image, k=3)) == 3
        with pytest.raises(MCMFHError, match="stores int8"):
            archive.search_studies_text(QUERY, k=3, rerank="int4")


def test_study_search_is_two_stage_by_default_and_scores_every_hit(chain):
    """Fused studies keep the study head's relaxed output as payload: hits carry the similarity they are ordered
    by, equal to the stored payload's cosine to the query's own relaxed output, and k is a prefix of K."""
    with Archive.open(chain["idx"]) as archive:
        assert archive.study_codec is not None and archive.manifest["studies"]["payload"]["codec"] == "int8"
        hits = archive.search_studies_text(QUERY, k=8)
        assert all(h.score is not None for h in hits)
        assert [(-h.score, h.distance) for h in hits] == sorted((-h.score, h.distance) for h in hits)
        studies = archive.indexes["studies"]
        keys = studies.keys_of([h.study_id for h in hits])
        rows = studies.payloads([keys[h.study_id] for h in hits], archive.study_codec.bytes_per_item)
        _, relaxed = archive.coder.code("texts", QUERY)
        codec = archive.study_codec
        want = codec.score(codec.prepare_queries(relaxed[None, :]), rows[None])[0]
        assert np.allclose([h.score for h in hits], want, atol=1e-6)
        # the small archive fits in the candidate floor: the top 8 are the 8 best-scored studies of all
        every = studies.payloads(sorted(studies.keys_of(list(stored_codes(archive))).values()), codec.bytes_per_item)
        best = np.sort(codec.score(codec.prepare_queries(relaxed[None, :]), every[None])[0])[::-1][:8]
        assert np.allclose([h.score for h in hits], best, atol=1e-6)
        assert [h.study_id for h in archive.search_studies_text(QUERY, k=3)] == [h.study_id for h in hits[:3]]


def _new_record(chain, item_id: str, study: str, like: int) -> Item:
    r = chain["ds"].records[like]
    return dataclasses.replace(r, id=item_id, study_id=study, text=r.text + " Follow-up.")


def test_add_to_a_study_recodes_it_from_all_members(chain, tmp_path):
    folder = copy_archive(chain, tmp_path)
    db = chain["fs"].splits("train", "dev")
    with Archive.open(folder, writable=True) as archive:
        before = stored_codes(archive)
        new = _new_record(chain, "new-1", "st001", 30)
        added = archive.add_records([new], source="test")
        assert added == {"images": 1, "texts": 1, "studies": 1}
        after = stored_codes(archive)
        assert {s for s in before if before[s] != after[s]} <= {"st001"}
        assert sorted(after) == sorted(before)
        # the reference: st001's members' embeddings plus the new item's, coded together
        rows = np.flatnonzero(db.study_ids() == "st001")
        img = np.concatenate([db.image[rows], archive.encoder.encode_images([new.image])])
        txt = np.concatenate([db.text[rows], archive.encoder.encode_texts([new.text])])
        inputs = archive.method.study_inputs(img, txt).astype(np.float16).astype(np.float32)
        _, code = archive.method.encode_study_inputs(inputs, np.ones(len(img), bool), ["st001"] * len(img))
        assert after["st001"] == pack_codes(code)[0].tolist()
        hit = next(h for h in archive.search_studies_text(QUERY, k=len(after)) if h.study_id == "st001")
        assert [it.id for it in hit.members] == [*(db.ids[i] for i in rows), "new-1"]
        # a new study of its own, and a rerun that adds nothing
        archive.add_records([_new_record(chain, "new-2", "st-new", 31)], source="test")
        assert "st-new" in stored_codes(archive)
        assert archive.add_records([new], source="test") == {"images": 0, "texts": 0, "studies": 0}


def test_remove_recodes_or_drops_studies(chain, tmp_path):
    folder = copy_archive(chain, tmp_path)
    db = chain["fs"].splits("train", "dev")
    sid = next(s for s in db.study_ids() if (db.study_ids() == s).sum() == STUDY_SIZE)
    rows = np.flatnonzero(db.study_ids() == sid)
    with Archive.open(folder, writable=True) as archive:
        assert archive.remove([db.ids[rows[0]]]) == 1
        keep = db.subset(rows[1:])
        ids, code = reference_codes(archive.method, keep)
        assert ids == [sid] and stored_codes(archive)[sid] == pack_codes(code)[0].tolist()
        archive.remove([db.ids[r] for r in rows[1:]])
        assert sid not in stored_codes(archive)
        assert all(h.study_id != sid for h in archive.search_studies_text(QUERY, k=100))


def test_readers_see_items_and_studies_change_together(chain, tmp_path, monkeypatch):
    folder = copy_archive(chain, tmp_path)
    reader = Archive.open(folder)
    with Archive.open(folder, writable=True) as writer:
        writer.add_records([_new_record(chain, "new-1", "st003", 40)], source="test")
    # not refreshed: the reader stays at its commit, items and studies alike
    assert reader.get("new-1") is None
    old = {h.study_id: h for h in reader.search_studies_text(QUERY, k=100)}
    assert "new-1" not in [it.id for it in old["st003"].members]
    assert reader.refresh()
    new = {h.study_id: h for h in reader.search_studies_text(QUERY, k=100)}
    assert "new-1" in [it.id for it in new["st003"].members] and reader.get("new-1") is not None
    with Archive.open(folder) as fresh:
        assert stored_codes(reader) == stored_codes(fresh)
    # a writer killed after its sub-indexes but before the commit record: a reader sees none of the change
    monkeypatch.setattr(CommittedIndexes, "commit", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    with Archive.open(folder, writable=True) as writer, pytest.raises(KeyboardInterrupt):
        writer.add_records([_new_record(chain, "new-2", "st003", 41)], source="test")
    monkeypatch.undo()
    with Archive.open(folder) as fresh:
        assert fresh.get("new-2") is None
        assert stored_codes(fresh) == stored_codes(reader)
    with Archive.open(folder, writable=True) as writer:  # the next writer rolls back and completes it
        assert writer.add_records([_new_record(chain, "new-2", "st003", 41)], source="test")["studies"] == 1
        assert "new-2" in [it.id for it in writer.indexes["texts"].members(["st003"])["st003"]]
    reader.close()


def test_half_an_add_to_a_study_archive_without_its_record_is_refused_and_repaired(chain, tmp_path):
    """Killed after images/ and texts/ committed, before study_members/, and commit.json lost (issue 28)."""
    from mcmfh.errors import ArtefactError
    from mcmfh.index.local_store import ItemIndex

    folder = copy_archive(chain, tmp_path)
    new = _new_record(chain, "half-1", "st002", 33)
    with Archive.open(folder) as archive:
        before, n_members = stored_codes(archive), len(archive.indexes["study_members"])
        codes = {"images": archive.method.encode_images(archive.encoder.encode_images([new.image])),
                 "texts": archive.method.encode_texts(archive.encoder.encode_texts([new.text]))}  # fmt: skip
    for part, code in codes.items():
        with ItemIndex.open(folder / part, writable=True) as index:
            index.add(pack_codes(code), [dataclasses.replace(new, source="test")])
    (folder / "commit.json").unlink()
    with pytest.raises(ArtefactError, match=r"1 item\(s\) have a text row but no study member row \(e.g. 'half-1'\)"):
        Archive.open(folder)
    with Archive.open(folder, writable=True, check_parts=False) as archive:
        assert archive.repair() == ["half-1"]
        assert stored_codes(archive) == before and len(archive.indexes["study_members"]) == n_members
        assert archive.get("half-1") is None
    with Archive.open(folder, writable=True) as archive:  # re-running the add completes it
        assert archive.add_records([new], source="test") == {"images": 1, "texts": 1, "studies": 1}


def test_baseline_without_study_head_ranks_studies_by_nearest_member(chain):
    db = chain["fs"].splits("train", "dev")
    with Archive.open(chain["base_idx"]) as archive:
        assert archive.study_rule == "min" and "studies" not in archive.indexes
        q = query_code(archive)
        d_img = hamming_matrix(q, pack_codes(archive.method.encode_images(db.image)))[0]
        d_txt = hamming_matrix(q, pack_codes(archive.method.encode_texts(db.text)))[0]
        per_item = np.minimum(d_img, d_txt)
        sids = db.study_ids()
        best = {s: int(per_item[sids == s].min()) for s in dict.fromkeys(sids.tolist())}
        expected = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))
        for k in (1, 5, len(best)):
            hits = archive.search_studies_text(QUERY, k=k, rerank="none")
            assert [(h.study_id, h.distance) for h in hits] == expected[:k]
            assert all(h.score is None for h in hits)
        assert {it.id for it in hits[0].members} == {db.ids[i] for i in np.flatnonzero(sids == hits[0].study_id)}


def test_min_rule_studies_are_rescored_by_their_best_member(chain):
    """Issue 25: without a study head, studies are two-stage too: a study's score is its best member's re-scored
    similarity (what an item search of either modality gives that member), and they are ordered by it."""
    with Archive.open(chain["base_idx"]) as archive:
        assert archive.study_rule == "min" and archive.payload_codec is not None
        best: dict[str, tuple[float, int]] = {}
        for target in ("images", "texts"):  # every item is a candidate here (96 items, RERANK_FLOOR 1000)
            for h in archive.search_text(QUERY, k=len(archive), target=target, per_study=0):
                sid, key = h.item.study_id or h.item.id, (-h.score, h.distance)
                best[sid] = min(best.get(sid, key), key)
        expected = sorted(best, key=lambda sid: (best[sid], sid))
        whole = archive.search_studies_text(QUERY, k=len(best))
        assert [h.study_id for h in whole] == expected
        assert [(-h.score, h.distance) for h in whole] == [best[sid] for sid in expected]  # scored, ordered
        assert len({h.score for h in whole}) > len(whole) // 2  # ties are broken by the similarity
        for k in (1, 3, 7):
            assert [h.study_id for h in archive.search_studies_text(QUERY, k=k)] == expected[:k]


def test_min_rule_studies_keep_the_prefix_property_past_a_small_candidate_budget(chain):
    from mcmfh.archive.search import nearest_studies
    from mcmfh.index.store import Rescore

    with Archive.open(chain["base_idx"]) as archive:
        code, relaxed = archive.coder.code("texts", QUERY)
        packed = pack_codes(code[None, :])
        n = len(set(chain["fs"].splits("train", "dev").study_ids().tolist()))
        for budget in (3, 10):
            how = Rescore(archive.payload_codec, relaxed[None, :], budget=budget)
            whole = nearest_studies(archive.indexes, packed, n, how)
            assert len(whole) == n and len({sid for sid, _, _ in whole}) == n
            scored = [(-s, d) for _, d, s in whole if s is not None]
            assert 0 < len(scored) < n and scored == sorted(scored)  # candidates' studies first, by similarity
            assert all(s is None for _, _, s in whole[len(scored) :])  # then the rest, unscored, by distance
            assert [d for _, d, _ in whole[len(scored) :]] == sorted(d for _, d, _ in whole[len(scored) :])
            for k in range(1, n + 1):
                assert nearest_studies(archive.indexes, packed, k, how) == whole[:k]


def test_archive_without_studies_refuses_target_studies(chain):
    with Archive.open(chain["plain_idx"]) as archive:
        assert not archive.has_studies
        with pytest.raises(MCMFHError, match="no studies"):
            archive.search_studies_text(QUERY)


def test_cli_target_studies(chain, capsys):
    assert main(["search", str(chain["idx"]), "--text", QUERY, "--target", "studies", "--k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "studies" and len(out["results"]) == 3
    assert all(r["members"] and r["study_id"] for r in out["results"])
    assert main(["search", str(chain["idx"]), "--text", QUERY, "--target", "studies", "--k", "2"]) == 0
    assert "2 studies in" in capsys.readouterr().out
    assert main(["search", str(chain["plain_idx"]), "--text", QUERY, "--target", "studies"]) == 2
    err = capsys.readouterr().err
    assert "no studies" in err and len(err.strip().splitlines()) == 1
    assert main(["search", str(chain["idx"]), "--text", QUERY, "--target", "series"]) == 2
    assert "--target series" in capsys.readouterr().err


def test_http_target_studies(chain):
    with Archive.open(chain["idx"]) as archive:
        engine = ArchiveEngine(archive, reload_interval=None)
        client = TestClient(create_app(engine, Settings(image_root=chain["data"])))
        assert client.get("/health").json()["studies"] is True
        r = client.post("/search/text", json={"query": QUERY, "k": 4, "target": "studies"})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = archive.search_studies_text(QUERY, k=4)
        assert [(x["study_id"], x["distance"]) for x in body["results"]] == [(h.study_id, h.distance) for h in expected]
        assert [m["id"] for m in body["results"][0]["members"]] == [it.id for it in expected[0].members]
        assert body["results"][0]["members"][0]["image_url"].startswith("/images/")
        image = (chain["data"] / "images" / f"{expected[0].members[0].id}.png").read_bytes()
        r = client.post("/search/image", files={"file": ("q.png", image, "image/png")}, data={"target": "studies"})
        assert r.status_code == 200 and r.json()["target"] == "studies"
        first = client.post("/search/text", json={"query": QUERY}).json()["results"][0]  # items by default
        assert first["study_id"] == archive.get(first["id"]).study_id
        member = expected[0].members[0]
        assert client.get(f"/items/{member.id}").json()["study_id"] == member.study_id
        r = client.post("/search/text", json={"query": QUERY, "target": "series"})
        assert r.status_code == 422 and "target" in r.json()["error"]
        r = client.post("/search/text", json={"query": QUERY, "target": "studies", "modality": "CT"})
        assert r.status_code == 422 and "item search only" in r.json()["error"]
    with Archive.open(chain["plain_idx"]) as plain:
        client = TestClient(create_app(ArchiveEngine(plain, reload_interval=None), Settings()))
        assert client.get("/health").json()["studies"] is False
        r = client.post("/search/text", json={"query": QUERY, "target": "studies"})
        assert r.status_code == 422 and "no studies" in r.json()["error"]


def test_archive_made_before_studies_stays_readable_and_gains_the_column(chain, tmp_path):
    import sqlite3

    folder = copy_archive(chain, tmp_path, "plain_idx")
    for m in ("images", "texts"):  # an item table as archives made before studies have it
        with sqlite3.connect(folder / m / "items.sqlite") as db:
            db.execute("DROP INDEX items_study")
            db.execute("ALTER TABLE items DROP COLUMN study_id")
            db.execute("ALTER TABLE items DROP COLUMN title")  # and before case titles (issue 25)
    first = chain["fs"].splits("train", "dev").ids[0]
    with Archive.open(folder) as archive:
        item = archive.get(first)
        assert item is not None and item.study_id is None and item.title is None
        assert all(h.item.title is None for h in archive.search_text(QUERY, k=3, per_study=0))
        assert archive.indexes["texts"].members([first])[first][0].id == first
        assert len(archive.search_text(QUERY, k=3)) == 3
    with sqlite3.connect(folder / "texts" / "items.sqlite") as db:  # a reader added nothing
        assert not {"study_id", "title"} & {r[1] for r in db.execute("PRAGMA table_info(items)")}
    with Archive.open(folder, writable=True) as archive:
        archive.add_records([_new_record(chain, "new-1", "st-x", 10)], source="test")
        assert archive.get("new-1").study_id == "st-x" and archive.get(first).study_id is None
        archive.add_records(
            [dataclasses.replace(_new_record(chain, "new-2", "st-x", 11), title="Old case")], source="test"
        )
        assert archive.get("new-2").title == "Old case" and archive.get(first).title is None


def test_http_write_joins_a_study_and_info_counts_studies(chain, tmp_path, capsys):
    from mcmfh.service.archive_engine import open_engine

    folder = copy_archive(chain, tmp_path)
    token = "write-token-for-tests-0123456789"
    engine = open_engine(folder, warm_up=False, reload_interval=None, writable=True)
    try:
        settings = Settings(token=token, allow_writes=True, image_root=chain["data"].resolve())
        client = TestClient(create_app(engine, settings))
        auth = {"Authorization": f"Bearer {token}"}
        body = {"id": "api-1", "text": "Follow-up CT: the nodule is smaller.", "study_id": "st004"}
        r = client.post("/items", json=body, headers=auth)
        assert r.status_code == 201, r.text
        assert engine.archive.get("api-1").study_id == "st004"
        members = engine.archive.indexes["study_members"].members(["st004"])["st004"]
        assert "api-1" in [it.id for it in members]
        r = client.post("/items", json={**body, "id": "api-2", "study_id": 7}, headers=auth)
        assert r.status_code == 422
    finally:
        engine.close()
    assert main(["index", "info", str(folder)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["studies"]["rule"] == "fused" and info["counts"]["studies"] > 0
    assert "study_members" not in info["code_health"]


def test_studies_coded_in_chunks_equal_one_pass(chain, tmp_path, monkeypatch):
    import mcmfh.archive.writes

    monkeypatch.setattr(mcmfh.archive.writes, "RECODE_STUDIES", 3)
    chunked = Archive.build(chain["run"], chain["fs"], tmp_path / "idx", dataset=chain["ds"])
    with chunked, Archive.open(chain["idx"]) as whole:
        assert stored_codes(chunked) == stored_codes(whole)


def new_items_csv(tmp_path, rows: list[list[str]], extra: list[str] | None = None) -> str:
    """An items CSV (id, image, text, labels, split, study_id, then ``extra`` columns) in a new folder; its path."""
    path = tmp_path / "new" / "items.csv"
    path.parent.mkdir()
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["id", "image", "text", "labels", "split", "study_id", *(extra or [])], *rows])
    return str(path)


def test_cli_index_add_from_a_csv_with_study_ids(chain, tmp_path, capsys):
    folder = copy_archive(chain, tmp_path)
    image = chain["data"] / "images" / f"{chain['ds'].records[0].id}.png"
    rows = [["csv-1", str(image), "Follow-up: unchanged nodule.", "region:lung", "train", "st005"]]
    assert main(["index", "add", str(folder), "--dataset", "csv", "--data-root", new_items_csv(tmp_path, rows)]) == 0
    assert "1 stud(ies) re-coded" in capsys.readouterr().out
    with Archive.open(folder) as archive:
        assert archive.get("csv-1").study_id == "st005"
        hit = next(h for h in archive.search_studies_text(QUERY, k=200) if h.study_id == "st005")
        assert "csv-1" in [it.id for it in hit.members]


def test_case_titles_from_a_csv_reach_the_archive_the_cli_and_the_api(chain, tmp_path, capsys):
    """Issue 25: a CSV's ``title`` column is the item's case title, stored, searched back and shown."""
    folder = copy_archive(chain, tmp_path)
    image = chain["data"] / "images" / f"{chain['ds'].records[0].id}.png"
    rows = [["csv-1", str(image), QUERY, "region:lung", "train", "st-t", "  Right MCA\n infarct "],
            ["csv-2", "", QUERY + " Again.", "region:lung", "train", "st-t", ""]]  # fmt: skip
    csv_path = new_items_csv(tmp_path, rows, ["title"])
    assert main(["index", "add", str(folder), "--dataset", "csv", "--data-root", csv_path]) == 0
    capsys.readouterr()
    with Archive.open(folder) as archive:
        assert archive.get("csv-1").title == "Right MCA infarct" and archive.get("csv-2").title is None
        hit = next(h for h in archive.search_studies_text(QUERY, k=200) if h.study_id == "st-t")
        assert hit.title == "Right MCA infarct"
        client = TestClient(create_app(ArchiveEngine(archive, reload_interval=None), Settings()))
        assert client.get("/items/csv-1").json()["title"] == "Right MCA infarct"
        studies = client.post("/search/text", json={"query": QUERY, "target": "studies", "k": 100}).json()
        study = next(s for s in studies["results"] if s["study_id"] == "st-t")
        assert study["title"] == "Right MCA infarct"
        assert {m["id"]: m["title"] for m in study["members"]} == {"csv-1": "Right MCA infarct", "csv-2": None}
        items = client.post("/search/text", json={"query": QUERY, "k": 100, "per_study": 0}).json()["results"]
        titles = {h["id"]: h["title"] for h in items}
        assert titles["csv-1"] == "Right MCA infarct" and set(titles.values()) == {"Right MCA infarct", None}
    assert main(["search", str(folder), "--text", QUERY, "--target", "texts", "--k", "200", "--per-study", "0"]) == 0
    table = capsys.readouterr().out
    assert table.count("case: Right MCA infarct") == 1
    assert main(["search", str(folder), "--text", QUERY, "--target", "studies", "--k", "200"]) == 0
    assert "study st-t: Right MCA infarct (2 item(s))" in capsys.readouterr().out


def test_server_store_sqlite_metadata_keeps_studies(tmp_path):
    """The Milvus archives' SQLite metadata (no server needed for this part): study ids, members, old tables."""
    import sqlite3

    from mcmfh.index.server_store import SqliteMeta

    meta = SqliteMeta(tmp_path / "items.sqlite", create=True)
    items = [
        Item("a", None, "x", study_id="s1", title="Glioma"),
        Item("b", None, "y", study_id="s1"),
        Item("c", None, "z"),
    ]
    meta.add(np.zeros((3, 2), np.uint8), items, meta.reserve_keys(3))
    got = meta.members(["s1", "c", "nothing"])
    assert {s: [it.id for it in v] for s, v in got.items()} == {"s1": ["a", "b"], "c": ["c"]}
    assert meta.lookup([0])[0].study_id == "s1" and meta.lookup([2])[2].study_id is None
    assert [meta.lookup([k])[k].title for k in (0, 1)] == ["Glioma", None]
    meta.close()
    with sqlite3.connect(tmp_path / "items.sqlite") as db:  # a table made before studies and titles
        db.execute("ALTER TABLE items DROP COLUMN study_id")
        db.execute("ALTER TABLE items DROP COLUMN title")
    meta = SqliteMeta(tmp_path / "items.sqlite", create=False)
    assert meta.lookup([0])[0].study_id is None and list(meta.members(["a"])) == ["a"]
    assert meta.lookup([0])[0].title is None
    meta.add(np.zeros((1, 2), np.uint8), [Item("d", None, "w", study_id="s2", title="Cyst")], meta.reserve_keys(1))
    assert meta.lookup([3])[3].study_id == "s2" and meta.lookup([3])[3].title == "Cyst"
    meta.close()


def test_an_archive_without_a_study_payload_answers_studies_one_stage(chain, tmp_path):
    """An archive built before study payloads (its manifest's studies entry has none) keeps working: Hamming order,
    ``score`` null, and asking for two-stage studies says why it cannot."""
    import json

    folder = copy_archive(chain, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["studies"]["payload"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with Archive.open(folder) as archive:
        assert archive.study_codec is None
        hits = archive.search_studies_text(QUERY, k=5)
        assert all(h.score is None for h in hits)
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        with pytest.raises(MCMFHError, match="no studies payload"):
            archive.search_studies_text(QUERY, k=5, rerank="int8")
