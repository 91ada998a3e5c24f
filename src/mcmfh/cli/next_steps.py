"""Errors that end in the command to run next: the mistakes a newcomer makes on the way to a first search.

Each check runs before anything slow is loaded and raises an ``MCMFHError`` (one ``error:`` line, exit 2)."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path

from mcmfh.errors import MCMFHError
from mcmfh.outputs import artefact_kind

# What each artefact kind is and how to get an archive from it (``mcmfh search``/``serve`` need an archive).
_NOT_AN_ARCHIVE = {
    "run": ("a trained run (from `mcmfh train`)", "{mcmfh} index build {path} --features FEATS --out archive/NAME"),
    "features": ("a feature cache (from `mcmfh encode`)",
                 "{mcmfh} train --features {path} --method mcmfh --out runs/NAME, then `mcmfh index build`"),
    "demo": ("the demo folder (from `mcmfh demo`)", "{mcmfh} search {path}/archive ..."),
    "experiment": ("an experiment folder (from `mcmfh experiment`)",
                   "{mcmfh} train ... --out runs/NAME, then `mcmfh index build`"),
    "dataset": ("a prepared dataset (from `mcmfh prepare`)", "{mcmfh} encode --data-root {path} ..."),
}  # fmt: skip


def mcmfh_command() -> str:
    """How to run this mcmfh again from the current shell: ``mcmfh`` when that name on PATH is this installation,
    else the script's path (e.g. ``.venv/bin/mcmfh`` before the venv is activated), else ``python -m mcmfh``."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "mcmfh" and script.is_file():
        on_path = shutil.which("mcmfh")
        if on_path and Path(on_path).resolve() == script.resolve():
            return "mcmfh"
        return shlex.quote(_relative(script))
    return f"{shlex.quote(_relative(Path(sys.executable)))} -m mcmfh"


def _relative(path: Path) -> str:
    """``path`` relative to the working folder when it lies under it (what a user can paste), else absolute."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path.absolute())


def require_archive(path: Path, what: str = "archive folder") -> None:
    """``path`` is an archive; otherwise say what it is and how to get one."""
    mcmfh = mcmfh_command()
    if not path.exists():
        raise MCMFHError(
            f"{what} {path} does not exist; build one with: {mcmfh} index build RUN --features FEATS --out {path} "
            f"(or run `{mcmfh} demo`, which leaves one in mcmfh-demo/archive)"
        )
    if not path.is_dir():
        raise MCMFHError(f"{what} {path} is a file; give the archive folder made by `{mcmfh} index build`")
    kind = artefact_kind(path)
    if kind in _NOT_AN_ARCHIVE:
        name, step = _NOT_AN_ARCHIVE[kind]
        raise MCMFHError(f"{path} is {name}, not an archive; next: " + step.format(mcmfh=mcmfh, path=path))


def require_free_port(host: str, port: int) -> None:
    """Bind ``host:port`` as the server will (with SO_REUSEADDR, as uvicorn does) and let go; a port in use is an
    error naming another port to try, before the index is loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if os.name != "nt":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise MCMFHError(
                    f"port {port} on {host} is already in use (another `mcmfh serve`?); stop it, or pick another "
                    f"port: --port {port + 1 if port < 65535 else 8000}"
                ) from None
            if e.errno in (errno.EACCES, errno.EPERM):
                raise MCMFHError(
                    f"port {port} on {host}: permission denied; pick a port above 1023, e.g. --port 8000"
                ) from None
            raise MCMFHError(f"cannot listen on {host}:{port} ({e.strerror}); check --host") from None


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")


def stray_query_line(archive: Path, words: list[str], given: bool) -> str:
    """The error for words after ``mcmfh search ARCHIVE`` that are not options: most likely a query without
    --text (or an image path without --image)."""
    query = " ".join(words)
    if given:
        return f'unexpected argument(s) {query!r} after the archive; quote a query with spaces: --text "..."'
    mcmfh = mcmfh_command()
    if len(words) == 1 and Path(query).suffix.lower() in IMAGE_SUFFIXES:
        return f"{query!r} looks like an image; search with: {mcmfh} search {archive} --image {shlex.quote(query)}"
    return f"a query goes after --text (or --image for a file): {mcmfh} search {archive} --text {shlex.quote(query)}"
