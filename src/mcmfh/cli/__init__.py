"""The ``mcmfh`` command: its error boundary (``main``). The root command lives in ``mcmfh.cli.app``; each area
registers its commands on it from its own module (imported at the end), so no command module imports this one."""

from __future__ import annotations

import errno
import os
import sys

import typer

from mcmfh.cli.app import app
from mcmfh.errors import MCMFHError


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's exception classes: this typer build raises its bundled ``typer._click`` ones, older builds click's."""
    types: list[type[BaseException]] = []
    try:
        from typer._click import exceptions as bundled

        types.append(bundled.ClickException)
    except ImportError:  # typer that depends on standalone click
        pass
    try:
        import click

        types.append(click.ClickException)
    except ImportError:  # typer that bundles click and none installed
        pass
    return tuple(types)


def _os_error_line(e: OSError) -> str:
    where = e.filename if e.filename is not None else "the output"
    if e.errno == errno.ENOSPC:
        return f"disk full while writing {where}; what was committed before is safe; re-run to resume"
    if e.errno == errno.EROFS:
        return f"{where} is not writable ({e.strerror}); check its permissions or choose another path"
    if e.errno in (errno.EACCES, errno.EPERM):
        return _permission_line(e, where)
    if e.errno == errno.ENOENT:
        return f"{where}: no such file or folder"
    return f"{where}: {e.strerror or e}"


def _permission_line(e: OSError, where: str) -> str:
    """Read or write refused: the errno does not say which, the path does. One that does not exist yet was being
    created (a write: our writes go through a new temporary file); one we cannot read was being read."""
    path = e.filename
    if path is None or not os.path.lexists(path):
        return f"{where} is not writable ({e.strerror}); check its permissions or choose another path"
    if not os.access(path, os.R_OK):
        return f"{where} is not readable ({e.strerror}); check its permissions"
    if not os.access(path, os.W_OK):
        return f"{where} is not writable ({e.strerror}); check its permissions or choose another path"
    return f"{where}: {e.strerror}; check its permissions and those of the folders above it"


def _unicode_line(e: UnicodeDecodeError) -> str:
    where = getattr(e, "filename", None) or "an input file"
    return (
        f"{where} is not valid {e.encoding} text (byte {e.object[e.start : e.start + 1]!r} at offset {e.start});"
        f" save it as {e.encoding} or pass --encoding (e.g. --encoding latin-1)"
    )


def _is_safetensors_error(e: BaseException) -> bool:
    return type(e).__module__.split(".")[0] == "safetensors" or type(e).__name__ == "SafetensorError"


def _error_line(e: BaseException) -> tuple[str, int] | None:
    """The one line and exit code for an expected failure, or None for a genuine bug."""
    if isinstance(e, MCMFHError):
        return str(e), 2
    if isinstance(e, UnicodeDecodeError):
        return _unicode_line(e), 2
    if isinstance(e, OSError):
        return _os_error_line(e), 2
    if _is_safetensors_error(e):
        where = getattr(e, "filename", None) or "a .safetensors file"
        return f"{where} is corrupt or truncated (not a valid safetensors file: {e}); re-create it", 2
    return None


def _usage_line(e: BaseException) -> str:
    msg = e.format_message() if hasattr(e, "format_message") else str(e)
    param = getattr(e, "param", None)
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if lo is not None or hi is not None:  # state the allowed range, not only the side that was crossed
        msg += f"; allowed: an integer from {lo if lo is not None else '-inf'} to {hi if hi is not None else 'inf'}"
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return " ".join(msg.split()) + hint


def main(argv: list[str] | None = None) -> int:
    """Entry point: every usage error and expected failure is one ``error:`` line (exit 2); ``--debug`` re-raises."""
    args = sys.argv[1:] if argv is None else argv
    # libgomp's default is to spin while waiting: on a busy machine torch's OpenMP threads then starve each other.
    # A 16-bit MCMFH fit of the demo set took 131 s with the default at load average 5, 15 s with PASSIVE (13 s on
    # one thread). Read when torch is first imported (no command imports it before this); the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    debug = "--debug" in args
    if debug:
        os.environ["MCMFH_DEBUG"] = "1"
    if not args:
        args = ["--help"]
    usage_errors = _usage_error_types()
    try:
        # Without standalone mode, click returns a command's ``typer.Exit(code)`` as the value (index sync: 3).
        code = app(args=args, standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted; what was committed before is safe; re-run to resume", err=True)
        return 130
    except Exception as e:
        if debug or os.environ.get("MCMFH_DEBUG"):
            raise
        if usage_errors and isinstance(e, usage_errors):
            if type(e).__name__ == "NoArgsIsHelpError":  # a group called without a command: show its help
                typer.echo(e.format_message())
                return 0
            typer.secho(f"error: {_usage_line(e)}", fg=typer.colors.RED, err=True)
            return 2 if getattr(e, "exit_code", 1) in (1, 2) else e.exit_code
        known = _error_line(e)
        if known is not None:
            typer.secho(f"error: {known[0]}", fg=typer.colors.RED, err=True)
            return known[1]
        typer.secho(
            f"error: internal error ({type(e).__name__}: {' '.join(str(e).split())[:200]}); this is a bug —"
            " please report it with the output of the same command run with --debug",
            fg=typer.colors.RED,
            err=True,
        )
        return 1
    return code if isinstance(code, int) else 0


# Command modules (import registers their commands on ``app``).
from mcmfh.cli import data as _data  # noqa: E402,F401
from mcmfh.cli import demo as _demo  # noqa: E402,F401
from mcmfh.cli import encode as _encode  # noqa: E402,F401
from mcmfh.cli import index as _index  # noqa: E402,F401
from mcmfh.cli import model as _model  # noqa: E402,F401
from mcmfh.cli import pacs as _pacs  # noqa: E402,F401
from mcmfh.cli import serve as _serve  # noqa: E402,F401
