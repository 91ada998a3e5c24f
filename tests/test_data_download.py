"""Downloads and ``prepare`` against a local HTTP server (127.0.0.1) serving small archives in the real formats."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from data_fixtures import pmc_archive, png_bytes, write_openi_nlm, write_roco
from mcmfh.cli import main
from mcmfh.data import load_dataset
from mcmfh.data.download import DownloadConfig, download
from mcmfh.data.prepare import prepare
from mcmfh.errors import DataError

QUIET = DownloadConfig(retries=2, backoff_s=0.0, timeout_s=10, chunk_bytes=1024, progress=False)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.log.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng and not srv.ignore_range else 0
        if start >= len(data) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in srv.drop_once:  # announce everything, send half, hang up
            srv.drop_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.log, srv.drop_once, srv.ignore_range = {}, [], set(), False
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


BLOB = bytes(range(256)) * 400  # 100 KiB


def test_download_verifies_size_and_renames_atomically(server, tmp_path):
    server.files["/a.bin"] = BLOB
    dest = download(f"{server.url}/a.bin", tmp_path / "a.bin", sha256=hashlib.sha256(BLOB).hexdigest(), config=QUIET)
    assert dest.read_bytes() == BLOB and not (tmp_path / "a.bin.part").exists()
    download(f"{server.url}/a.bin", dest, config=QUIET)  # already complete: no request
    assert len(server.log) == 1


def test_dropped_connection_is_resumed_with_range(server, tmp_path):
    server.files["/a.bin"] = BLOB
    server.drop_once.add("/a.bin")
    dest = download(f"{server.url}/a.bin", tmp_path / "a.bin", config=QUIET)
    assert dest.read_bytes() == BLOB
    assert server.log[0][1] is None and server.log[1][1] == f"bytes={len(BLOB) // 2}-"


def test_rerun_after_failed_attempts_resumes_the_part_file(server, tmp_path):
    server.files["/a.bin"] = BLOB
    server.drop_once.add("/a.bin")
    once = DownloadConfig(retries=0, backoff_s=0, progress=False)
    with pytest.raises(DataError, match="run again to resume"):
        download(f"{server.url}/a.bin", tmp_path / "a.bin", config=once)
    part = tmp_path / "a.bin.part"
    assert part.stat().st_size == len(BLOB) // 2 and not (tmp_path / "a.bin").exists()
    assert download(f"{server.url}/a.bin", tmp_path / "a.bin", config=once).read_bytes() == BLOB
    assert server.log[-1][1] == f"bytes={len(BLOB) // 2}-"


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.files["/a.bin"] = BLOB
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(b"stale bytes")
    assert download(f"{server.url}/a.bin", tmp_path / "a.bin", config=QUIET).read_bytes() == BLOB


def test_checksum_mismatch_and_http_errors(server, tmp_path):
    server.files["/a.bin"] = BLOB
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        download(f"{server.url}/a.bin", tmp_path / "a.bin", sha256="0" * 64, config=QUIET)
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()
    with pytest.raises(DataError, match="HTTP 404"):
        download(f"{server.url}/missing.bin", tmp_path / "m.bin", config=QUIET)


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_prepare_openi_official_archives(server, tmp_path):
    src = write_openi_nlm(tmp_path / "src")
    xml = {f"ecgen-radiology/{p.name}": p.read_bytes() for p in (src / "ecgen-radiology").glob("*.xml")}
    server.files["/imgs/collections/NLMCXR_reports.tgz"] = _tgz(xml)
    pngs = {f"CXR{s}.png": png_bytes() for s in ("1_IM-0001-4001", "1_IM-0001-3001", "2_IM-0652-1001")}
    pngs["../evil.png"] = b"outside"  # unsafe member names are never extracted
    server.files["/imgs/collections/NLMCXR_png.tgz"] = _tgz(pngs)
    server.drop_once.add("/imgs/collections/NLMCXR_png.tgz")
    out = tmp_path / "openi"
    prepare("openi", out, base_url=f"{server.url}/imgs/collections/", config=QUIET)
    assert not (tmp_path / "evil.png").exists()
    ds = load_dataset("openi", out, skip_bad=True)
    assert sum(r.image is not None for r in ds.records) == 3 and len(ds.report.missing_images) == 1
    assert json.loads((out / "prepare.json").read_text())["reports"] == 5
    n = len(server.log)
    prepare("openi", out, base_url=f"{server.url}/imgs/collections/", config=QUIET)  # complete: nothing fetched
    assert len(server.log) == n


def test_prepare_roco_fetches_each_pmc_package_once(server, tmp_path):
    src = write_roco(tmp_path / "src")
    base = "/pub/pmc/oa_package/ab/cd"
    server.files[f"{base}/PMC100001.tar.gz"] = pmc_archive(
        "PMC100001", {"gr1.jpg": png_bytes(), "gr2.jpg": png_bytes()}
    )
    server.files[f"{base}/PMC100002.tar.gz"] = pmc_archive("PMC100002", {"fig3.png": png_bytes()})  # fig4 absent
    out = tmp_path / "roco"
    prepare("roco", out, base_url=f"{server.url}/pub/pmc/", source=src, config=QUIET, subset="non-radiology")
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["images_fetched"] == 3 and len(summary["failed"]) == 2  # PMC100003 404, fig4.png not in package
    assert [p for p, _ in server.log].count(f"{base}/PMC100001.tar.gz") == 1
    assert not list((out / ".downloads" / "pmc").glob("*.tar.gz"))  # packages removed after extraction
    ds = load_dataset("roco", out)
    assert sum(r.image is not None for r in ds.records) == 3 and len(ds.report.missing_images) == 2
    server.files[f"{base}/PMC100003.tar.gz"] = pmc_archive("PMC100003", {"f1.jpg": png_bytes()})
    server.log.clear()
    prepare("roco", out, base_url=f"{server.url}/pub/pmc/", source=src, config=QUIET)
    assert {p.rsplit("/", 1)[1] for p, _ in server.log} == {"PMC100002.tar.gz", "PMC100003.tar.gz"}
    assert len(load_dataset("roco", out).report.missing_images) == 1


def _medpix_zip(ref: str) -> bytes:
    top = f"MedPix-2.0-{ref}/MedPix-2-0"
    desc = [
        {"Type": "CT", "U_id": "MPX1", "image": "MPX1_synpic1", "Location": "Abdomen", "Location Category": "Abdomen",
         "Description": {"Caption": "Large  liver\nmass.", "Modality": "CT w/contrast", "Plane": "Axial",
                         "ACR Codes": "7.3", "Age": "50", "Sex": "male"}},
        {"Type": "MR", "U_id": "MPX2", "image": "MPX2_synpic2", "Location": "Brain", "Location Category": "Head",
         "Description": {"Caption": "Bleed.", "Modality": "MR - T2", "Plane": "Axial"}},
        {"Type": "MR", "U_id": "MPX3", "image": "MPX3_synpic3", "Location": "Spine", "Location Category": "Spine",
         "Description": {"Caption": "Not in any split."}},
    ]  # fmt: skip
    cases = [
        {"U_id": "MPX1", "Case": {"Title": "Hepatoma", "History": "Pain"}, "Topic": {"Category": "Neoplasm"}},
        {"U_id": "MPX2", "Case": {"Title": "Bleed"}, "Topic": {"Category": "Trauma"}},
    ]
    split = {"train": ["MPX1"], "train_1": ["MPX1"], "dev": [], "test": ["MPX2"]}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{top}/Descriptions.json", json.dumps(desc))
        z.writestr(f"{top}/Case_topic.json", json.dumps(cases))
        z.writestr(f"{top}/splitted_dataset/uid_list.json", json.dumps(split))
        for i in (1, 2, 3):
            z.writestr(f"{top}/images/MPX{i}_synpic{i}.png", png_bytes())
    return buf.getvalue()


def test_prepare_medpix2_from_repository_archive(server, tmp_path):
    server.files["/archive/abc123.zip"] = _medpix_zip("abc123")
    out = tmp_path / "mp"
    prepare("medpix2", out, base_url=f"{server.url}/archive/", ref="abc123", config=QUIET)
    ds = load_dataset("medpix2", out)
    r = {x.id: x for x in ds.records}
    assert set(r) == {"MPX1_synpic1", "MPX2_synpic2"}
    assert r["MPX1_synpic1"].text == "Large liver mass." and r["MPX1_synpic1"].split == "train"
    assert r["MPX1_synpic1"].labels == ("loc:Abdomen", "cat:Neoplasm") and r["MPX2_synpic2"].split == "test"
    coarse = load_dataset("medpix2", out, label_set="labels_coarse")
    assert {x.id: x for x in coarse.records}["MPX2_synpic2"].labels == ("type:MR", "loccat:Head")
    assert json.loads((out / "prepare.json").read_text())["dropped"] == {"no_split": 1, "no_image": 0}


def test_cli_prepare(server, tmp_path, capsys):
    src = write_openi_nlm(tmp_path / "src")
    xml = {f"ecgen-radiology/{p.name}": p.read_bytes() for p in (src / "ecgen-radiology").glob("*.xml")}
    server.files["/c/NLMCXR_reports.tgz"] = _tgz(xml)
    out = tmp_path / "openi"
    args = ["prepare", "openi", "--out", str(out), "--base-url", f"{server.url}/c/", "--no-images", "--quiet"]
    assert main(args) == 0
    assert (out / "ecgen-radiology" / "1.xml").is_file() and not (out / "NLMCXR_png").exists()
    assert main(["prepare", "imagenet", "--out", str(out)]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_prepare_roco_text_from_repository_archive(server, tmp_path):
    src = write_roco(tmp_path / "flat")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in src.rglob("*.txt"):
            split = p.parent.name
            z.writestr(f"roco-dataset-abc/data/{split}/radiology/{p.name}", p.read_bytes())
        z.writestr("roco-dataset-abc/README.md", "ROCO")
    server.files["/roco.zip"] = buf.getvalue()
    out = tmp_path / "roco"
    prepare("roco", out, config=QUIET, text_url=f"{server.url}/roco.zip", images=False)
    ds = load_dataset("roco", out)
    assert ds.split_counts() == {"train": 3, "dev": 1, "test": 1}
    assert (out / "train" / "licences.txt").read_bytes() == (src / "train" / "licences.txt").read_bytes()


def test_prepare_medpix2_from_checkout_and_interrupted_download(server, tmp_path):
    checkout = tmp_path / "checkout"
    with zipfile.ZipFile(io.BytesIO(_medpix_zip("abc"))) as z:
        z.extractall(checkout)
    out = prepare("medpix2", tmp_path / "a", source=checkout, config=QUIET)
    assert len(load_dataset("medpix2", out)) == 2
    # The server hangs up and every retry fails: no medpix2.csv, so nothing looks complete; a rerun finishes.
    server.files["/archive/abc.zip"] = _medpix_zip("abc")
    server.drop_once.add("/archive/abc.zip")
    once = DownloadConfig(retries=0, backoff_s=0, progress=False)
    with pytest.raises(DataError, match="run again to resume"):
        prepare("medpix2", tmp_path / "b", base_url=f"{server.url}/archive/", ref="abc", config=once)
    with pytest.raises(DataError, match="mcmfh prepare medpix2"):
        load_dataset("medpix2", tmp_path / "b")
    prepare("medpix2", tmp_path / "b", base_url=f"{server.url}/archive/", ref="abc", config=once)
    assert len(load_dataset("medpix2", tmp_path / "b")) == 2
