"""The HTTP bad-input catalogue (issues 11 and 12): every case a client can get wrong, through the app, with the
answer it must get. Every error body is checked to be ``{"error": ...}`` JSON without a server path. Add new cases
here; the CLI's catalogue is ``tests/test_bad_inputs.py``.

| case                                                   | answer                                     |
|--------------------------------------------------------|--------------------------------------------|
| POST /search/text with content-type text/plain         | 415                                        |
| {"k": true}, {"k": 1.5}, {"k": "5"}; ?max_side=1.0     | 422 (strict integers)                      |
| a lone surrogate "\\ud800" in a JSON string             | 422, never 500                             |
| HEAD /health                                           | 200, no body                               |
| unknown route / wrong method                           | 404 / 405, JSON                            |
| ids "a b c", "ünï", "../../etc/passwd", "x/y", "%2e%2e" | reachable: search URL -> GET works         |
| an id naming a path outside the image root             | only the item's own image, never the file |
| an engine error naming a server path                   | 422, path cut to its last component        |
| another writer holds the archive lock                  | 503 + Retry-After                          |
| half-open connections (slowloris), idle keep-alive     | closed by the server within the timeout    |
| more connections than the limit                        | 503                                        |
| `mcmfh serve --port 80`                                | one note line: privileged port             |
| write endpoints without a token                        | refused at start                           |
| POST /items: image outside the root, absolute, missing | 422                                        |
| an unknown field: JSON body, or /search/image form     | 422 naming it (a misspelt filter never     |
|                                                        | answers unfiltered results)                |
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from mcmfh.errors import MCMFHError
from mcmfh.locking import LockTimeout
from mcmfh.service.app import create_app
from mcmfh.service.settings import Settings
from service_fake import TEXTS, FakeEngine, pattern_image, png_bytes, running_server

# A server path in a message: "/" not after a word, dot or another "/", then at least two components.
ABS_PATH = re.compile(r"(?<![\w.:/])/[^\s/'\"]+/[^\s'\"]+")
ODD_IDS = ["a b c", "ünï", "../../etc/passwd", "x/y", "%2e%2e", "q?x=1#frag", "100%"]


@pytest.fixture
def engine(tmp_path: Path) -> FakeEngine:
    engine = FakeEngine(tmp_path / "index")
    for n, item_id in enumerate(ODD_IDS):
        engine.add(item_id, f"odd identifier number {n} zebra{n}", image_seed=50 + n)
    return engine


@pytest.fixture
def client(engine: FakeEngine) -> TestClient:
    return TestClient(create_app(engine, Settings(image_root=engine.root)))


def error_of(r: httpx.Response, status: int) -> str:
    """The message of a JSON error answer with ``status``; it must not name any server path."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert not ABS_PATH.search(body["error"]), body
    return body["error"]


# --- request bodies and parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/json", ""])
def test_text_search_needs_a_json_body(client: TestClient, content_type: str) -> None:
    r = client.post("/search/text", content=b'{"query": "brain"}', headers={"content-type": content_type})
    assert "JSON" in error_of(r, 415)
    ok = client.post("/search/text", content=b'{"query": "brain"}', headers={"content-type": "application/json"})
    assert ok.status_code == 200


@pytest.mark.parametrize("k", [True, False, 1.5, 2.0, "5", [3], None])
def test_k_is_a_strict_integer(client: TestClient, k: object) -> None:
    r = client.post("/search/text", json={"query": "brain", "k": k})
    if k is None:  # explicit null: the default
        assert r.status_code == 200
    else:
        assert "k" in error_of(r, 422)


@pytest.mark.parametrize("bad", ["1.0", " 32", "1_000", "true", "0x20"])
def test_query_and_form_integers_are_whole_numbers(client: TestClient, bad: str) -> None:
    assert "max_side" in error_of(client.get("/images/MPX0000_synpic0", params={"max_side": bad}), 422)
    files = {"file": ("q.png", png_bytes(pattern_image(1)))}
    assert "k" in error_of(client.post("/search/image", files=files, data={"k": bad}), 422)


def test_unknown_fields_are_refused_in_json_and_in_the_image_form(client: TestClient) -> None:
    """Issue 28: `bodypart=CHEST` (for body_part) answered 200 with unfiltered results on /search/image."""
    files = {"file": ("q.png", png_bytes(pattern_image(1)))}
    image = error_of(client.post("/search/image", files=files, data={"bodypart": "CHEST"}), 422)
    text = error_of(client.post("/search/text", json={"query": "brain", "bodypart": "CHEST"}), 422)
    assert "bodypart" in image and "bodypart" in text and "not permitted" in image and "not permitted" in text
    assert "body_part" in image  # names the fields it takes
    extra_file = {**files, "second": ("r.png", png_bytes(pattern_image(2)))}
    assert "second" in error_of(client.post("/search/image", files=extra_file), 422)
    ok = client.post("/search/image", files=files, data={"k": "3", "modality": "CT", "body_part": "CHEST",
                                                         "target": "items"})  # fmt: skip
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("raw", [b'{"query": "\\ud800"}', b'{"query": "brain \\udfff tumour"}'])
def test_lone_surrogate_is_a_4xx_never_a_500(client: TestClient, raw: bytes) -> None:
    r = client.post("/search/text", content=raw, headers={"content-type": "application/json"})
    assert "Unicode" in error_of(r, 422)


def test_head_health_and_json_errors_for_unknown_routes(client: TestClient) -> None:
    r = client.head("/health")
    assert r.status_code == 200 and r.content == b""
    error_of(client.get("/no/such/route"), 404)
    error_of(client.post("/health"), 405)
    error_of(client.delete("/items/MPX0000_synpic0"), 405)  # writes are off by default
    error_of(client.post("/items", json={"id": "x", "text": "y"}), 405)


# --- ids ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def live(engine: FakeEngine):
    """A real uvicorn server: Starlette's TestClient percent-decodes paths twice, uvicorn (rightly) once."""
    app = create_app(engine, Settings(image_root=engine.root))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


def test_every_ingested_id_round_trips_through_its_urls(live: httpx.Client, engine: FakeEngine) -> None:
    for n, item_id in enumerate(ODD_IDS):
        hits = live.post("/search/text", json={"query": f"odd identifier number {n} zebra{n}", "k": 3}).json()
        hit = next(h for h in hits["results"] if h["id"] == item_id)
        assert hit["image_url"].count("/") == 2, hit  # the id is one quoted segment, "/" included
        image = live.get(hit["image_url"])
        assert image.status_code == 200 and image.content == engine.paths[item_id].read_bytes(), item_id
        item = live.get("/items/" + hit["image_url"].removeprefix("/images/"))
        assert item.status_code == 200 and item.json()["id"] == item_id


def test_path_traversal_never_reads_outside_the_image_root(live: httpx.Client, engine: FakeEngine) -> None:
    # The id "../../etc/passwd" is a database key: its URL serves that item's own image, not the file.
    client = live
    r = client.get("/images/..%2F..%2Fetc%2Fpasswd")
    assert r.status_code == 200 and r.content == engine.paths["../../etc/passwd"].read_bytes()
    for path in ("/images/..%2F..%2F..%2Fetc%2Fshadow", "/images/%2Fetc%2Fpasswd", "/images/..%5C..%5Cwin.ini"):
        error_of(client.get(path), 404)
    error_of(client.get("/items/a%00b"), 400)  # control characters: no id has them
    error_of(client.get("/items/" + "a" * 2000), 400)
    for raw in (b"/images/../../etc/passwd", b"/images/%2e%2e/%2e%2e/etc/passwd", b"/static/../../../etc/passwd"):
        r = _raw_get(client, raw)  # dot segments sent as is (httpx would normalise them away)
        assert b"root:" not in r, r[:200]
        if raw.startswith(b"/images/"):  # uvicorn keeps dot segments: that is the odd item's id again
            assert r.startswith(b"HTTP/1.1 200") and r.endswith(engine.paths["../../etc/passwd"].read_bytes())
        else:
            assert r[:12] in (b"HTTP/1.1 404", b"HTTP/1.1 400"), r[:200]


def _raw_get(client: httpx.Client, target: bytes) -> bytes:
    host, port = client.base_url.host, client.base_url.port
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


# --- engine failures -------------------------------------------------------------------------------------------


def test_engine_errors_never_show_server_paths(engine: FakeEngine, tmp_path: Path) -> None:
    def stale(query: str, k: int):
        raise MCMFHError(f"index {tmp_path}/archive/images: no items with keys [4, 131]")

    engine.search_text = stale
    client = TestClient(create_app(engine, Settings(image_root=engine.root)))
    message = error_of(client.post("/search/text", json={"query": "brain"}), 422)
    assert message == "index images: no items with keys [4, 131]" and str(tmp_path) not in message


def test_a_held_writer_lock_is_503_with_retry_after(engine: FakeEngine) -> None:
    def busy(query: str, k: int):
        raise LockTimeout("archive /srv/a: another writer holds the lock (pid 1); waited 10 s")

    engine.search_text = busy
    r = TestClient(create_app(engine, Settings(image_root=engine.root))).post("/search/text", json={"query": "x"})
    assert "busy" in error_of(r, 503) and int(r.headers["retry-after"]) > 0


def test_write_endpoints_need_a_token_and_a_writable_engine(engine: FakeEngine) -> None:
    with pytest.raises(MCMFHError, match="need a bearer token"):
        Settings(allow_writes=True)
    with pytest.raises(MCMFHError, match="cannot write"):
        create_app(engine, Settings(allow_writes=True, token="t" * 24))


# --- connections ---------------------------------------------------------------------------------------------------


def _closed_within(sock: socket.socket, limit_s: float) -> float:
    """Seconds until the server closes ``sock`` (reading and discarding what it sends); fails past ``limit_s``."""
    t0 = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - t0 < limit_s:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - t0
    pytest.fail(f"connection still open after {limit_s} s")


def test_slowloris_connections_are_closed_within_the_header_timeout(engine: FakeEngine) -> None:
    settings = Settings(image_root=engine.root, header_timeout_s=0.5, keep_alive_s=0.5)
    with running_server(create_app(engine, settings), settings=settings) as url:
        port = int(url.rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(24)]
        for i, s in enumerate(socks):
            if i % 3:  # a third send nothing at all; the rest an unfinished request head
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.monotonic()
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # served meanwhile
        for s in socks:
            _closed_within(s, 3.0)
            s.close()
        assert time.monotonic() - started < 0.5 + 2.5
        with socket.create_connection(("127.0.0.1", port), timeout=2) as idle:  # kept alive, then idle
            idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert idle.recv(4096).startswith(b"HTTP/1.1 200")
            assert _closed_within(idle, 3.0) < 2.5


def test_connections_past_the_limit_get_a_503(engine: FakeEngine) -> None:
    settings = Settings(image_root=engine.root, max_connections=4, header_timeout_s=5)
    with running_server(create_app(engine, settings), settings=settings) as url:
        port = int(url.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(4)]
        time.sleep(0.2)  # let the server accept them
        assert httpx.get(f"{url}/health", timeout=5).status_code == 503
        for s in held:
            s.close()
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the limit did not free up"
            time.sleep(0.05)


# --- the CLI side of serving ---------------------------------------------------------------------------------


class _StubServer:
    def __init__(self, app, host: str, port: int, settings=None) -> None:
        _StubServer.last = self

    def run(self) -> None:
        pass


@pytest.fixture
def stub_serve(tmp_path: Path, monkeypatch) -> Path:
    from mcmfh.service import archive_engine
    from mcmfh.service import server as server_module

    monkeypatch.setattr(archive_engine, "open_engine", lambda index, **options: FakeEngine(Path(index)))
    monkeypatch.setattr(server_module, "make_server", _StubServer)
    (tmp_path / "idx").mkdir()
    return tmp_path / "idx"


def test_serve_says_when_it_binds_a_privileged_port(stub_serve: Path, capsys) -> None:
    from mcmfh.cli import main

    assert main(["serve", str(stub_serve), "--port", "80"]) == 0
    err = capsys.readouterr().err
    assert len([ln for ln in err.splitlines() if "privileged port" in ln]) == 1 and "80" in err
    assert main(["serve", str(stub_serve), "--port", "8080"]) == 0
    assert "privileged" not in capsys.readouterr().err


def test_serve_refuses_writes_without_a_token(stub_serve: Path, capsys) -> None:
    from mcmfh.cli import main

    assert main(["serve", str(stub_serve), "--allow-writes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "need a bearer token" in err


def test_fixture_sanity(engine: FakeEngine) -> None:
    assert len(engine.ids) == len(TEXTS) + len(ODD_IDS)
