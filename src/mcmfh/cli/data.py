"""Commands that turn a dataset into cached features: ``prepare`` and ``encode``."""

from __future__ import annotations

from pathlib import Path

import typer

from mcmfh.cli.app import app


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="openi, roco, medpix2 (downloaded) or synthetic (generated)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the dataset layout into (the loader's root)."),
    base_url: str | None = typer.Option(None, "--base-url", help="Download from this URL instead (a mirror)."),
    source: Path | None = typer.Option(
        None, "--source", help="Use files already on disk (archives or a repository checkout) instead of downloading."
    ),
    subset: str = typer.Option("radiology", "--subset", help="roco: 'radiology' or 'non-radiology'."),
    limit: int | None = typer.Option(None, "--limit", help="roco: fetch at most this many images (a trial run)."),
    no_images: bool = typer.Option(False, "--no-images", help="openi/roco: text and labels only, no image download."),
    keep_archives: bool = typer.Option(False, "--keep-archives", help="roco: keep the downloaded PMC packages."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Download a public dataset (resumable, verified) and lay it out the way `mcmfh encode` reads it."""
    from mcmfh.data.download import DownloadConfig
    from mcmfh.data.prepare import prepare as run_prepare

    options: dict[str, object] = {}
    if dataset == "roco":
        options = {"subset": subset, "limit": limit, "keep_archives": keep_archives, "images": not no_images}
    elif dataset == "openi":
        options = {"images": not no_images}
    folder = run_prepare(dataset, out, base_url, source, config=DownloadConfig(progress=not quiet), **options)
    import json

    summary = json.loads((folder / "prepare.json").read_text())
    failed = summary.get("failed") or []
    typer.echo(f"{dataset} prepared in {folder}")
    if failed:
        typer.secho(
            f"warning: {len(failed)} image(s) could not be fetched (listed in {folder / 'prepare.json'}); "
            "their items load as text-only; run the same command again to retry",
            fg=typer.colors.YELLOW,
            err=True,
        )
