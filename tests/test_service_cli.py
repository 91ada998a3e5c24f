"""`mcmfh serve`: bind policy, token rules, engine loading, and a real uvicorn server on a loopback port."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mcmfh.cli import main
from mcmfh.errors import MCMFHError
from mcmfh.service import archive_engine
from mcmfh.service import server as server_module
from mcmfh.service.app import create_app
from mcmfh.service.security import bearer_matches, check_bind, is_loopback_host
from mcmfh.service.settings import Settings
from service_fake import TEXTS, FakeEngine, pattern_image, png_bytes, running_server

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.5.5.5", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                                ("::", False), ("192.168.1.20", False), ("10.0.0.1", False),
                                                ("no-such-host.invalid", False)])  # fmt: skip
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_check_bind_and_bearer() -> None:
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(MCMFHError, match="without --token"):
        check_bind("0.0.0.0", None)
    assert bearer_matches(f"Bearer {TOKEN}", TOKEN) and bearer_matches(f"bearer  {TOKEN} ", TOKEN)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ", f"Bearer {TOKEN[:-1]}"):
        assert not bearer_matches(header, TOKEN)


class _StubServer:
    """Stands in for uvicorn in CLI tests: records the app instead of listening."""

    def __init__(self, app, host: str, port: int, settings=None) -> None:
        self.app, self.host, self.port, self.settings = app, host, port, settings

    def run(self) -> None:
        _StubServer.last = self


@pytest.fixture
def fake_open(tmp_path: Path, monkeypatch):
    opened = []

    def open_engine(index_dir, **options):
        opened.append(Path(index_dir))
        return FakeEngine(Path(index_dir))

    monkeypatch.setattr(archive_engine, "open_engine", open_engine)
    monkeypatch.setattr(server_module, "make_server", _StubServer)
    (tmp_path / "idx").mkdir()
    return opened


def test_serve_refuses_public_bind_without_token(tmp_path: Path, fake_open, capsys) -> None:
    assert main(["serve", str(tmp_path / "idx"), "--host", "0.0.0.0"]) == 2
    assert "without --token" in capsys.readouterr().err
    assert fake_open == []  # refused before loading anything


def test_serve_refuses_short_token_and_missing_index(tmp_path: Path, fake_open, capsys) -> None:
    assert main(["serve", str(tmp_path / "idx"), "--host", "0.0.0.0", "--token", "short"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert fake_open == []


def test_serve_with_token_builds_a_protected_app(tmp_path: Path, fake_open, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.setenv("MCMFH_TOKEN", TOKEN)
    args = ["serve", str(tmp_path / "idx"), "--host", "0.0.0.0", "--port", "18765", "--max-upload-mb", "0.01"]
    assert main(args) == 0
    server = _StubServer.last
    assert (server.host, server.port) == ("0.0.0.0", 18765) and fake_open == [tmp_path / "idx"]
    client = TestClient(server.app)
    assert client.get("/health").status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/health", headers=auth).json()["items"] == len(TEXTS)
    big = {"file": ("a.png", b"\x89PNG\r\n\x1a\n" + bytes(20_000))}
    assert client.post("/search/image", files=big, headers=auth).status_code == 413  # --max-upload-mb applied
    image = client.get("/images/MPX0000_synpic0", headers=auth)  # image root defaults to the index folder
    assert image.status_code == 200


@pytest.fixture
def live_server(tmp_path: Path):
    engine = FakeEngine(tmp_path / "idx")
    app = create_app(engine, Settings(image_root=engine.root, max_upload_bytes=50_000))
    with running_server(app) as url:
        yield url


def test_real_server_answers_and_survives_bad_requests(live_server: str) -> None:
    with httpx.Client(base_url=live_server, timeout=10) as client:
        r = client.post("/search/text", json={"query": TEXTS[0], "k": 5})
        assert r.status_code == 200 and len(r.json()["results"]) == 5
        assert client.post("/search/text", json={"query": "", "k": 5}).status_code == 422
        fake_png = {"file": ("x.png", b"GIF89a not really", "image/png")}
        assert client.post("/search/image", files=fake_png).status_code == 415

        def chunks():  # streamed without Content-Length, over the 50 kB limit
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            for _ in range(20):
                yield b"\x89PNG\r\n\x1a\n" + bytes(8000)

        r = client.post("/search/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and "50000 bytes" in r.json()["error"]
        ok = client.post("/search/image", files={"file": ("q.png", png_bytes(pattern_image(3)))})
        assert ok.status_code == 200 and ok.json()["results"][0]["id"] == "MPX0003_synpic3"
        assert client.get("/").status_code == 200
        assert client.get("/health").json()["status"] == "ok"
