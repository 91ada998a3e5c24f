"""The ``mcmfh`` command. Each area registers its commands from its own module (see the imports at the end)."""

from __future__ import annotations

import os
import sys

import typer

from mcmfh import __version__
from mcmfh.errors import MCMFHError

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


def main(argv: list[str] | None = None) -> int:
    """Entry point: expected failures print one readable line (``--debug`` for the traceback)."""
    args = sys.argv[1:] if argv is None else argv
    if "--debug" in args:
        os.environ["MCMFH_DEBUG"] = "1"
    try:
        app(args=args, standalone_mode=False)
    except MCMFHError as e:
        if os.environ.get("MCMFH_DEBUG"):
            raise
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except Exception as e:  # click's usage errors and the like
        import click

        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        raise
    return 0


# Command modules (import registers their commands on ``app``).
from mcmfh.cli import data as _data  # noqa: E402,F401
from mcmfh.cli import demo as _demo  # noqa: E402,F401
from mcmfh.cli import encode as _encode  # noqa: E402,F401
from mcmfh.cli import index as _index  # noqa: E402,F401
from mcmfh.cli import model as _model  # noqa: E402,F401
from mcmfh.cli import pacs as _pacs  # noqa: E402,F401
from mcmfh.cli import serve as _serve  # noqa: E402,F401
