"""``mcmfh demo``: the README's main command — the whole chain on a built-in dataset (or a real one)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from mcmfh.cli.app import app
from mcmfh.cli.inputs import QUIET_HELP, progress_for
from mcmfh.cli.next_steps import mcmfh_command


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
    workers: int = typer.Option(0, "--workers", min=0, max=64, help="Fits at once, in processes (0: one per core)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Encode -> train 16-bit MCMFH (and a baseline) -> evaluate -> example image->text and text->image searches."""
    from mcmfh.demo import DemoConfig, run_demo

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if data_root is not None and dataset is None:
        dataset = "csv"
    cfg = DemoConfig(out=out, dataset=dataset, data_root=data_root, encoder=encoder, methods=names, bits=bits,
                     seed=seed, n_seeds=seeds, n_synthetic=n_synthetic, workers=workers)  # fmt: skip
    summary = run_demo(cfg, log=typer.echo, progress=progress_for(quiet))
    for line in next_commands(Path(summary["archive"]), summary["examples"]):
        typer.echo(line)


def next_commands(archive: Path, examples: list[dict]) -> list[str]:
    """The demo's last lines: commands that work when pasted into the shell the demo was started from."""
    mcmfh = mcmfh_command()
    texts = [ex["query"] for ex in examples if ex["direction"] == "text->image"]
    query = shlex.quote(texts[0] if texts else "axial CT of the brain")
    lines = ["", "next, paste one of:",
             f"  {mcmfh} search {archive} --text {query} --k 5",
             f"  {mcmfh} serve {archive}     # then open http://127.0.0.1:8000/"]  # fmt: skip
    activate = Path(mcmfh).parent / "activate"
    if mcmfh != "mcmfh" and activate.is_file():
        lines.append(f"  (or first `source {activate}`; then plain `mcmfh ...` works)")
    return lines
