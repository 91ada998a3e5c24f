"""Archive store choice without servers: option checks and that secrets never reach a manifest."""

from __future__ import annotations

import pytest

from mcmfh.errors import MCMFHError
from mcmfh.index.backends import StoreConfig, store_manifest
from mcmfh.index.server_store import DSN_ENV, redact_dsn, split_uri


def test_split_uri_moves_credentials_out_of_the_uri() -> None:
    assert split_uri("http://alice:s3cret@milvus.internal:19530") == ("http://milvus.internal:19530", "alice:s3cret")
    assert split_uri("https://milvus.internal") == ("https://milvus.internal", None)


def test_redact_dsn_keyword_and_url_forms() -> None:
    assert redact_dsn("host=db user=u password=pw dbname=x") == "host=db user=u dbname=x"
    assert redact_dsn("postgresql://u:pw@db:5432/x") == "postgresql://u@db:5432/x"
    assert redact_dsn("postgresql://u@db/x") == "postgresql://u@db/x"


def test_store_manifest_has_names_and_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DSN_ENV, raising=False)
    config = StoreConfig("milvus", uri="http://u:tok@m:19530", metadata="postgres", dsn="host=db password=pw")
    entry = store_manifest(config, "0123abcd0123abcd")
    assert entry["uri"] == "http://m:19530" and entry["dsn"] == "host=db"
    assert entry["collections"] == {"images": "mcmfh_0123abcd0123abcd_images", "texts": "mcmfh_0123abcd0123abcd_texts"}
    assert "tok" not in str(entry) and "pw" not in str(entry)
    assert store_manifest(StoreConfig(), "x") == {"backend": "local"}


def test_store_config_refuses_inconsistent_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DSN_ENV, raising=False)
    with pytest.raises(MCMFHError, match="--backend"):
        StoreConfig("faiss")
    with pytest.raises(MCMFHError, match="need --backend milvus"):
        StoreConfig("local", uri="http://m:19530")
    with pytest.raises(MCMFHError, match="need --backend milvus"):
        StoreConfig("local", metadata="postgres", dsn="host=db")
    with pytest.raises(MCMFHError, match="--dsn"):
        StoreConfig("milvus", metadata="postgres")
    monkeypatch.setenv(DSN_ENV, "host=db")
    assert StoreConfig("milvus", metadata="postgres").metadata == "postgres"
