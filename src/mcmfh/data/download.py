"""Resumable, verified HTTP(S) downloads with urllib only.

``download(url, dest)`` writes into ``dest + ".part"``; an interrupted transfer (dropped connection, Ctrl-C, crash)
leaves the ``.part`` file, and the next call asks the server for the rest with an HTTP ``Range`` request (falling back
to a fresh download when the server ignores ranges). The byte count is checked against the server's
``Content-Length``/``Content-Range`` total, and against a SHA-256 when the caller knows one; only then is the file
renamed to ``dest`` in one atomic step, so ``dest`` existing means the download is complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mcmfh import __version__
from mcmfh.errors import DataError

DOWNLOADS = ".downloads"  # where prepare and the converters keep fetched archives inside a dataset folder


def url_join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name.lstrip("/")


@dataclass(frozen=True)
class DownloadConfig:
    retries: int = 4  # extra attempts after the first; each resumes where the last one stopped
    backoff_s: float = 1.0  # wait before retry k is backoff_s * 2**k
    timeout_s: float = 60.0  # socket timeout per read
    chunk_bytes: int = 1 << 20
    progress: bool = True  # a tqdm bar per file


class _Incomplete(Exception):
    """The server closed the connection before sending all bytes it announced."""


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_once(url: str, part: Path, cfg: DownloadConfig, label: str) -> int | None:
    """Append the missing bytes of ``url`` to ``part``; return the total size when the server told it."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"mcmfh/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=cfg.timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part file already holds everything
            m = re.match(r"bytes \*/(\d+)", e.headers.get("Content-Range", "") or "")
            return int(m.group(1)) if m else have
        raise
    with resp:
        status = getattr(resp, "status", None) or 200
        total: int | None = None
        if have and status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise DataError(f"{url}: server answered the range request with {m and m.group(0)!r}")
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        else:  # 200: the server ignored the range (or there was none): start over
            have, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        expected_now = None if total is None else total - have
        got = 0
        with (
            open(part, mode) as f,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=label, disable=not cfg.progress) as bar,
        ):
            while True:
                try:
                    block = resp.read(cfg.chunk_bytes)
                except http.client.IncompleteRead as e:
                    f.write(e.partial)
                    raise _Incomplete(f"connection closed after {have + got + len(e.partial)} bytes") from None
                if not block:
                    break
                f.write(block)
                got += len(block)
                bar.update(len(block))
        if expected_now is not None and got != expected_now:
            raise _Incomplete(f"got {have + got} of {total} bytes")
        return total


def download(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    config: DownloadConfig | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, rename atomically.

    An existing ``dest`` is returned as is: it only ever appears through the final rename, after the checks passed.
    """
    cfg = config or DownloadConfig()
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    total: int | None = None
    for attempt in range(cfg.retries + 1):
        try:
            total = _fetch_once(url, part, cfg, dest.name)
            break
        except urllib.error.HTTPError as e:
            if e.code not in _RETRYABLE_HTTP or attempt == cfg.retries:
                raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (TimeoutError, _Incomplete, urllib.error.URLError, ConnectionError, http.client.HTTPException) as e:
            if attempt == cfg.retries:
                raise DataError(
                    f"{url}: download failed after {cfg.retries + 1} attempt(s) ({e}); "
                    f"{part} keeps the bytes received, run again to resume"
                ) from None
        time.sleep(cfg.backoff_s * 2**attempt)
    size = part.stat().st_size
    if total is not None and size != total:
        part.unlink()
        raise DataError(f"{url}: size check failed ({size} bytes, server announced {total}); removed, run again")
    if sha256 is not None:
        digest = sha256_of(part)
        if digest != sha256.lower():
            part.unlink()
            raise DataError(f"{url}: SHA-256 mismatch (got {digest}, expected {sha256}); removed the download")
    os.replace(part, dest)
    return dest
