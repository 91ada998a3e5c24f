"""``mcmfh index sync ARCHIVE --dicomweb URL``: index studies from a PACS and keep the archive in sync.

Exit codes, for a scheduler: 0 the archive is in step with the listing; ``PARTIAL_EXIT`` (3) some instances or
reports failed (named in the warnings; what was added is committed and the next run retries them); 2 nothing was
done (bad input, PACS unreachable or answering wrongly, a refused prune, another sync running); 1 a bug."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mcmfh.cli.index import index_app
from mcmfh.cli.inputs import QUIET_HELP, progress_for
from mcmfh.pacs.client import PacsConfig
from mcmfh.pacs.prune import DEFAULT_MAX_SHARE

PARTIAL_EXIT = 3


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
    force: bool = typer.Option(
        False, "--force", help="Let --prune remove more than --prune-max-share, or all on an empty listing."
    ),
    prune_max_share: float = typer.Option(
        DEFAULT_MAX_SHARE,
        "--prune-max-share",
        min=0.0,
        max=1.0,
        help="Most of the synced items (in the filters' scope) one --prune run may remove without --force.",
    ),
    repoint: bool = typer.Option(
        False,
        "--repoint",
        help="Move this archive to the --dicomweb URL (the PACS moved, "
        "or the archive was bound to a wrong URL); recorded once its listing succeeds.",
    ),
    fetch: str = typer.Option("auto", "--fetch", help="auto (rendered frame, else pixel data), rendered or pixels."),
    workers: int = typer.Option(4, "--workers", min=1, max=64, help="Concurrent WADO-RS requests."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Instances encoded and committed together."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds per HTTP request."),
    retries: int = typer.Option(5, "--retries", min=0, help="Retries on 429/5xx, connect errors and timeouts."),
    page_size: int = typer.Option(PacsConfig.page_size, "--page-size", min=1, help="Results asked per QIDO-RS page."),
    max_pages: int = typer.Option(
        PacsConfig.max_pages, "--max-pages", min=1, help="Most pages one QIDO-RS query may take."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", hidden=True),  # older spelling of --quiet
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Index new instances from a DICOMweb PACS (incremental; resumes after a kill)."""
    from mcmfh.pacs import Filters, SyncOptions, sync

    filters = Filters(since=since, until=until, modalities=_split(modality), body_parts=_split(body_part))
    config = PacsConfig(url=dicomweb, timeout_s=timeout, retries=retries, workers=workers, page_size=page_size,
                        max_pages=max_pages)  # fmt: skip
    options = SyncOptions(reports=reports, sr=sr or reports is None, filters=filters, prune=prune, fetch=fetch,
                          batch_size=batch_size, progress=progress_for(quiet or not progress), force=force,
                          prune_max_share=prune_max_share, repoint=repoint)  # fmt: skip
    result = sync(archive_dir, config, options, log=lambda m: typer.echo(m, err=True))
    for err in result.errors[:10]:
        typer.echo(f"warning: {err}", err=True)
    if len(result.errors) > 10:
        typer.echo(f"warning: ... and {len(result.errors) - 10} more (--json lists them all)", err=True)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        typer.echo(f"listed {result.listed} instance(s); {result.new} new, {result.added} added, "
                   f"{result.no_report} without report (retried next sync), {result.failed} failed, "
                   f"{result.not_image} not images, {result.pruned} pruned; {result.total_s:.1f}s (list "
                   f"{result.list_s:.1f}s, transfer {result.transfer_s:.1f}s, "
                   f"encode {result.encode_s:.1f}s)")  # fmt: skip
        for reason, n in sorted(result.failures.items(), key=lambda kv: -kv[1]):
            typer.echo(f"  failed: {n} x {reason}")
    if result.status == "partial":
        typer.echo(f"partial sync: {len(result.errors)} instance(s)/report(s) failed; what was added is committed and "
                   f"the next run retries them (exit {PARTIAL_EXIT})", err=True)  # fmt: skip
        raise typer.Exit(PARTIAL_EXIT)


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())
