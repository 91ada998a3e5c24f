"""Service limits and policies, one typed place (the CLI fills it from its options)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mcmfh.errors import MCMFHError

AccessLogPolicy = Literal["off", "route", "full"]
VIEWER_FIELDS = ("study_uid", "series_uid", "sop_uid")  # what a viewer URL template may name
MIN_TOKEN_CHARS = 16  # a bearer token shorter than this is guessable; refuse it rather than pretend it protects


@dataclass(frozen=True)
class Settings:
    """What the service accepts. Defaults suit one radiology archive on one machine."""

    token: str | None = None  # bearer token; None = no auth (only allowed on loopback, see security.check_bind)
    max_upload_bytes: int = 20 * 1024 * 1024  # whole multipart body of an image search
    max_body_bytes: int = 64 * 1024  # any other request body (the JSON of a text search)
    max_pixels: int = 40_000_000  # decoded pixels per image (a 4000x5000 mammogram is 20 M)
    max_k: int = 100
    default_k: int = 10
    max_query_chars: int = 1000
    # Concurrent searches. The archive engine gathers concurrent queries into one encoder call per modality, so
    # these threads mostly wait for their batch: enough of them to fill a batch, not one per core.
    search_threads: int = 32
    max_thumbnail_side: int = 2048  # upper bound of ``?max_side=`` on item images
    # "route": method, route template (e.g. /items/{item_id}), status, duration; "full" adds the raw path (ids);
    # query text and bodies are never logged.
    access_log: AccessLogPolicy = "route"
    image_root: Path | None = None  # item images must resolve inside it; None = no image is served
    # Ids are looked up in the item database, never used as file names, so any id ingest accepts is served
    # (quoted in URLs); only control characters and absurd lengths are refused before the lookup.
    id_pattern: str = r"[^\x00-\x1f\x7f]{1,1024}"
    # Connection limits, wired into uvicorn (mcmfh.service.server): a client must finish its request headers within
    # header_timeout_s of connecting (or of starting the next request on a kept-alive connection); an idle kept-alive
    # connection is closed after keep_alive_s; beyond max_connections open connections new requests get a 503.
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 512
    # Write endpoints (POST /items, DELETE /items/{id}); off by default and refused without a token. How long a
    # write waits for another writer is the engine's (``mcmfh serve --lock-timeout``); past it the answer is 503.
    allow_writes: bool = False
    # Link from a result to its study in the hospital's PACS viewer, e.g.
    # "https://pacs.example/viewer?StudyInstanceUID={study_uid}"; placeholders VIEWER_FIELDS; None = no link.
    viewer_url: str | None = None
    debug: bool = False  # log tracebacks of server errors (may contain request data)

    def __post_init__(self) -> None:
        positive = ("max_upload_bytes", "max_body_bytes", "max_pixels", "max_k", "max_query_chars", "search_threads",
                    "max_connections")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise MCMFHError(f"service setting {name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.default_k <= self.max_k:
            raise MCMFHError(f"service setting default_k must be in 1..max_k={self.max_k}, got {self.default_k}")
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise MCMFHError(f"the bearer token must be at least {MIN_TOKEN_CHARS} characters long")
        for name in ("header_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise MCMFHError(f"service setting {name} must be positive, got {getattr(self, name)}")
        if self.allow_writes and self.token is None:
            raise MCMFHError("write endpoints need a bearer token: give --token (or MCMFH_TOKEN) with --allow-writes")
        if self.access_log not in ("off", "route", "full"):
            raise MCMFHError(f"access_log must be off, route or full, got {self.access_log!r}")
        re.compile(self.id_pattern)
        if self.viewer_url is not None:
            check_viewer_url(self.viewer_url)

    def id_is_valid(self, item_id: str) -> bool:
        return re.fullmatch(self.id_pattern, item_id) is not None


def check_viewer_url(template: str) -> None:
    """A viewer URL template must be http(s) and name only ``VIEWER_FIELDS`` (at least one), as {field}."""
    if not re.match(r"https?://[^/\s{}]+", template):
        raise MCMFHError(f"--viewer-url must start with http:// or https:// and a host, got {template[:80]!r}")
    named = re.findall(r"{([^{}]*)}", template)
    unknown = sorted(set(named) - set(VIEWER_FIELDS))
    if unknown or not named:
        raise MCMFHError(f"--viewer-url: placeholders must be among {{{'}, {'.join(VIEWER_FIELDS)}}}, "
                         f"got {named or 'none'}")  # fmt: skip


def viewer_link(template: str, study: dict[str, str]) -> str | None:
    """The template filled with the item's (percent-encoded) UIDs; None when the item lacks one it names."""
    from urllib.parse import quote

    named = re.findall(r"{([^{}]*)}", template)
    if not all(study.get(name) for name in named):
        return None
    return template.format(**{name: quote(study[name], safe="") for name in named})
