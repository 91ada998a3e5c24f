"""``mcmfh index sync ARCHIVE --dicomweb URL``: index studies from a PACS and keep the archive in sync."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mcmfh.cli.index import index_app


@index_app.command("sync")
def sync_command(
    archive_dir: Path = typer.Argument(..., help="Archive folder (from `mcmfh index build`)."),
    dicomweb: str = typer.Option(
        ...,
        "--dicomweb",
        help="DICOMweb root URL, e.g. https://pacs.example/dicom-web. "
        "Auth from env MCMFH_PACS_TOKEN (bearer) or MCMFH_PACS_USER/MCMFH_PACS_PASSWORD.",
    ),
    reports: Path | None = typer.Option(
        None, "--reports", help="Report file (CSV/JSONL: report + accession_number or study_instance_uid)."
    ),
    sr: bool = typer.Option(False, "--sr", help="Take reports from the studies' DICOM SR instances (the default)."),
    modality: list[str] = typer.Option([], "--modality", help="Only these modalities (repeat or comma-separate)."),
    body_part: list[str] = typer.Option([], "--body-part", help="Only these BodyPartExamined values."),
    since: str | None = typer.Option(None, "--since", help="Studies on or after this date (YYYY-MM-DD)."),
    until: str | None = typer.Option(None, "--until", help="Studies on or before this date (YYYY-MM-DD)."),
    prune: bool = typer.Option(False, "--prune", help="Remove items whose instances the PACS no longer has."),
    fetch: str = typer.Option("auto", "--fetch", help="auto (rendered frame, else pixel data), rendered or pixels."),
    workers: int = typer.Option(4, "--workers", min=1, max=64, help="Concurrent WADO-RS requests."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Instances encoded and committed together."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds per HTTP request."),
    retries: int = typer.Option(5, "--retries", min=0, help="Retries on 429/5xx, connect errors and timeouts."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Index new instances from a DICOMweb PACS (incremental; resumes after a kill)."""
    from mcmfh.pacs import Filters, PacsConfig, SyncOptions, sync

    filters = Filters(since=since, until=until, modalities=_split(modality), body_parts=_split(body_part))
    config = PacsConfig(url=dicomweb, timeout_s=timeout, retries=retries, workers=workers)
    options = SyncOptions(reports=reports, sr=sr or reports is None, filters=filters, prune=prune, fetch=fetch,
                          batch_size=batch_size, progress=progress)  # fmt: skip
    result = sync(archive_dir, config, options, log=lambda m: typer.echo(m, err=True))
    for err in result.errors[:10]:
        typer.echo(f"warning: {err}", err=True)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    typer.echo(f"listed {result.listed} instance(s); {result.new} new, {result.added} added, "
               f"{result.no_report} without report (retried next sync), {result.failed} failed, "
               f"{result.pruned} pruned; {result.total_s:.1f}s (list {result.list_s:.1f}s, "
               f"transfer {result.transfer_s:.1f}s, encode {result.encode_s:.1f}s)")  # fmt: skip


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())
