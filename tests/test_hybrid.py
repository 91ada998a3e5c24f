"""Hybrid text search: rank fusion, the text index of a local store, and hybrid search through the archive, CLI and
API (issue 25, item 5)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from mcmfh.archive import Archive
from mcmfh.archive.search import search_studies
from mcmfh.cli import main
from mcmfh.data import load_dataset
from mcmfh.data.synthetic import make_synthetic_dataset
from mcmfh.encode_features import encode_dataset
from mcmfh.encoders import get_encoder
from mcmfh.errors import MCMFHError
from mcmfh.fusion import rrf, tie_ranks
from mcmfh.index import text_index
from mcmfh.index.codes import hamming_matrix, pack_codes
from mcmfh.index.local_store import DB_NAME, ItemIndex
from mcmfh.items import Item
from mcmfh.training.runs import train_run
from tiny_config import TINY_MCMFH

QUERY = "bright solid nodule in the right lung"


# ---------------------------------------------------------------------------------------------------- fusion
def test_tie_ranks_share_the_mean_rank_of_their_group():
    assert tie_ranks([0, 0, 1, 2, 2, 2]) == [1.5, 1.5, 3.0, 5.0, 5.0, 5.0]
    assert tie_ranks([]) == []


def test_rrf_rewards_agreement_and_ignores_order_inside_ties():
    a = [("x", 0), ("y", 1), ("p", 2), ("q", 3)]
    b = [("z", 0), ("y", 1), ("r", 2)]
    fused = rrf([a, b], k=60)
    assert fused[0][0] == "y"  # ranked 2nd by both beats 1st by one: 2/62 > 1/61
    assert fused[0][1] == pytest.approx(2 / 62)
    assert [i for i, _ in fused[1:3]] == ["x", "z"]  # equal scores: best position, then the first list first
    tied = [("m", 0), ("n", 0), ("o", 0), ("s", 1)]
    swapped = [("o", 0), ("m", 0), ("n", 0), ("s", 1)]  # the same tie group in another order
    assert rrf([tied, b]) == rrf([swapped, b])
    assert dict(rrf([tied]))["m"] == pytest.approx(1 / (60 + 2))
    with pytest.raises(ValueError):
        rrf([a], k=0)


# ---------------------------------------------------------------------------------------------------- text index
def test_query_terms_keep_hyphenated_phrases_and_drop_function_words():
    assert (
        text_index.match_expression("A ring-enhancing lesion of the brain") == '"ring-enhancing" OR "lesion" OR "brain"'
    )
    assert text_index.match_expression("the of a") is None


def _store(tmp_path: Path) -> ItemIndex:
    idx = ItemIndex.create(tmp_path / "ix", 16)
    texts = ["Round, smooth ring-enhancing lesion", "MCA infarct", "subdural hemorrhage", "hemorrhages and lesions"]
    idx.add(np.zeros((4, 2), np.uint8), [Item(f"i{j}", None, t) for j, t in enumerate(texts)])
    return idx


def test_lexical_channel_follows_adds_and_removes_and_takes_any_text(tmp_path):
    with _store(tmp_path) as idx:
        assert [it.id for it, _ in idx.lexical("ring-enhancing lesion", 5)] == ["i0", "i3"]  # phrase first
        assert {it.id for it, _ in idx.lexical("hemorrhage", 5)} == {"i2", "i3"}  # stemmed: "hemorrhages"
        idx.remove(["i2"])
        assert [it.id for it, _ in idx.lexical("hemorrhage", 5)] == ["i3"]
        idx.add(np.zeros((1, 2), np.uint8), [Item("i9", None, "acute hemorrhage")])
        assert {it.id for it, _ in idx.lexical("hemorrhage", 5)} == {"i3", "i9"}
        assert idx.lexical('NEAR(" OR col:x* ^', 5) == [] and idx.lexical("of the", 5) == []  # no FTS syntax leaks
    with ItemIndex.open(tmp_path / "ix") as back:  # a reader sees the committed state
        assert {it.id for it, _ in back.lexical("hemorrhage", 5)} == {"i3", "i9"}


def drop_text_index(db_path: Path) -> None:
    """Make a store look as one made before text search existed."""
    con = sqlite3.connect(db_path, isolation_level=None)
    for trigger in ("ai", "ad", "au"):
        con.execute(f"DROP TRIGGER {text_index.TABLE}_{trigger}")
    con.execute(f"DROP TABLE {text_index.TABLE}")
    con.close()


def test_a_store_made_before_text_search_gets_its_index_from_a_writer(tmp_path):
    _store(tmp_path).close()
    drop_text_index(tmp_path / "ix" / DB_NAME)
    with ItemIndex.open(tmp_path / "ix") as reader, pytest.raises(MCMFHError, match="repair"):
        reader.lexical("lesion", 5)
    with ItemIndex.open(tmp_path / "ix", writable=True) as idx:
        assert idx.build_text_index() is True and idx.build_text_index() is False
        assert [it.id for it, _ in idx.lexical("infarct", 5)] == ["i1"]  # built from the rows already there


# ---------------------------------------------------------------------------------------------------- archive
@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Synthetic data in studies of three -> tiny features -> a tiny MCMFH run (fused study codes, int8 payload)."""
    import csv

    root = tmp_path_factory.mktemp("hybrid")
    data = make_synthetic_dataset(root / "syn", n=96, seed=0)
    path = data / "synthetic.csv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["study_id"] = f"st{i // 3:03d}"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ds = load_dataset("csv", data)
    fs = encode_dataset(ds, get_encoder("tiny"), root / "features")
    run = train_run(root / "features", "mcmfh", 16, 0, root / "run", options=TINY_MCMFH)
    Archive.build(run, fs, root / "idx", dataset=ds).close()
    return {"root": root, "ds": ds, "idx": root / "idx"}


def test_hybrid_hits_are_fused_exact_and_keep_the_prefix_property(chain):
    with Archive.open(chain["idx"]) as archive:
        plain = archive.search_text(QUERY, 10)
        assert plain == archive.search_text(QUERY, 10, hybrid=False)  # off by default
        hybrid = archive.search_text(QUERY, 20, hybrid=True)
        for k in (1, 3, 7, 12):
            assert archive.search_text(QUERY, k, hybrid=True) == hybrid[:k]
        scores = [h.score for h in hybrid]
        assert scores == sorted(scores, reverse=True)
        images = archive.indexes["images"]
        code = archive.method.encode_texts(archive.encoder.encode_texts([QUERY]))
        keys = images.keys_of([h.item.id for h in hybrid])
        all_keys = images.info().keys
        rows = [int(np.flatnonzero(all_keys == keys[h.item.id])[0]) for h in hybrid]
        dist = hamming_matrix(pack_codes(code), images.info().codes[rows])[0]
        assert [h.distance for h in hybrid] == dist.tolist()  # lexical-only hits too
        lexical = {it.id for it, _ in images.lexical(QUERY, 100)}
        assert lexical and set(lexical) & {h.item.id for h in hybrid}


def test_hybrid_studies_carry_members_and_their_study_distance(chain):
    with Archive.open(chain["idx"]) as archive:
        hits = archive.search_studies_text(QUERY, 8, hybrid=True)
        assert len(hits) == 8 and all(h.score is not None for h in hits)
        code = archive.method.encode_texts(archive.encoder.encode_texts([QUERY]))[0]
        every = {h.study_id: h for h in search_studies(archive.indexes, "fused", code, 10_000)}
        for h in hits:
            assert h.distance == every[h.study_id].distance
            assert [m.id for m in h.members] == [m.id for m in every[h.study_id].members]
        assert archive.search_studies_text(QUERY, 3, hybrid=True) == hits[:3]


def test_hybrid_follows_removes_and_an_old_archive_needs_repair(chain, tmp_path):
    folder = tmp_path / "a"
    shutil.copytree(chain["idx"], folder)
    with Archive.open(folder, writable=True) as archive:
        target = archive.search_text("nodule", 1, hybrid=True)[0].item.id
        archive.remove([target])
        assert target not in {h.item.id for h in archive.search_text("nodule", 50, hybrid=True)}
    for part in ("images", "texts"):
        drop_text_index(folder / part / DB_NAME)
    with Archive.open(folder) as archive:
        assert archive.search_text("nodule", 3)  # the default does not need the text index
        with pytest.raises(MCMFHError, match="repair"):
            archive.search_text("nodule", 3, hybrid=True)
    assert main(["index", "repair", str(folder)]) == 0
    with Archive.open(folder) as archive:
        assert archive.search_text("nodule", 3, hybrid=True)


def test_cli_and_api_take_the_hybrid_flag(chain, capsys, tmp_path):
    idx = str(chain["idx"])
    assert main(["search", idx, "--text", QUERY, "--k", "3", "--hybrid", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["results"]
    with Archive.open(chain["idx"]) as archive:
        assert [r["id"] for r in out] == [h.item.id for h in archive.search_text(QUERY, 3, hybrid=True)]
    assert main(["search", idx, "--text", QUERY, "--k", "3", "--hybrid"]) == 0
    assert "s = hybrid score" in capsys.readouterr().out.splitlines()[-1]
    assert main(["search", idx, "--text", QUERY, "--k", "3", "--hybrid", "--target", "studies", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 3
    image = next(r.image for r in chain["ds"].records if r.image)
    assert main(["search", idx, "--image", str(image), "--hybrid"]) == 2
    assert "--hybrid" in capsys.readouterr().err

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mcmfh.service.app import create_app
    from service_fake import FakeEngine

    engine = FakeEngine(tmp_path)
    with TestClient(create_app(engine)) as client:
        assert client.post("/search/text", json={"query": "lung", "k": 2, "hybrid": True}).status_code == 200
        assert client.post("/search/text", json={"query": "lung", "k": 2}).status_code == 200
        assert engine.hybrid == [True, None]  # None: called without the argument
        assert client.post("/search/text", json={"query": "lung", "hybrid": "yes"}).status_code == 422
