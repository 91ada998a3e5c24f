"""``mcmfh encode`` (dataset -> cached frozen embeddings) and ``mcmfh encoders`` (what is available)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from mcmfh.cli.app import app
from mcmfh.cli.inputs import ENCODING_HELP, QUIET_HELP, SKIP_REPORT_HELP, load_input, progress_for, write_skip_report
from mcmfh.errors import MCMFHError


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a value that parses as JSON (numbers, true/false, null) is taken as such."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MCMFHError(f"--encoder-opt {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


_load_dataset = load_input  # the seam tests replace


@app.command()
def encode(
    dataset: str = typer.Option(..., "--dataset", help="Dataset loader: medpix2, openi, roco, csv, jsonl."),
    data_root: Path = typer.Option(..., "--data-root", help="Folder (or file) the loader reads."),
    encoder: str = typer.Option(..., "--encoder", help="Encoder name (see `mcmfh encoders`)."),
    out: Path = typer.Option(..., "--out", help="Feature cache folder to write (or reuse)."),
    label_set: str = typer.Option(None, "--label-set", help="Which labels define relevance (loader default)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable items (listed) instead of failing."),
    skip_report: Path = typer.Option(None, "--skip-report", help=SKIP_REPORT_HELP),
    encoding: str = typer.Option(None, "--encoding", help=ENCODING_HELP),
    device: str = typer.Option(None, "--device", help="Torch device for the encoder, e.g. cpu, cuda, auto."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace a cache at --out made from something else (default: refuse; a matching cache is always reused).",
    ),
    no_resume: bool = typer.Option(False, "--no-resume", help="Discard work left by an interrupted run."),
    encoder_opt: list[str] = typer.Option([], "--encoder-opt", "-E", help="Encoder option KEY=VALUE (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", hidden=True),  # older spelling of --quiet
    ray: str = typer.Option(
        None,
        "--ray",
        help="Encode on Ray (mcmfh[scale]): 'local' starts a local instance, else a cluster address "
        "(e.g. ray://head:10001 or auto). Same cache as in-process.",
    ),
    ray_workers: int = typer.Option(2, "--ray-workers", min=1, help="Ray actors, one encoder each."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus-per-worker", min=0.0, help="GPUs reserved per Ray actor."),
) -> None:
    """Encode a dataset into a feature cache; the same command again reuses it."""
    from mcmfh.encode_features import EncodeOptions, run_encode
    from mcmfh.encoders import get_encoder
    from mcmfh.outputs import check_output

    check_output(out, "features", overwrite=overwrite, resumable=True)  # before loading anything slow
    t0 = time.perf_counter()
    ds = _load_dataset(dataset, data_root, label_set, skip_bad, encoding)
    opts = _parse_options(encoder_opt)
    if device is not None:
        opts["device"] = device
    enc = get_encoder(encoder, **opts)
    runner = None
    if ray is not None:
        from mcmfh.distributed import RayChunkRunner

        runner = RayChunkRunner(
            encoder, opts, address=None if ray == "local" else ray, num_workers=ray_workers, gpus_per_worker=ray_gpus
        )
    result = run_encode(
        ds,
        enc,
        out,
        EncodeOptions(
            batch_size=batch_size,
            skip_bad=skip_bad,
            resume=not no_resume,
            on_mismatch="recompute" if overwrite else "refuse",
            progress=progress_for(quiet or not progress),
        ),
        chunk_runner=runner,
    )
    fs = result.features
    splits = ", ".join(f"{s} {int((fs.split == s).sum())}" for s in ("train", "dev", "test"))
    typer.echo(
        f"{ds.name} ({ds.label_set}, {len(ds.label_vocab)} labels): {len(fs)} items ({splits}), "
        f"{int(fs.has_image.sum())} with an image; encoder {enc.name} {fs.image_dim}+{fs.text_dim}-d"
    )
    if ds.report.skipped or ds.report.missing_images:
        typer.echo(f"loader: {ds.report.summary()}")
    if result.skipped:
        first = "; ".join(f"{i}: {why}" for i, why in result.skipped[:3])
        typer.echo(f"skipped {len(result.skipped)} unreadable image(s) (first: {first})")
    write_skip_report(out, skip_report, list(ds.report.skipped) + [(str(i), why) for i, why in result.skipped])
    if result.reused:
        typer.echo(f"reused cache {out} ({time.perf_counter() - t0:.1f} s)")
        return
    if result.n_resumed:
        typer.echo(f"resumed {result.n_resumed} item(s) from an interrupted run")
    backend = getattr(enc, "backend_used", None)
    typer.echo(
        f"encoded {result.n_images} images in {result.image_seconds:.1f} s ({result.images_per_s:.1f} images/s"
        f"{', ' + backend if backend else ''}), {result.n_texts} texts in {result.text_seconds:.1f} s "
        f"({result.texts_per_s:.1f} texts/s)"
    )
    typer.echo(f"wrote cache {out} ({time.perf_counter() - t0:.1f} s)")


@app.command("encoders")
def list_encoders() -> None:
    """List the available encoders."""
    from mcmfh.encoders import available_encoders, encoder_summary

    for name in available_encoders():
        typer.echo(f"{name:12s} {encoder_summary(name)}")
