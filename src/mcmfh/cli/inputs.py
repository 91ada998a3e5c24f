"""What the commands that read a dataset share: the ``--encoding`` option and the full report of skipped items."""

from __future__ import annotations

from pathlib import Path

import typer

from mcmfh.data.records import Dataset
from mcmfh.progress import Progress

ENCODING_HELP = "Text encoding of a csv/jsonl input (default utf-8), e.g. latin-1 or cp1252."
SKIP_REPORT_HELP = "With --skip-bad: file listing every skipped item (default: OUT.skipped.tsv beside the output)."


def load_input(name: str, root: Path, label_set: str | None, skip_bad: bool, encoding: str | None = None) -> Dataset:
    from mcmfh.data import load_dataset

    # Only passed when given, so loaders without the option (and existing caches' source keys) are unchanged.
    extra = {"encoding": encoding} if encoding is not None else {}
    return load_dataset(name, root, label_set=label_set, skip_bad=skip_bad, **extra)


def write_skip_report(target: Path, report: Path | None, skipped: list[tuple[str, str]]) -> Path | None:
    """Write the full list of skipped items (``where<TAB>why``) beside ``target`` (or to ``report``); say where."""
    from mcmfh.data.build import write_skip_report as write

    if not skipped:
        return None
    target = Path(target)
    path = write(report or target.with_name(target.name + ".skipped.tsv"), skipped)
    typer.echo(f"skipped {len(skipped)} item(s) in all; full list: {path}")
    return path


QUIET_HELP = "No progress output (default: a bar on a terminal, plain lines on stderr otherwise)."


def progress_for(quiet: bool) -> Progress:
    """The progress reporter of a long command (see ``mcmfh.progress``)."""
    return Progress.for_cli(quiet)
