"""``mcmfh demo``: the README's main command — the whole chain on a built-in dataset (or a real one)."""

from __future__ import annotations

from pathlib import Path

import typer

from mcmfh.cli.app import app


@app.command()
def demo(
    out: Path = typer.Option(Path("mcmfh-demo"), "--out", help="Folder for data, features, runs and the archive."),
    dataset: str = typer.Option(None, "--dataset", help="Loader for --data-root (default: csv)."),
    data_root: Path = typer.Option(None, "--data-root", help="A real dataset instead of the built-in one."),
    encoder: str = typer.Option("offline", "--encoder", help="Frozen encoder (offline: real pretrained weights)."),
    methods: str = typer.Option("mcmfh,cca-itq", "--methods", help="Comma-separated methods; the first is indexed."),
    bits: int = typer.Option(16, "--bits"),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1),
    seeds: int = typer.Option(3, "--seeds", min=1, max=20, help="Training seeds per method (the table: mean ± std)."),
    n_synthetic: int = typer.Option(600, "--n-synthetic", min=36, help="Size of the built-in dataset."),
) -> None:
    """Encode -> train 16-bit MCMFH (and a baseline) -> evaluate -> example image->text and text->image searches."""
    from mcmfh.demo import DemoConfig, run_demo

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if data_root is not None and dataset is None:
        dataset = "csv"
    run_demo(DemoConfig(out=out, dataset=dataset, data_root=data_root, encoder=encoder, methods=names,
                        bits=bits, seed=seed, n_seeds=seeds, n_synthetic=n_synthetic), log=typer.echo)  # fmt: skip
