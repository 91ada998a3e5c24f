"""A real Orthanc with the DICOMweb plugin on 127.0.0.1 for the ``pacs`` tests, a fault-injecting proxy in front of
it (bearer auth, 503s, delays), and generated CT/MR/CR instances and Basic Text SR reports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")
USER, PASSWORD = "sync-user", "s3cret-Pw-8812"
# Patient attributes the generated instances carry; none may ever appear in anything the sync writes or prints.
PATIENT = {"PatientName": "Zyxwv^Quentin^Private", "PatientID": "PID-73519-SECRET", "PatientBirthDate": "19010203"}
START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plugin_path() -> Path | None:
    for d in PLUGIN_DIRS:
        p = Path(d) / "libOrthancDicomWeb.so"
        if p.is_file():
            return p
    return None


class Orthanc:
    def __init__(self, root: Path) -> None:
        plugin = plugin_path()
        if not Path(ORTHANC).is_file() or plugin is None:
            reason = "Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
            if os.environ.get("MCMFH_REQUIRE_PACS") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
        self.root = root
        self.port = free_port()
        config = {
            "Name": "mcmfh-test",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "storage"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (root / "orthanc.json").write_text(json.dumps(config))
        self.log = open(root / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/dicom-web"
        self._wait()

    def _wait(self) -> None:
        import requests

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if requests.get(f"{self.base}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"Orthanc did not start in {START_TIMEOUT_S}s: {(self.root / 'orthanc.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.close()

    def client(self):
        import requests
        from dicomweb_client import DICOMwebClient

        session = requests.Session()
        session.auth = (USER, PASSWORD)
        return DICOMwebClient(self.url, session=session)

    def store(self, datasets) -> None:
        self.client().store_instances(list(datasets))

    def delete_study(self, study_uid: str) -> None:
        import requests

        auth = (USER, PASSWORD)
        found = requests.post(f"{self.base}/tools/lookup", data=study_uid, auth=auth, timeout=10).json()
        for hit in found:
            if hit["Type"] == "Study":
                requests.delete(f"{self.base}/studies/{hit['ID']}", auth=auth, timeout=10).raise_for_status()

    def clear(self) -> None:
        import requests

        auth = (USER, PASSWORD)
        for study in requests.get(f"{self.base}/studies", auth=auth, timeout=10).json():
            requests.delete(f"{self.base}/studies/{study}", auth=auth, timeout=10).raise_for_status()


class FaultProxy:
    """Forwards to Orthanc with basic auth, requiring ``Authorization: Bearer TOKEN`` from the client; can answer
    503 to the first ``fail_wado`` WADO requests, delay each WADO answer by ``delay_s``, and refuse (400) the
    all-instances QIDO query as some PACS do (``no_root_instances``)."""

    def __init__(self, upstream: str, token: str, fail_wado: int = 0, delay_s: float = 0.0,
                 no_root_instances: bool = False) -> None:  # fmt: skip
        import requests

        proxy = self
        root = upstream.split("/dicom-web")[0]
        self.fail_wado, self.delay_s, self.failed, self.seen_auth = fail_wado, delay_s, 0, set()
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                with proxy._lock:
                    proxy.seen_auth.add(self.headers.get("Authorization", ""))
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                if no_root_instances and self.path.startswith("/dicom-web/instances"):
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                wado = "/instances/" in self.path and not self.path.rstrip("/").endswith("/instances")
                if wado:
                    with proxy._lock:
                        fail = proxy.failed < proxy.fail_wado
                        proxy.failed += fail
                    if fail:
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    time.sleep(proxy.delay_s)
                up = requests.get(root + self.path, auth=(USER, PASSWORD), timeout=30,
                                  headers={"Accept": self.headers.get("Accept", "*/*")})  # fmt: skip
                self.send_response(up.status_code)
                self.send_header("Content-Type", up.headers.get("Content-Type", "application/octet-stream"))
                self.send_header("Content-Length", str(len(up.content)))
                self.end_headers()
                self.wfile.write(up.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = upstream.replace(root, f"http://127.0.0.1:{self.server.server_address[1]}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------------ instances
def _base(modality: str, study_uid: str, series_uid: str, study_date: str, accession: str, sop_class: str):
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = FileDataset("", Dataset(), file_meta=FileMetaDataset(), preamble=b"\0" * 128)  # Part 10, as a PACS keeps it
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.AccessionNumber, ds.Modality = study_date, accession, modality
    ds.StudyID, ds.SeriesNumber = "1", 1
    for k, v in PATIENT.items():
        setattr(ds, k, v)
    return ds


IMAGE_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
}
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def image_instances(modality: str, body_part: str, n: int, study_uid: str, study_date: str, accession: str,
                    seed: int = 0, side: int = 32):  # fmt: skip
    """``n`` instances of one series: 16-bit grey images with a bright blob at a seed-dependent place."""
    from pydicom.uid import generate_uid

    series_uid = generate_uid()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ds = _base(modality, study_uid, series_uid, study_date, accession, IMAGE_CLASSES[modality])
        ds.BodyPartExamined, ds.InstanceNumber = body_part, i + 1
        yy, xx = np.mgrid[:side, :side]
        cy, cx = rng.integers(6, side - 6, size=2)
        img = 200 + 1500 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0) + rng.normal(0, 20, (side, side))
        arr = np.clip(img, 0, 4095).astype(np.uint16)
        ds.Rows = ds.Columns = side
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
        ds.PhotometricInterpretation = "MONOCHROME1" if modality == "CR" else "MONOCHROME2"
        if modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = arr.tobytes()
        out.append(ds)
    return out


def sr_instance(text: str, study_uid: str, study_date: str, accession: str, content_date: str = "20240101"):
    """A Basic Text SR whose content tree holds ``text`` in a TEXT item under a container."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    ds = _base("SR", study_uid, generate_uid(), study_date, accession, BASIC_TEXT_SR)
    ds.InstanceNumber, ds.ContentDate, ds.ContentTime = 1, content_date, "120000"
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag, ds.ContinuityOfContent = "CONTAINER", "COMPLETE", \
        "UNVERIFIED", "SEPARATE"  # fmt: skip
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121070", "DCM", "Findings"
    ds.ConceptNameCodeSequence = Sequence([name])
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
    item.ConceptNameCodeSequence = Sequence([name])
    ds.ContentSequence = Sequence([item])
    return ds


def study(modality: str, body_part: str, n: int, report: str | None, study_date: str = "20240315",
          accession: str = "", seed: int = 0, side: int = 32):  # fmt: skip
    """A study: ``n`` image instances plus (if ``report``) one SR. Returns (study_uid, sop_uids, datasets)."""
    from pydicom.uid import generate_uid

    uid = generate_uid()
    images = image_instances(modality, body_part, n, uid, study_date, accession, seed, side)
    datasets = images + ([sr_instance(report, uid, study_date, accession)] if report else [])
    return uid, [d.SOPInstanceUID for d in images], datasets
