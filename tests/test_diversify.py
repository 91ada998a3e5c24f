"""Result diversification (``mcmfh.diversify``): one entry per study, duplicate texts folded, raw on request, and
the prefix property kept; on an archive, the grouped search against the raw ranking it folds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mcmfh.archive import Archive
from mcmfh.diversify import case_metrics, copy_key, diversified_rows, diversify, others_not_shown, study_key
from mcmfh.items import Hit, Item
from test_archive_studies import QUERY, chain, copy_archive  # noqa: F401  (the module fixture: an archive with studies)


def _hit(i: int, study: str | None, text: str) -> Hit:
    return Hit(Item(f"i{i}", None, text, study_id=study), distance=i)


RANKING = [
    _hit(0, "a", "ring lesion"),
    _hit(1, "a", "ring lesion, axial"),
    _hit(2, "b", "Ring  LESION"),
    _hit(3, None, "infarct"),
    _hit(4, "c", "fracture"),
    _hit(5, "a", "other"),
    _hit(6, "c", "femur"),
]


def test_one_entry_per_study_with_duplicate_texts_folded() -> None:
    shown = diversify(RANKING)
    assert [h.item.id for h in shown] == ["i0", "i3", "i4"]  # i2 repeats i0's text; a and c shown once each
    assert shown[0].duplicates == ("i2",) and shown[1].duplicates == ()
    assert [h.item.id for h in diversify(RANKING, per_study=2)] == ["i0", "i1", "i3", "i4", "i6"]
    assert diversify(RANKING, per_study=0) == RANKING  # raw: nothing folded
    with pytest.raises(ValueError):
        diversify(RANKING, per_study=-1)


def test_copies_of_one_stored_code_and_payload_are_folded() -> None:
    """Issue 25: one image stored twice (two ids, two texts, two studies) fills one entry; a copy is the same payload
    row at the same distance; hits without a payload (one-stage, past the budget) are never copies."""
    hits = [
        Hit(Item("a", None, "left MCA infarct", study_id="s1"), 2, 0.9, payload=b"\x01\x02"),
        Hit(Item("b", None, "infarct, right", study_id="s2"), 2, 0.9, payload=b"\x01\x02"),  # a's copy
        Hit(Item("c", None, "glioma", study_id="s3"), 3, 0.8, payload=b"\x01\x02"),  # same payload, other code
        Hit(Item("d", None, "cyst", study_id="s4"), 2, None),
        Hit(Item("e", None, "abscess", study_id="s5"), 2, None),
    ]
    shown = diversify(hits)
    assert [h.item.id for h in shown] == ["a", "c", "d", "e"] and shown[0].duplicates == ("b",)
    assert copy_key(hits[3]) is None and diversify(hits, per_study=0) == hits


def test_diversified_prefixes_are_prefixes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        hits = [replace(_hit(i, f"s{rng.integers(5)}", f"t{rng.integers(12)}"), distance=1,
                        payload=bytes([int(rng.integers(6))]) if rng.random() < 0.7 else None)
                for i in range(int(rng.integers(1, 30)))]  # fmt: skip
        whole = [h.item.id for h in diversify(hits)]
        for n in range(len(hits) + 1):
            part = [h.item.id for h in diversify(hits[:n])]
            assert part == whole[: len(part)]


def test_members_not_on_screen_are_the_rest_of_the_case() -> None:
    # As a store's search(members=True) gives them: each hit with the other items of its study, in key order.
    members = {"a": [RANKING[0].item, RANKING[1].item, RANKING[5].item], "i3": [RANKING[3].item]}
    ranking = [replace(h, others=tuple(m for m in members.get(study_key(h.item), []) if m.id != h.item.id))
               for h in RANKING]  # fmt: skip
    out = others_not_shown(diversify(ranking))
    assert [m.id for m in out[0].others] == ["i1", "i5"] and out[1].others == () and out[2].others == ()


def test_archive_search_is_grouped_by_default_and_raw_on_request(chain) -> None:  # noqa: F811
    with Archive.open(chain["idx"]) as archive:
        raw = archive.search_text(QUERY, k=len(archive), per_study=0)
        for k in (3, 8):
            grouped = archive.search_text(QUERY, k=k)
            assert [h.item.id for h in grouped] == [h.item.id for h in diversify(raw)][:k]
            studies = [study_key(h.item) for h in grouped]
            assert len(set(studies)) == len(studies)  # one entry per study
            members = archive.indexes["images"].members(studies)
            for h in grouped:  # the rest of its study, none of them shown
                assert {m.id for m in h.others} == {m.id for m in members[study_key(h.item)]} - {h.item.id}
        assert [h.item.id for h in archive.search_text(QUERY, k=3)] == [h.item.id for h in grouped[:3]]
        raw5 = archive.search_text(QUERY, k=5, per_study=0)
        assert [h.item.id for h in raw5] == [h.item.id for h in raw[:5]] and all(not h.others for h in raw5)


def test_the_evaluations_array_view_matches_diversify_on_hits() -> None:
    """``diversified_rows`` / ``case_metrics`` (the evaluation) fold a ranking exactly as ``diversify`` (search)."""
    rng = np.random.default_rng(4)
    for _ in range(30):
        n = int(rng.integers(5, 40))
        groups, texts = rng.integers(0, 6, n), [f"t{x}" for x in rng.integers(0, 10, n)]
        # Rows stored from one of 8 inputs share code and payload (so distance); input 7 is past the budget.
        stored, at = rng.integers(0, 8, n), rng.integers(0, 4, 8)
        keys = at[stored]  # ties: database order decides
        copies = np.array([None if x == 7 else bytes([x]) for x in stored], dtype=object)
        order = np.argsort(keys, kind="stable")
        hits = [Hit(Item(f"i{r}", None, texts[r], study_id=f"s{groups[r]}"), int(keys[r]), payload=copies[r])
                for r in order]  # fmt: skip
        want = [int(h.item.id[1:]) for h in diversify(hits)][:10]
        assert diversified_rows(order, groups, np.array(texts, dtype=object), 10, copies=copies) == want
        rel = rng.random((1, n)) < 0.5
        m = case_metrics(keys[None], rel, groups, np.array(texts, dtype=object), 10, copies)
        assert m["p_cases"] == pytest.approx(rel[0, want].sum() / 10)
        assert m["p_items"] == pytest.approx(rel[0, order[:10]].sum() / 10)
        assert m["cases_raw"] == len(set(groups[order[:10]].tolist()))


def test_cli_groups_by_default_and_per_study_zero_is_raw(chain, capsys) -> None:  # noqa: F811
    import json

    from mcmfh.cli import main

    def run(*extra: str) -> list[dict]:
        assert main(["search", str(chain["idx"]), "--text", QUERY, "--k", "6", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)["results"]

    grouped, raw = run(), run("--per-study", "0")
    with Archive.open(chain["idx"]) as archive:
        want = archive.search_text(QUERY, k=6)
    assert [r["id"] for r in grouped] == [h.item.id for h in want]
    assert [r["others"] for r in grouped] == [[m.id for m in h.others] for h in want]
    assert all(r["more"] == len(r["others"]) for r in grouped) and all(r["others"] == [] for r in raw)
    studies = [r["study_id"] or r["id"] for r in grouped]
    assert len(set(studies)) == len(studies)
    assert main(["search", str(chain["idx"]), "--text", QUERY, "--k", "6"]) == 0
    table = capsys.readouterr().out
    assert any(r["more"] for r in grouped) and "more in this case" in table
    assert main(["search", str(chain["idx"]), "--text", QUERY, "--per-study", "-1"]) == 2


def test_a_text_search_reads_its_hits_and_their_studies_in_one_sql_query(chain, monkeypatch) -> None:  # noqa: F811
    """Path of a query (docs/architecture.md): one SQL round trip for the hits' metadata with their studies' other
    members, beside the two-stage payload read; a second metadata query (e.g. members read apart) fails here."""
    import sqlite3

    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args, **kwargs):
        con = connect(*args, **kwargs)
        con.set_trace_callback(statements.append)
        return con

    monkeypatch.setattr(sqlite3, "connect", traced)
    with Archive.open(chain["idx"]) as archive:
        archive.search_text(QUERY, k=3)  # warm-up: the columns of each table are read once per open
        # k=1: one request, never widened (the tiny model codes most images alike, so two-stage folds copies).
        for rerank, stage2 in (("int8", 1), ("none", 0)):
            statements.clear()
            hits = archive.search_text(QUERY, k=1, rerank=rerank)
            assert len(hits) == 1 and hits[0].others
            payload = [s for s in statements if "payload" in s]
            metadata = [s for s in statements if "payload" not in s]
            assert (len(payload), len(metadata)) == (stage2, 1), statements


def test_an_image_stored_twice_fills_one_entry(chain, tmp_path) -> None:  # noqa: F811
    """The same image added again under another id, study and report: two-stage search folds it under the first
    (same stored code and payload); the raw ranking keeps both."""
    folder = copy_archive(chain, tmp_path, "base_idx")
    with Archive.open(folder, writable=True) as archive:
        raw = archive.search_text(QUERY, k=len(archive), per_study=0)
        assert len({h.payload for h in raw}) > len(raw) // 2  # a model that tells images apart
        first = raw[0].item
        twin = replace(first, id="twin", text="Another report on the same image.", study_id="st-twin", key=-1)
        archive.add_records([twin], source="test")
        raw = archive.search_text(QUERY, k=len(archive), per_study=0)
        ids = [h.item.id for h in raw]
        assert {"twin", first.id} <= set(ids)
        shown = archive.search_text(QUERY, k=5)
        assert "twin" not in [h.item.id for h in shown] and "twin" in shown[0].duplicates
        assert shown[0].item.id == first.id
        one_stage = archive.search_text(QUERY, k=len(archive), rerank="none")  # no payload read: nothing to compare
        assert "twin" in [h.item.id for h in one_stage]
