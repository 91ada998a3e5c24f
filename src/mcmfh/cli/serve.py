"""``mcmfh serve``: the search service and its web page over an index."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from mcmfh.cli.app import app
from mcmfh.cli.next_steps import require_archive, require_free_port
from mcmfh.errors import MCMFHError

MIB = 1024 * 1024
PRIVILEGED_PORTS = 1024


@app.command()
def serve(
    index: Path = typer.Argument(..., help="Index folder (made by `mcmfh index`) to search."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; anything but loopback needs --token."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
    token: str | None = typer.Option(
        None,
        envvar="MCMFH_TOKEN",
        help="Bearer token clients must send (16+ characters; env MCMFH_TOKEN keeps it out of the process list).",
        show_default=False,
    ),  # fmt: skip
    max_upload_mb: float = typer.Option(20.0, min=0.01, help="Largest image upload, in MiB."),
    max_k: int = typer.Option(100, min=1, help="Most results one search may ask for."),
    image_root: Path | None = typer.Option(
        None, help="Folder item images must lie in (default: the archive's dataset folder); others are refused."
    ),
    access_log: str = typer.Option("route", help="off | route (method, route, status, time) | full (adds paths)."),
    header_timeout: float = typer.Option(10.0, min=0.1, help="Seconds a client has to send its request headers."),
    keep_alive: float = typer.Option(5.0, min=0.1, help="Seconds an idle kept-alive connection stays open."),
    max_connections: int = typer.Option(512, min=1, help="Open connections beyond which requests get a 503."),
    allow_writes: bool = typer.Option(
        False, "--allow-writes", help="Enable POST /items and DELETE /items/{id} (needs --token)."
    ),
    lock_timeout: float = typer.Option(10.0, min=0.1, help="Seconds a write waits for another writer, then 503."),
    viewer_url: str | None = typer.Option(
        None,
        "--viewer-url",
        help="Link results to the PACS viewer, e.g. "
        "'https://pacs.example/viewer?StudyInstanceUID={study_uid}' ({study_uid}, {series_uid}, {sop_uid}).",
    ),
) -> None:
    """Serve text and image search over INDEX at http://HOST:PORT/ (API docs at /docs)."""
    from mcmfh.service.security import check_bind
    from mcmfh.service.settings import Settings

    check_bind(host, token)  # before anything slow is loaded
    require_archive(index, "index folder")
    settings = Settings(  # validates the token and limits before anything slow is loaded
        token=token, max_upload_bytes=int(max_upload_mb * MIB), max_k=max_k, access_log=access_log,  # type: ignore[arg-type]
        image_root=image_root.resolve() if image_root else None, header_timeout_s=header_timeout,
        keep_alive_s=keep_alive, max_connections=max_connections, allow_writes=allow_writes, viewer_url=viewer_url,
    )  # fmt: skip
    if port < PRIVILEGED_PORTS:  # fine as root or with CAP_NET_BIND_SERVICE, but say so: it is rarely meant
        typer.echo(f"note: port {port} is a privileged port (below {PRIVILEGED_PORTS}); binding it needs root or "
                   "CAP_NET_BIND_SERVICE", err=True)  # fmt: skip
    try:
        from mcmfh.service.app import create_app
        from mcmfh.service.server import make_server
    except ImportError as e:
        raise MCMFHError(f"the service needs its extra: pip install 'mcmfh[service]' ({e.name} is missing)") from None
    require_free_port(host, port)  # uvicorn would only find out after the index is loaded, with a traceback
    from mcmfh.service import archive_engine  # the real engine: loads the run's encoder and model

    engine = archive_engine.open_engine(index, writable=allow_writes, lock_timeout=lock_timeout)
    if image_root is None:  # item images live where the archive's dataset lives
        root = getattr(engine, "image_root", None) or index
        settings = dataclasses.replace(settings, image_root=Path(root).resolve())
    info = engine.info()
    typer.echo(f"serving {info.items} items ({info.method}, {info.bits} bits, {info.encoder}) at http://{host}:{port}/")
    make_server(create_app(engine, settings), host, port, settings).run()
