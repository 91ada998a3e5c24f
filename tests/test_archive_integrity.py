"""Damage an archive can suffer without a crash of ours (issue 28): payload rows overwritten in items.sqlite, and
the commit record lost after half an add or half a remove. Each is refused with one line naming the archive, and
``index info`` / ``index repair`` say and fix what is wrong."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3

import pytest

from data_fixtures import tiny_archive
from mcmfh.archive import Archive
from mcmfh.cli import main
from mcmfh.index.codes import pack_codes
from mcmfh.index.local_store import ItemIndex

QUERY = "bright solid nodule in the right lung"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return tiny_archive(tmp_path_factory.mktemp("integrity"), n=96)


@pytest.fixture
def archive(chain, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(chain["idx"], out)
    return out


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_damaged_payload_rows_are_refused_not_used(archive, capsys):
    code, out, _ = cli(capsys, "search", archive, "--text", QUERY, "--k", "20", "--json")
    assert code == 0 and len(json.loads(out)["results"]) == 20
    with sqlite3.connect(archive / "images" / "items.sqlite") as db:  # the case: same length, random bytes
        rows = db.execute("SELECT key, length(payload) FROM items WHERE payload IS NOT NULL").fetchall()
        db.executemany("UPDATE items SET payload = ? WHERE key = ?", [(os.urandom(n), k) for k, n in rows])
    code, out, err = cli(capsys, "search", archive, "--text", QUERY, "--k", "20", "--json")
    line = one_line(err)
    assert code == 2 and out == ""
    assert f"{archive / 'images' / 'items.sqlite'}" in line and "fails its checksum" in line and "item '" in line
    code, out, _ = cli(capsys, "search", archive, "--text", QUERY, "--k", "20", "--json", "--rerank", "none")
    assert code == 0  # Hamming order needs no payload: still answers
    code, out, _ = cli(capsys, "index", "info", archive)
    assert json.loads(out)["integrity"]["payload_sealed_from"] == {"images": 0, "texts": 0}


def _new_records(chain, n=3):
    test = [r for r in chain["ds"].records if r.split == "test" and r.image is not None]
    return [dataclasses.replace(r, id=f"half-{r.id}") for r in test[:n]]


def test_half_an_add_without_its_commit_record_is_refused_reported_and_repaired(chain, archive, capsys):
    """`index add` killed after images/ committed, then commit.json deleted: images 70 / texts 67 must not be
    searched as if nothing happened."""
    new = _new_records(chain)
    with Archive.open(archive) as a:
        n0, n0_images = len(a), len(a.indexes["images"])
        codes = a.method.encode_images(a.encoder.encode_images([r.image for r in new]))
    with ItemIndex.open(archive / "images", writable=True) as images:  # what the killed writer had committed
        images.add(pack_codes(codes), [dataclasses.replace(r, source="ward") for r in new])
    (archive / "commit.json").unlink()

    code, out, _ = cli(capsys, "index", "info", archive)
    info = json.loads(out)
    assert code == 0 and info["counts"] == {"images": n0_images + 3, "texts": n0}
    assert info["integrity"]["commit_record"] is False and info["integrity"]["sub_indexes_agree"] is False
    assert info["integrity"]["partial_items"] == {"have an image row but no text row": 3}
    for args in (
        ("search", archive, "--text", QUERY),
        ("search", archive, "--image", new[0].image),
        ("index", "add", archive, "--dataset", "csv", "--data-root", chain["data"], "--splits", "test"),
    ):
        code, _, err = cli(capsys, *args)
        line = one_line(err)
        assert code == 2 and "sub-indexes disagree" in line and f"mcmfh index repair {archive}" in line, line
        assert new[0].id in line or "half-" in line
    with ItemIndex.open(archive / "images") as images:
        assert len(images) == n0_images + 3  # the refused add changed nothing

    code, out, _ = cli(capsys, "index", "repair", archive)
    assert code == 0 and "removed 3 partial item(s)" in out and new[0].id in out
    code, out, _ = cli(capsys, "index", "info", archive)
    integrity = json.loads(out)["integrity"]
    assert integrity["commit_record"] is True and integrity["sub_indexes_agree"] is True
    with Archive.open(archive, writable=True) as a:  # re-running the add completes it
        assert len(a.indexes["images"]) == n0_images and len(a) == n0
        assert a.add_records(new, source="ward") == {"images": 3, "texts": 3}
    code, out, _ = cli(capsys, "index", "repair", archive)
    assert code == 0 and "removed 0 partial item(s)" in out


def test_half_a_remove_without_its_commit_record_is_completed_by_repair(archive, capsys):
    with Archive.open(archive) as a:
        victim = next(it for it in a.indexes["texts"] if it.image is not None).id
        n0 = len(a)
    with ItemIndex.open(archive / "images", writable=True) as images:  # images/ removed it, texts/ not yet
        assert images.remove([victim]) == 1
    (archive / "commit.json").unlink()
    code, _, err = cli(capsys, "search", archive, "--text", QUERY)
    assert code == 2 and "1 item(s) have a text row but no image row" in one_line(err) and victim in err
    code, out, _ = cli(capsys, "index", "repair", archive)
    assert code == 0 and victim in out
    with Archive.open(archive) as a:
        assert a.get(victim) is None and len(a) == n0 - 1


def test_an_archive_without_a_record_whose_sub_indexes_agree_opens_as_before(archive, capsys):
    (archive / "commit.json").unlink()
    code, out, _ = cli(capsys, "search", archive, "--text", QUERY, "--json")
    assert code == 0 and json.loads(out)["results"]
    code, out, _ = cli(capsys, "index", "info", archive)
    integrity = json.loads(out)["integrity"]
    assert integrity["commit_record"] is False and integrity["sub_indexes_agree"] is True
