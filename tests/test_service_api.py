"""HTTP API tests over a small real test double engine: every endpoint and every bad input the service bounds."""

from __future__ import annotations

import io
import logging
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mcmfh.errors import MCMFHError
from mcmfh.service.app import STATIC_DIR, create_app
from mcmfh.service.settings import Settings
from service_fake import TEXTS, FakeEngine, dicom_bytes, pattern_image, png_bytes

TOKEN = "t" * 8 + "0123456789abcdef"


@pytest.fixture
def engine(tmp_path: Path) -> FakeEngine:
    return FakeEngine(tmp_path / "index", escape_path=tmp_path / "secret.png")


def client_for(engine: FakeEngine, **settings) -> TestClient:
    settings.setdefault("image_root", engine.root)
    return TestClient(create_app(engine, Settings(**settings)))


@pytest.fixture
def client(engine: FakeEngine) -> TestClient:
    return client_for(engine)


def error_of(response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def item_id(i: int) -> str:
    return f"MPX{i:04d}_synpic{i}"


# --- health, page, docs -------------------------------------------------------------------------------------------


def test_health_reports_model_bits_and_items(client: TestClient, engine: FakeEngine) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ok", "model": "fake-simhash", "bits": 16, "encoder": "words+8x8", "items": len(engine.ids),
        "name": "fake", "max_k": 100, "studies": False,
    }  # fmt: skip


def test_page_and_assets_are_served_locally(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="query"' in r.text and 'id="drop"' in r.text and 'id="results"' in r.text
    assert "script-src 'self';" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for path in STATIC_DIR.iterdir():  # nothing on the page may come from another host
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", path.read_text()), path.name
        assert "http://" not in path.read_text() and "https://" not in path.read_text(), path.name


def test_docs_use_local_assets(client: TestClient) -> None:
    pytest.importorskip("fastapi_offline", reason="local Swagger UI assets (fastapi-offline) not installed")
    r = client.get("/docs")
    assert r.status_code == 200
    assert "/docs-assets/swagger-ui-bundle.js" in r.text and "cdn" not in r.text.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search/text", "/search/image", "/items/{item_id}", "/images/{item_id}", "/health"} <= set(paths)
    assert client.get("/redoc").status_code == 404


# --- text search ---------------------------------------------------------------------------------------------------


def test_text_search_finds_the_item_with_that_text(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/search/text", json={"query": TEXTS[3], "k": 4})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"results", "took_ms"} and body["took_ms"] >= 0
    results = body["results"]
    assert len(results) == 4
    assert results[0]["id"] == item_id(3) and results[0]["distance"] == 0
    assert [h["distance"] for h in results] == sorted(h["distance"] for h in results)
    assert results[0]["text"] == TEXTS[3] and results[0]["labels"] == ["loc:region0", "cat:kind1"]
    assert results[0]["image_url"] == f"/images/{item_id(3)}"


def test_text_search_default_k_and_item_without_image(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/search/text", json={"query": TEXTS[-1]})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == len(engine.ids)  # default k (10) is more than the items
    assert results[0]["id"] == item_id(len(TEXTS) - 1) and results[0]["image_url"] is None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": "", "k": 5}, "query is empty"),
        ({"query": "   \n ", "k": 5}, "query is empty"),
        ({"query": "x" * 1001, "k": 5}, "over the limit of 1000"),
        ({"query": "brain", "k": 0}, "k must be between 1 and 100"),
        ({"query": "brain", "k": 101}, "k must be between 1 and 100"),
        ({"query": "brain", "k": 10**12}, "k must be between 1 and 100"),
        ({"query": "brain", "k": "many"}, "k:"),
        ({"k": 5}, "query: Field required"),
        ({"query": 42}, "query:"),
        ({"query": "brain", "extra": 1}, "extra"),
    ],
)
def test_text_search_bad_input_gets_4xx_json(client: TestClient, body: dict, fragment: str) -> None:
    r = client.post("/search/text", json=body)
    assert r.status_code == 422
    assert fragment in error_of(r)
    assert client.get("/health").status_code == 200


def test_text_search_bad_json_and_body_limits(engine: FakeEngine) -> None:
    client = client_for(engine, max_body_bytes=2000)
    r = client.post("/search/text", content=b'{"query": "brain"', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in error_of(r)
    r = client.post("/search/text", content=b"query=brain", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "JSON" in error_of(r)
    r = client.post("/search/text", json={"query": "x" * 5000})
    assert r.status_code == 413 and "2000 bytes" in error_of(r)


# --- image search --------------------------------------------------------------------------------------------------


def upload(client: TestClient, data: bytes, name: str = "q.png", content_type: str = "image/png", **form):
    return client.post("/search/image", files={"file": (name, data, content_type)}, data=form)


def test_image_search_png_jpeg_dicom(client: TestClient) -> None:
    r = upload(client, png_bytes(pattern_image(4)), k="3")
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3 and results[0]["id"] == item_id(4) and results[0]["distance"] == 0
    jpeg = io.BytesIO()
    pattern_image(0).save(jpeg, format="JPEG", quality=98)
    r = upload(client, jpeg.getvalue(), "q.jpg", "image/jpeg")
    assert r.status_code == 200 and r.json()["results"][0]["id"] == item_id(0)
    dcm = dicom_bytes(np.asarray(pattern_image(2).convert("L"), dtype=np.uint16) * 10 + 100, window=None)
    r = upload(client, dcm, "q.dcm", "application/dicom")
    assert r.status_code == 200 and r.json()["results"][0]["id"] == item_id(2)


def test_image_type_comes_from_bytes_not_the_declared_type(client: TestClient) -> None:
    r = upload(client, png_bytes(pattern_image(5)), "notes.txt", "text/plain")
    assert r.status_code == 200 and r.json()["results"][0]["id"] == item_id(5)
    r = upload(client, b"this is a report, not an image" * 10, "x.png", "image/png")
    assert r.status_code == 415 and "not a PNG, JPEG or DICOM" in error_of(r)
    r = upload(client, b"%PDF-1.7\n" + bytes(300), "x.dcm", "application/dicom")
    assert r.status_code == 415


def test_corrupt_and_empty_images(client: TestClient) -> None:
    r = upload(client, png_bytes(pattern_image(1))[:60])
    assert r.status_code == 422 and "corrupt image data" in error_of(r)
    r = upload(client, b"")
    assert r.status_code == 422 and "empty" in error_of(r)
    r = client.post("/search/image", data={"k": "3"})
    assert r.status_code == 422 and "file" in error_of(r)
    r = upload(client, png_bytes(pattern_image(1)), k="1000")
    assert r.status_code == 422 and "k must be between" in error_of(r)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 1-bit pixels: what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(bytes(1024)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def test_decompression_bomb_and_pixel_limit(engine: FakeEngine) -> None:
    client = client_for(engine)
    bomb = _png_claiming(100_000, 100_000)
    assert len(bomb) < 200
    r = upload(client, bomb)
    assert r.status_code == 413 and "decompression-bomb" in error_of(r)
    r = upload(client, _png_claiming(8000, 6000))  # 48 M: under Pillow's own limit, over the service's 40 M
    assert r.status_code == 413 and "8000x6000 pixels, over the limit of 40000000" in error_of(r)
    small = client_for(engine, max_pixels=1000)
    r = upload(small, png_bytes(pattern_image(1)))  # 64x48 = 3072 pixels
    assert r.status_code == 413 and "64x48" in error_of(r)
    dcm = dicom_bytes(np.zeros((40, 40), dtype=np.uint16))
    assert upload(small, dcm, "x.dcm").status_code == 413
    assert client.get("/health").status_code == 200


def test_upload_size_limit_by_header_and_by_counting(engine: FakeEngine) -> None:
    client = client_for(engine, max_upload_bytes=10_000)
    big = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)))
    assert len(big) > 10_000
    r = upload(client, big)
    assert r.status_code == 413 and "10000 bytes" in error_of(r)
    # No Content-Length (chunked): the limit must hold while streaming.
    boundary = "xyzboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'.encode()
    parts = [head, big[:5000], big[5000:], f"\r\n--{boundary}--\r\n".encode()]
    r = client.post(
        "/search/image", content=iter(parts), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 413 and "10000 bytes" in error_of(r)
    r = upload(client, png_bytes(pattern_image(3)))  # a small one still passes
    assert r.status_code == 200


# --- items ---------------------------------------------------------------------------------------------------------


def test_get_item(client: TestClient) -> None:
    r = client.get(f"/items/{item_id(1)}")
    assert r.status_code == 200
    assert r.json() == {
        "id": item_id(1), "text": TEXTS[1], "labels": ["loc:region1", "cat:kind1"],
        "image_url": f"/images/{item_id(1)}", "study_id": None, "title": None,
    }  # fmt: skip
    r = client.get("/items/MPX9999_nothing")
    assert r.status_code == 404 and "no item" in error_of(r)


@pytest.mark.parametrize(
    "path",
    [
        "/items/%2e%2e",
        "/items/..%2F..%2Fetc%2Fpasswd",
        "/items/..%5C..%5Cwindows",
        "/images/%2Fetc%2Fpasswd",
        "/images/.hidden",
        "/items/a%00b",
        "/items/" + "a" * 200,
        "/items/caf%C3%A9",
    ],
)
def test_bad_item_ids_never_reach_files(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert 400 <= r.status_code < 500
    error_of(r)


def test_item_images(client: TestClient, engine: FakeEngine) -> None:
    r = client.get(f"/images/{item_id(0)}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == engine.paths[item_id(0)].read_bytes()
    r = client.get(f"/images/{item_id(1)}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    r = client.get(f"/images/{item_id(2)}")  # DICOM is rendered to PNG
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    rendered = Image.open(io.BytesIO(r.content))
    assert rendered.size == (64, 48) and rendered.mode == "RGB"
    r = client.get(f"/images/{item_id(0)}", params={"max_side": 32})
    assert r.status_code == 200 and max(Image.open(io.BytesIO(r.content)).size) == 32
    for bad in (0, 15, 10**6, "big"):
        r = client.get(f"/images/{item_id(0)}", params={"max_side": bad})
        assert r.status_code == 422 and "max_side" in error_of(r)


def test_item_image_errors(engine: FakeEngine, tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(png_bytes(pattern_image(0)))
    client = client_for(engine)
    r = client.get(f"/images/{item_id(len(TEXTS) - 1)}")
    assert r.status_code == 404 and "has no image" in error_of(r)
    r = client.get("/images/escape")  # the engine points outside the image root: refused
    assert r.status_code == 403 and "outside" in error_of(r)
    r = client.get("/images/nope")
    assert r.status_code == 404
    engine.paths[item_id(0)].unlink()
    r = client.get(f"/images/{item_id(0)}")
    assert r.status_code == 404 and "missing" in error_of(r)
    no_root = client_for(engine, image_root=None)
    assert no_root.get(f"/images/{item_id(3)}").status_code == 404


def test_symlink_out_of_the_root_is_refused(engine: FakeEngine, tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(pattern_image(0)))
    link = engine.root / "images" / "link.png"
    link.symlink_to(outside)
    engine.paths[item_id(0)] = link
    r = client_for(engine).get(f"/images/{item_id(0)}")
    assert r.status_code == 403


# --- auth, errors, logs --------------------------------------------------------------------------------------------


def test_bearer_token(engine: FakeEngine) -> None:
    client = client_for(engine, token=TOKEN)
    for request in (
        lambda h: client.get("/health", headers=h),
        lambda h: client.post("/search/text", json={"query": "brain"}, headers=h),
        lambda h: client.get(f"/items/{item_id(0)}", headers=h),
        lambda h: client.get(f"/images/{item_id(0)}", headers=h),
        lambda h: upload_with(client, h),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong-token-xxxxxxxxxx"}, {"Authorization": f"Basic {TOKEN}"}):
            r = request(headers)
            assert r.status_code == 401 and "token" in error_of(r)
            assert r.headers["www-authenticate"] == "Bearer"
        assert request({"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/").status_code == 200  # the page shell holds no data
    assert client.get("/static/app.js").status_code == 200


def upload_with(client: TestClient, headers: dict):
    return client.post("/search/image", files={"file": ("a.png", png_bytes(pattern_image(0)))}, headers=headers)


def test_unknown_route_and_method(client: TestClient) -> None:
    r = client.get("/nothing/here")
    assert r.status_code == 404 and error_of(r)
    r = client.get("/search/text")
    assert r.status_code == 405 and error_of(r)


def test_engine_crash_is_a_json_500_without_internals(engine: FakeEngine, caplog) -> None:
    def boom(query: str, k: int):
        raise RuntimeError(f"index file /srv/secret broke on {query}")

    engine.search_text = boom
    client = client_for(engine)
    with caplog.at_level(logging.INFO):
        r = client.post("/search/text", json={"query": "patient Jane Doe"})
    assert r.status_code == 500 and error_of(r) == "internal server error"
    assert "Jane" not in caplog.text and "/srv/secret" not in caplog.text and "RuntimeError" in caplog.text
    assert client.get("/health").status_code == 200


def test_engine_expected_error_is_a_422(engine: FakeEngine) -> None:
    def refuse(query: str, k: int):
        raise MCMFHError("query has no known words")

    engine.search_text = refuse
    r = client_for(engine).post("/search/text", json={"query": "zzz"})
    assert r.status_code == 422 and error_of(r) == "query has no known words"


def test_access_log_has_no_query_or_ids(engine: FakeEngine, caplog) -> None:
    client = client_for(engine)
    with caplog.at_level(logging.INFO, logger="mcmfh.service.access"):
        client.post("/search/text", json={"query": "sensitive history of patient"})
        client.get(f"/items/{item_id(0)}")
        client.get("/items/MPX_not_there")
        client.get("/no/such/route?name=Jane")
    lines = [r.getMessage() for r in caplog.records if r.name == "mcmfh.service.access"]
    assert len(lines) == 4
    assert re.fullmatch(r"POST /search/text 200 \d+\.\dms", lines[0])
    assert lines[1].startswith("GET /items/{item_id} 200") and lines[2].startswith("GET /items/{item_id} 404")
    assert lines[3].startswith("GET <no route> 404")
    text = "\n".join(lines)
    assert "sensitive" not in text and "MPX" not in text and "Jane" not in text


def test_access_log_policies(engine: FakeEngine, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="mcmfh.service.access"):
        client_for(engine, access_log="off").get(f"/items/{item_id(0)}")
        assert not [r for r in caplog.records if r.name == "mcmfh.service.access"]
        client_for(engine, access_log="full").get(f"/items/{item_id(0)}")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "mcmfh.service.access"]
    assert f"path=/items/{item_id(0)}" in line


def test_settings_are_validated() -> None:
    with pytest.raises(MCMFHError, match="at least 16 characters"):
        Settings(token="short")
    with pytest.raises(MCMFHError, match="max_k"):
        Settings(max_k=0)
    with pytest.raises(MCMFHError, match="default_k"):
        Settings(default_k=500)
