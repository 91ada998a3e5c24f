"""Typed method options: a dataclass per method, filled from keyword options. The one coercer for every path an
option takes: ``--option key=value`` on the CLI (strings), ``method_options`` in an experiment YAML (YAML types) and
Python keyword arguments, for the baselines' options classes and ``mcmfh.model.config.MCMFHConfig`` alike.

Unknown keys and values of the wrong type are errors that name the method, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from mcmfh.errors import MCMFHError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(value: Any, typ: Any, where: str) -> Any:
    """``value`` as type ``typ`` (bool, int, float, str, a Literal, an optional or a tuple / list of them); a string
    is parsed (``"false"``, ``"8"``, ``"a,b"``). A value that is not of the type is refused naming ``where``."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Literal:
        if value not in args:
            raise MCMFHError(f"{where} must be one of {args}, got {value!r}")
        return value
    if origin is typing.Union or (origin is not None and type(None) in args):
        is_none = value is None or (isinstance(value, str) and value.lower() in {"none", "null"})
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where) if len(inner) == 1 else value
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = args[0] if args else str
        out = [coerce(v, inner, where) for v in items]
        return tuple(out) if origin is tuple else out
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError(value)
        if typ in (int, float) and isinstance(value, bool):  # True is an int to Python, never a count or a rate
            raise ValueError(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError) as e:
        raise MCMFHError(f"{where} expects {getattr(typ, '__name__', typ)}, got {value!r}") from e
    return value


def parse_options(cls: type[T], options: Mapping[str, Any], what: str) -> T:
    """Build the options dataclass ``cls`` from ``options``; ``what`` names the owner in error messages."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - names)
    if unknown:
        raise MCMFHError(f"{what}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values = {k: coerce(v, hints[k], f"{what}: option {k!r}") for k, v in options.items()}
    return cls(**values)
