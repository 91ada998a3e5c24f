"""PACS sync against a real Orthanc + DICOMweb on 127.0.0.1 (marker ``pacs``; skipped without Orthanc unless
MCMFH_REQUIRE_PACS=1). Instances go in through STOW-RS; the archive is a tiny-encoder run on generated data."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcmfh.errors import MCMFHError

pytestmark = pytest.mark.pacs

if os.environ.get("MCMFH_REQUIRE_PACS") != "1":
    pytest.importorskip("dicomweb_client", reason="the pacs extra is not installed")

from pacs_server import PASSWORD, PATIENT, USER, FaultProxy, Orthanc, study  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKEN = "tok-very-secret-5561"
SECRETS = [*PATIENT.values(), "Zyxwv", "PID-73519", PASSWORD, TOKEN]
REPORT_A = "large bright solid nodule in the right upper lung with spiculated margins"
REPORT_B = "small cyst in the left kidney, no hydronephrosis"
REPORT_C = "fracture of the distal radius with dorsal angulation"
REPORT_D = "enlarged liver with diffuse fatty infiltration"


@pytest.fixture(scope="module")
def base_archive(tmp_path_factory):
    from data_fixtures import tiny_archive

    return tiny_archive(tmp_path_factory.mktemp("pacs-archive"))["idx"]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture
def pacs(orthanc):
    orthanc.clear()
    return orthanc


@pytest.fixture
def archive(base_archive, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(base_archive, out)
    return out


@pytest.fixture
def basic_auth(monkeypatch):
    monkeypatch.delenv("MCMFH_PACS_TOKEN", raising=False)
    monkeypatch.setenv("MCMFH_PACS_USER", USER)
    monkeypatch.setenv("MCMFH_PACS_PASSWORD", PASSWORD)


def run_sync(archive, url, **options):
    from mcmfh.pacs import PacsConfig, SyncOptions, sync

    return sync(archive, PacsConfig(url=url, backoff_s=0.05, timeout_s=options.pop("timeout_s", 30)),
                SyncOptions(**{"sr": True, **options}))  # fmt: skip


def assert_no_secrets(folder: Path, *outputs: str) -> None:
    """Grep every file under ``folder`` (binary included) and every output for the patient attributes and creds."""
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for s in SECRETS:
                assert s.encode() not in data, f"{s!r} found in {path}"
    for out in outputs:
        for s in SECRETS:
            assert s not in out, f"{s!r} found in output"


def state_rows(archive: Path) -> dict[str, tuple]:
    with sqlite3.connect(archive / "pacs" / "sync.sqlite") as db:
        rows = db.execute("SELECT sop_uid, study_uid, modality, body_part, study_date FROM instances").fetchall()
    return {r[0]: r[1:] for r in rows}


def test_sync_search_incremental_prune(pacs, archive, basic_auth, capsys):
    from mcmfh.archive import Archive

    with Archive.open(archive) as a:
        n0 = len(a)
    a_uid, a_sops, a_ds = study("CT", "CHEST", 3, REPORT_A, "20240110", "ACC-A", seed=1)
    b_uid, b_sops, b_ds = study("MR", "ABDOMEN", 2, REPORT_B, "20240220", "ACC-B", seed=2)
    c_uid, c_sops, c_ds = study("CR", "HAND", 1, None, "20240305", "ACC-C", seed=3)
    pacs.store(a_ds + b_ds + c_ds)

    r = run_sync(archive, pacs.url)
    assert (r.listed, r.new, r.added, r.no_report, r.failed, r.rendered) == (6, 6, 5, 1, 0, 5), r
    rows = state_rows(archive)
    assert set(rows) == set(a_sops + b_sops)
    assert rows[a_sops[0]] == (a_uid, "CT", "CHEST", "20240110")
    assert rows[b_sops[1]] == (b_uid, "MR", "ABDOMEN", "20240220")
    with Archive.open(archive) as a:
        assert len(a) == n0 + 5 and len(a.indexes["images"]) == n0 + 5
        assert a.get(a_sops[0]).text == REPORT_A and a.get(a_sops[0]).source == "pacs"
        hits = a.search_text(REPORT_B, k=5, target="texts", per_study=0)
        assert {h.item.id for h in hits if h.distance == 0} >= set(b_sops)
        image_hits = a.search_image(a.get(a_sops[2]).image, k=3, target="images", per_study=0)
        assert image_hits[0].distance == 0

    again = run_sync(archive, pacs.url)  # nothing new: lists only
    assert (again.new, again.added, again.fetched) == (1, 0, 0)  # C still has no report: retried, not fetched

    _, d_sops, d_ds = study("CT", "HEAD", 2, REPORT_D, "20240401", "ACC-D", seed=4)
    from pacs_server import sr_instance

    pacs.store(d_ds + [sr_instance(REPORT_C, c_uid, "20240305", "ACC-C")])
    r3 = run_sync(archive, pacs.url)
    assert (r3.new, r3.added, r3.fetched) == (3, 3, 3)
    with Archive.open(archive) as a:
        assert len(a) == n0 + 8 and a.get(c_sops[0]).text == REPORT_C

    pacs.delete_study(b_uid)
    assert run_sync(archive, pacs.url).pruned == 0  # without --prune nothing is removed
    with Archive.open(archive) as a:
        assert a.get(b_sops[0]) is not None
    r4 = run_sync(archive, pacs.url, prune=True)
    assert r4.pruned == 2
    with Archive.open(archive) as a:
        assert len(a) == n0 + 6 and a.get(b_sops[0]) is None and a.get(a_sops[0]) is not None
    assert set(state_rows(archive)) == set(a_sops + c_sops + d_sops)

    from mcmfh.cli import main

    assert main(["index", "sync", str(archive), "--dicomweb", pacs.url, "--no-progress"]) == 0
    assert main(["search", str(archive), "--text", REPORT_A, "--target", "texts", "--k", "3"]) == 0
    out = capsys.readouterr()
    assert "listed 6 instance(s); 0 new" in out.out and a_sops[0] in out.out
    assert_no_secrets(archive, out.out, out.err)


def test_filters_report_file_and_pixel_fetch(pacs, archive, basic_auth, tmp_path):
    from mcmfh.archive import Archive

    a_uid, a_sops, a_ds = study("CT", "CHEST", 2, None, "20230105", "ACC-1", seed=5)
    b_uid, b_sops, b_ds = study("CT", "CHEST", 2, None, "20240105", "ACC-2", seed=6)
    c_uid, c_sops, c_ds = study("MR", "HEAD", 2, None, "20240106", "ACC-3", seed=7)
    pacs.store(a_ds + b_ds + c_ds)
    reports = tmp_path / "reports.csv"
    with open(reports, "w", newline="") as f:
        csv.writer(f).writerows([("accession_number", "study_instance_uid", "report"), ("ACC-1", "", REPORT_A),
                                 ("", b_uid, REPORT_B), ("ACC-3", "", REPORT_C)])  # fmt: skip
    from mcmfh.pacs import Filters

    r = run_sync(archive, pacs.url, sr=False, reports=reports, fetch="pixels",
                 filters=Filters(modalities=("ct",), since="2024-01-01"))  # fmt: skip
    assert (r.listed, r.added, r.fetched, r.rendered) == (2, 2, 2, 0)
    assert set(state_rows(archive)) == set(b_sops)
    # pruning within a filter's scope leaves items outside it alone
    r2 = run_sync(archive, pacs.url, sr=False, reports=reports, filters=Filters(modalities=("MR",)), prune=True)
    assert (r2.added, r2.pruned) == (2, 0)
    with Archive.open(archive) as a:
        assert a.get(b_sops[0]).text == REPORT_B and a.get(c_sops[1]).text == REPORT_C
        assert a.get(a_sops[0]) is None

    bad = tmp_path / "bad.csv"
    bad.write_text("accession_number,report\nACC-1,\n")
    from mcmfh.cli import main

    code = main(["index", "sync", str(archive), "--dicomweb", pacs.url, "--reports", str(bad)])
    assert code == 2


def test_bearer_token_retries_and_errors(pacs, archive, base_archive, monkeypatch, capsys, tmp_path):
    from mcmfh.archive import Archive
    from mcmfh.cli import main

    _, sops, ds = study("CT", "CHEST", 4, REPORT_A, seed=8)
    pacs.store(ds)
    proxy = FaultProxy(pacs.url, TOKEN, fail_wado=3, no_root_instances=True)  # listing by the study walk
    try:
        monkeypatch.delenv("MCMFH_PACS_USER", raising=False)
        monkeypatch.setenv("MCMFH_PACS_TOKEN", "wrong-token")
        assert main(["index", "sync", str(archive), "--dicomweb", proxy.url, "--no-progress"]) == 2
        assert "HTTP 401" in capsys.readouterr().err
        monkeypatch.setenv("MCMFH_PACS_TOKEN", TOKEN)
        r = run_sync(archive, proxy.url)
        assert proxy.failed == 3 and (r.added, r.failed) == (4, 0)  # the 503s were retried with back-off
        assert f"Bearer {TOKEN}" in proxy.seen_auth
    finally:
        proxy.stop()
    _, more, ds2 = study("MR", "HEAD", 1, None, seed=9)
    pacs.store(ds2)
    other = shutil.copytree(base_archive, tmp_path / "other")
    reports = tmp_path / "reports.jsonl"
    reports.write_text(json.dumps({"study_instance_uid": ds2[0].StudyInstanceUID, "report": REPORT_B}) + "\n")
    slow = FaultProxy(pacs.url, TOKEN, delay_s=1.0)
    try:  # every WADO answer times out, also on retry: one clear line per instance, nothing added
        t0 = time.monotonic()
        r = run_sync(other, slow.url, timeout_s=0.3, sr=False, reports=reports)
        assert time.monotonic() - t0 < 30
    finally:
        slow.stop()
    assert (r.fetched, r.failed, r.added) == (1, 1, 0)
    assert r.errors == [f"instance {more[0]}: fetch failed (ConnectionError)"]
    with Archive.open(other) as a:
        assert a.get(more[0]) is None
    with Archive.open(archive) as a:
        assert all(a.get(s) for s in sops)
    with pytest.raises(MCMFHError, match="this archive syncs from"):  # one PACS per archive: prune stays safe
        run_sync(archive, pacs.url)
    assert main(["index", "sync", str(archive), "--dicomweb", "http://u:p@127.0.0.1:1/dicom-web"]) == 2
    out = capsys.readouterr()
    assert "no credentials in the URL" in out.err
    assert_no_secrets(archive, out.out, out.err)


@pytest.mark.slow  # a sync killed mid-way in a subprocess, then resumed: 15-25 s on 2 busy cores
def test_kill_mid_sync_then_resume(pacs, archive, tmp_path):
    from mcmfh.archive import Archive

    with Archive.open(archive) as a:
        n0 = len(a)
    sops, datasets = [], []
    for i in range(4):
        _, s, d = study("CT", "CHEST", 3, f"{REPORT_A} case {i}", seed=10 + i)
        sops += s
        datasets += d
    pacs.store(datasets)
    proxy = FaultProxy(pacs.url, TOKEN, delay_s=0.3)  # a slow PACS, so the kill lands mid-sync
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MCMFH_PACS_TOKEN": TOKEN}
    env.pop("MCMFH_PACS_USER", None)
    cmd = [sys.executable, "-m", "mcmfh", "index", "sync", str(archive), "--dicomweb", proxy.url,
           "--batch-size", "2", "--workers", "1", "--no-progress"]  # fmt: skip
    log = tmp_path / "sync.log"
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            done = 0
            while time.monotonic() < deadline and proc.poll() is None:
                db = archive / "pacs" / "sync.sqlite"
                if db.exists():
                    try:
                        done = len(state_rows(archive))
                    except sqlite3.Error:
                        done = 0
                if done >= 2:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, f"sync ended before the kill: {log.read_text()[-1000:]}"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        before = set(state_rows(archive))
        assert 2 <= len(before) < len(sops)
        # the resumed run with its progress on (stderr a pipe: plain lines), counting only what is left
        resume = [c for c in cmd if c != "--no-progress"] + ["--json"]
        r = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        proxy.stop()
    assert set(state_rows(archive)) == set(sops)
    with Archive.open(archive) as a:
        assert len(a) == n0 + len(sops) and len(a.indexes["images"]) == n0 + len(sops)
    assert f'"new": {len(sops) - len(before)}' in r.stdout
    left = len(sops) - len(before)
    assert f"index sync: {left}/{left} instance (100%)" in r.stderr, r.stderr[-2000:]
    assert_no_secrets(archive, log.read_text(), r.stdout, r.stderr)


def test_a_wrong_url_binds_nothing_and_repoint_moves_the_archive(pacs, archive, basic_auth, capsys):
    """Issue 28: a typo'd URL (404) must not be remembered; moving an archive to another URL is one --repoint."""
    from mcmfh.cli import main

    _, sops, ds = study("CT", "CHEST", 2, REPORT_A, seed=30)
    pacs.store(ds)

    def sync_cli(url: str, *extra: str) -> tuple[int, str]:
        code = main(["index", "sync", str(archive), "--dicomweb", url, "--no-progress", *extra])
        out = capsys.readouterr()
        return code, out.out + out.err

    code, said = sync_cli(pacs.url.replace("/dicom-web", "/dicomweb"))
    assert code == 2 and "QIDO-RS answered HTTP 404" in said and "DICOMweb root" in said
    code, said = sync_cli(pacs.url)  # the right URL is not refused
    assert code == 0 and "2 added" in said
    moved = pacs.url.replace("127.0.0.1", "localhost")  # the same PACS under another name, as after a move
    code, said = sync_cli(moved)
    assert code == 2 and f"this archive syncs from {pacs.url}, not {moved}" in said and "--repoint" in said
    code, said = sync_cli(moved, "--repoint", "--prune")
    assert code == 2 and "--repoint with --prune" in said
    code, said = sync_cli(moved, "--repoint")
    assert code == 0 and f"re-pointed this archive from {pacs.url} to {moved}" in said and "0 new" in said
    with sqlite3.connect(archive / "pacs" / "sync.sqlite") as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'source'").fetchone() == (moved,)
    code, said = sync_cli(pacs.url)
    assert code == 2 and f"this archive syncs from {moved}" in said
    assert set(state_rows(archive)) == set(sops)
