"""A small DICOMweb server on 127.0.0.1 that misbehaves on purpose, for the PACS cases a real Orthanc will not
produce: QIDO-RS paging that ignores ``offset``, answers that are not QIDO JSON (an HTML login page with 200, JSON cut
off, JSON of the wrong shape, a body that breaks off), objects a client cannot decode, a PACS that dies mid-sync.

It serves the given pydicom datasets: ``/instances`` (QIDO-RS, all instances, honouring ``limit``/``offset`` unless
told not to) and WADO-RS instance retrieval as ``multipart/related``; rendered frames are refused (406), so the
client falls back to pixel data and decodes it itself.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# The instance-level fields QIDO-RS answers with (the study/series ones an all-instances query includes).
QIDO_TAGS = ("0020000D", "0020000E", "00080018", "00080060", "00180015", "00080020", "00080050", "00280008",
             "00200013", "00100010")  # fmt: skip
BOUNDARY = "mcmfh-fake-3f9a1c"


def part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class FakeDicomweb:
    """``qido``: None (serve the datasets) or (status, content type, body) to answer every QIDO-RS request with;
    ``cut_qido``: announce the full QIDO body but send half and close; ``ignore_offset``: every page starts at 0;
    ``die_after``: WADO-RS requests answered before the server drops every later connection unanswered."""

    def __init__(self, datasets: Sequence = (), *, qido: tuple[int, str, bytes] | None = None, cut_qido: bool = False,
                 ignore_offset: bool = False, die_after: int | None = None) -> None:  # fmt: skip
        self.datasets = list(datasets)
        self.by_sop = {str(d.SOPInstanceUID): part10(d) for d in self.datasets}
        self.qido_requests = self.wado_requests = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                path = urlsplit(self.path).path
                if path.endswith("/rendered"):
                    return self._send(406, "text/plain", b"not rendered here")
                if path.rstrip("/").endswith("/instances"):
                    with fake._lock:
                        fake.qido_requests += 1
                    if qido is not None:
                        return self._send(*qido)
                    body = fake.page(parse_qs(urlsplit(self.path).query), ignore_offset)
                    if cut_qido:
                        return self._send(200, "application/dicom+json", body, cut=True)
                    return self._send(200, "application/dicom+json", body)
                with fake._lock:
                    fake.wado_requests += 1
                    dead = die_after is not None and fake.wado_requests > die_after
                if dead:  # the PACS is gone: the connection closes without an answer
                    self.close_connection = True
                    return None
                data = fake.by_sop.get(path.rstrip("/").rsplit("/", 1)[-1])
                if data is None:
                    return self._send(404, "text/plain", b"no such instance")
                body = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
                        + f"\r\n--{BOUNDARY}--".encode())  # fmt: skip
                ctype = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
                return self._send(200, ctype, body)

            def _send(self, status: int, ctype: str, body: bytes, cut: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)
                if cut:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def page(self, query: dict[str, list[str]], ignore_offset: bool) -> bytes:
        import json

        limit = int(query.get("limit", [len(self.datasets)])[0])
        offset = 0 if ignore_offset else int(query.get("offset", ["0"])[0])
        rows = []
        for ds in self.datasets[offset : offset + limit]:
            full = ds.to_json_dict(bulk_data_threshold=1 << 20, bulk_data_element_handler=lambda _: "")
            rows.append({tag: full[tag] for tag in QIDO_TAGS if tag in full})
        return json.dumps(rows).encode()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeDicomweb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
