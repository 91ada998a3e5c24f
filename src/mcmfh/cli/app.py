"""The root ``mcmfh`` Typer app and its global options; command modules register on it."""

from __future__ import annotations

import os

import typer

from mcmfh import __version__

app = typer.Typer(
    name="mcmfh",
    help="Medical cross-modal hashing retrieval: encode, train, evaluate, index and search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mcmfh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if debug:
        os.environ["MCMFH_DEBUG"] = "1"
