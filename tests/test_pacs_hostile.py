"""PACS sync against a small misbehaving DICOMweb server on 127.0.0.1 (issue 28): paging that ignores ``offset``,
answers that are not QIDO JSON, objects that cannot be decoded, a PACS that dies mid-sync, a listing that empties,
and a missing ``pacs`` extra. Every case is bounded (a few instances, a few requests) and ends in one clear line
and the exit code a scheduler can act on."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest

if os.environ.get("MCMFH_REQUIRE_PACS") != "1":
    pytest.importorskip("dicomweb_client", reason="the pacs extra is not installed")

from dicomweb_fake import FakeDicomweb  # noqa: E402
from mcmfh.cli import main  # noqa: E402
from pacs_server import PATIENT, image_instances  # noqa: E402

STUDY = "1.2.826.0.1.3680043.8.498.1001"
REPORT = "spiculated nodule in the right upper lobe"


@pytest.fixture(scope="module")
def base_archive(tmp_path_factory):
    from data_fixtures import tiny_archive

    return tiny_archive(tmp_path_factory.mktemp("hostile-archive"))["idx"]


@pytest.fixture
def archive(base_archive, tmp_path, monkeypatch):
    for name in ("MCMFH_PACS_TOKEN", "MCMFH_PACS_USER", "MCMFH_PACS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "idx"
    shutil.copytree(base_archive, out)
    return out


@pytest.fixture
def reports(tmp_path):
    path = tmp_path / "reports.csv"
    path.write_text(f"study_instance_uid,report\n{STUDY},{REPORT}\n")
    return path


def instances(n: int, seed: int = 0):
    return image_instances("CT", "CHEST", n, STUDY, "20240105", "ACC-9", seed=seed, side=16)


def sync(capsys, archive, url, reports, *extra: str) -> tuple[int, str, str]:
    code = main(["index", "sync", str(archive), "--dicomweb", url, "--reports", str(reports), "--no-progress",
                 "--retries", "0", "--timeout", "5", *extra])  # fmt: skip
    out = capsys.readouterr()
    for secret in PATIENT.values():  # the QIDO rows carry PatientName: it never reaches the output
        assert secret not in out.out + out.err
    return code, out.out, out.err


def one_error(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "internal error" not in lines[0]
    return lines[0]


def source_of(archive) -> str | None:
    with sqlite3.connect(archive / "pacs" / "sync.sqlite") as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'source'").fetchone()
    return row and row[0]


def synced(archive) -> int:
    with sqlite3.connect(archive / "pacs" / "sync.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]


# --- QIDO-RS paging -------------------------------------------------------------------------------------------------


def test_a_pacs_that_ignores_offset_is_stopped_at_its_second_page(capsys, archive, reports):
    with FakeDicomweb(instances(7), ignore_offset=True) as pacs:
        code, _, err = sync(capsys, archive, pacs.url, reports, "--page-size", "5")
        assert pacs.qido_requests == 2 and pacs.wado_requests == 0
    line = one_error(code, err)
    assert "does not honour 'offset'" in line and "page 2" in line
    assert source_of(archive) is None  # a failed listing binds nothing


def test_paging_follows_offset_and_stops_at_the_page_limit(capsys, archive, reports):
    with FakeDicomweb(instances(7)) as pacs:
        code, _, err = sync(capsys, archive, pacs.url, reports, "--page-size", "2", "--max-pages", "3")
        assert pacs.qido_requests == 4  # 3 pages, then the 4th still had results
        assert "did not end after 3 pages of 2" in one_error(code, err)
        code, out, err = sync(capsys, archive, pacs.url, reports, "--page-size", "2", "--max-pages", "4", "--json")
        assert pacs.qido_requests == 4 + 5  # 4 pages of results and the empty one that ends the listing
    result = json.loads(out)
    assert code == 0 and (result["listed"], result["added"], result["status"]) == (7, 7, "complete"), err


# --- answers that are not QIDO-RS JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ((200, "text/html", b"<!DOCTYPE html><html><body><form>Sign in</form></body></html>"), "an HTML page"),
        ((200, "application/dicom+json", b'[{"0020000D": {"vr": "UI", "Value": ["1.2'), "cut off or malformed"),
        ((200, "application/dicom+json", b"[1, 2, 3]"), "item 0 is not a DICOM dataset (a JSON number)"),
        ((200, "application/dicom+json", b'{"studies": 3}'), "not a DICOM dataset (a JSON object whose values"),
        ((200, "application/json", b'"ok"'), "not a list of datasets (a JSON string)"),
        ((200, "application/dicom+json", b'[{"00080060": {"vr": "CS", "Value": ["CT"]}}]'), "lacks its Study"),
        (None, "broke off mid-transfer"),
    ],
    ids=["html-login", "truncated", "list-of-numbers", "object", "string", "no-uids", "cut-connection"],
)
def test_a_malformed_qido_answer_says_the_pacs_answered(capsys, archive, reports, answer, says):
    with FakeDicomweb(instances(2), qido=answer, cut_qido=answer is None) as pacs:
        code, _, err = sync(capsys, archive, pacs.url, reports)
    line = one_error(code, err)
    assert "the PACS answered" in line and says in line and "cannot reach" not in line, line
    assert source_of(archive) is None


# --- decode failures, partial runs ----------------------------------------------------------------------------------


def undecodable():
    """A JPEG-LS object (no decoder here), one without pixel data, one whose header says 60000 x 60000."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    jpeg_ls, no_pixels, huge = instances(3, seed=5)
    jpeg_ls.file_meta.TransferSyntaxUID = JPEGLSLossless
    jpeg_ls.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64)])
    jpeg_ls["PixelData"].VR = "OB"
    del no_pixels.PixelData
    huge.Rows = huge.Columns = 60000
    return jpeg_ls, no_pixels, huge


def test_decode_failures_are_named_with_their_remedy_and_make_the_run_partial(capsys, archive, reports):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    jpeg_ls, no_pixels, huge = undecodable()
    good = instances(2, seed=9)
    with FakeDicomweb([jpeg_ls, no_pixels, huge, *good]) as pacs:
        code, out, err = sync(capsys, archive, pacs.url, reports, "--workers", "1")
        assert code == 3 and "partial sync" in err, (code, err)
        if not get_decoder(JPEGLSLossless).is_available:
            assert (
                f"warning: instance {jpeg_ls.SOPInstanceUID}: decode failed: transfer syntax JPEG-LS Lossless "
                "Image Compression (1.2.840.10008.1.2.4.80) has no decoder installed here (install "
            ) in err
            assert "pylibjpeg-libjpeg" in err and "--fetch auto" not in err  # this server renders nothing
        assert (
            f"warning: instance {huge.SOPInstanceUID}: decode failed: DICOM image has 60000x60000x1 pixels, over "
            "the limit of 50000000 (MCMFH_MAX_IMAGE_PIXELS raises the limit)"
        ) in err
        assert str(no_pixels.SOPInstanceUID) not in err  # not an image: no failure
        assert "2 added" in out and "2 failed, 1 not images" in out and "failed: 1 x instance: decode failed" in out
        assert pacs.wado_requests == 5
        code, out, err = sync(capsys, archive, pacs.url, reports, "--json", "--fetch", "pixels")
        assert code == 3 and pacs.wado_requests == 5 + 2  # the object without pixel data is not fetched again
        if not get_decoder(JPEGLSLossless).is_available:  # asked for pixels: the rendered frame is a way out
            assert "or let the PACS render it (--fetch auto" in err
    result = json.loads(out)
    assert (result["new"], result["failed"], result["status"]) == (2, 2, "partial")
    assert sum(result["failures"].values()) == 2 and len(result["errors"]) == 2


def test_a_pacs_that_dies_mid_sync_gives_a_partial_exit_code(capsys, archive, reports):
    from mcmfh.archive import Archive

    datasets = instances(6, seed=11)
    with FakeDicomweb(datasets, die_after=2) as pacs:
        code, out, err = sync(capsys, archive, pacs.url, reports, "--workers", "1", "--batch-size", "2")
    assert code == 3, (code, err)
    assert "2 added" in out and "4 failed" in out and "failed: 4 x instance: fetch failed (ConnectionError)" in out
    assert "partial sync: 4 instance(s)/report(s) failed" in err
    assert synced(archive) == 2
    with Archive.open(archive) as a:  # what came before the PACS died is committed
        assert {it.id for it in a.indexes["texts"] if it.source == "pacs"} == {
            str(d.SOPInstanceUID) for d in datasets[:2]
        }


# --- prune guard ----------------------------------------------------------------------------------------------------


def test_prune_refuses_an_empty_or_shrunken_listing_unless_forced(capsys, archive, reports):
    from mcmfh.archive import Archive

    with Archive.open(archive) as a:
        n0 = len(a)
    datasets = instances(8, seed=21)
    with FakeDicomweb(datasets) as pacs:
        code, out, _ = sync(capsys, archive, pacs.url, reports)
        assert code == 0 and "8 added" in out
        pacs.datasets = []  # a proxy now answers every query with []
        code, _, err = sync(capsys, archive, pacs.url, reports, "--prune")
        line = one_error(code, err)
        assert "listed no instances" in line and "would remove all 8" in line and "--force" in line
        assert synced(archive) == 8
        pacs.datasets = datasets[:5]  # 3 of 8 gone: 38%, over the default quarter
        code, _, err = sync(capsys, archive, pacs.url, reports, "--prune")
        assert "would remove 3 of 8 synced item(s)" in one_error(code, err) and synced(archive) == 8
        code, out, _ = sync(capsys, archive, pacs.url, reports, "--prune", "--prune-max-share", "0.5")
        assert code == 0 and "3 pruned" in out and synced(archive) == 5
        pacs.datasets = []
        code, out, _ = sync(capsys, archive, pacs.url, reports, "--prune", "--force")
        assert code == 0 and "5 pruned" in out and synced(archive) == 0
    with Archive.open(archive) as a:
        assert len(a) == n0  # only what the sync added was ever removed


# --- without the pacs extra -----------------------------------------------------------------------------------------


def test_sync_without_the_pacs_extra_says_what_to_install(archive, tmp_path):
    from test_bad_inputs import one_error_line, run_cli

    hide = "import sys\nsys.modules['dicomweb_client'] = None  # as if the pacs extra were not installed"
    r = run_cli("index", "sync", str(archive), "--dicomweb", "http://127.0.0.1:9/dicom-web", patch=hide)
    line = one_error_line(r, "pacs extra", "pip install 'mcmfh[pacs]'")
    assert "dicomweb_client" in line
