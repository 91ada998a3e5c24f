"""Progress of long jobs (train, experiment, encode, index build, index sync): one object, passed in.

``Progress.for_cli(quiet)`` picks the behaviour once, at the command line: a tqdm bar on a terminal, plain lines on
stderr when stderr is not a terminal (a log file, CI, a pipe), nothing with ``--quiet``. Library functions take a
``Progress`` argument that defaults to ``SILENT``, so nothing is printed unless a caller asked for it; there is no
global switch.

A job opens a ``Task`` per unit of work it can count (epochs of a stage, rows of an experiment, items encoded) and
calls ``update`` as each finishes, with the figures worth seeing (``dev=0.41``). Lines carry elapsed time and an
ETA from the mean time per unit so far.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Literal, TextIO

Mode = Literal["bar", "lines", "off"]
# Plain-line mode prints a task's first and last update and at most one line per this many seconds between: a
# 24-epoch fit on the demo set takes about 2 s, MedPix encoding about 30 s, so a log gets a handful of lines per job
# instead of one per batch.
LINE_INTERVAL_S = 5.0


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


def _figure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Task:
    """Counts one job's units; reports through its ``Progress``. Use as a context manager (or call ``close``)."""

    def __init__(self, progress: Progress, desc: str, total: int | None, unit: str, initial: int = 0) -> None:
        self.progress, self.desc, self.total, self.unit = progress, desc, total, unit
        self.done = initial
        self._initial = initial  # units done before this run (resumed): not counted in the rate
        self._start = time.monotonic()
        self._last_line: float | None = None
        self._bar = None
        if progress.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=progress.stream,
                             dynamic_ncols=True, leave=False)  # fmt: skip

    def update(self, n: int = 1, **figures: Any) -> None:
        """``n`` more units done; ``figures`` (e.g. ``dev=0.41``) are shown beside the count."""
        self.done += n
        shown = {k: v for k, v in figures.items() if v is not None}
        if self._bar is not None:
            if shown:
                self._bar.set_postfix({k: _figure(v) for k, v in shown.items()}, refresh=False)
            self._bar.update(n)
        elif self.progress.mode == "lines":
            now = time.monotonic()
            finished = self.total is not None and self.done >= self.total
            if finished or self._last_line is None or now - self._last_line >= self.progress.interval_s:
                self._last_line = now
                self.progress.write(self.line(now, shown))

    def line(self, now: float, figures: dict[str, Any]) -> str:
        """``desc: 5/24 epoch(s) (21%) | dev 0.41 | 3s, ETA 11s``."""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.desc}: {count} {self.unit}{pct}"]
        parts += [f"{k} {_figure(v)}" for k, v in figures.items()]
        elapsed = now - self._start
        timing = _duration(elapsed)
        counted = self.done - self._initial
        if self.total is not None and counted > 0 and self.done < self.total:
            timing += f", ETA {_duration(elapsed / counted * (self.total - self.done))}"
        return " | ".join([*parts, timing])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Progress:
    """How long jobs report: ``bar`` (tqdm), ``lines`` (plain lines) or ``off``; see the module docstring."""

    def __init__(self, mode: Mode = "off", stream: TextIO | None = None, interval_s: float = LINE_INTERVAL_S) -> None:
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"progress mode {mode!r}: expected bar, lines or off")
        self.mode: Mode = mode
        self._stream = stream
        self.interval_s = interval_s

    @classmethod
    def for_cli(cls, quiet: bool = False, stream: TextIO | None = None) -> Progress:
        """What a command shows: nothing when ``quiet``, a bar when ``stream`` (default stderr) is a terminal, else
        plain lines."""
        if quiet:
            return cls("off")
        target = stream or sys.stderr
        tty = bool(getattr(target, "isatty", lambda: False)())
        return cls("bar" if tty else "lines", stream)

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr  # looked up late: tests and CLI runners swap sys.stderr

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def task(self, desc: str, total: int | None = None, unit: str = "it", initial: int = 0) -> Task:
        """A counter for one job of ``total`` units (None: unknown), ``initial`` of them already done."""
        return Task(self, desc, total, unit, initial)

    def write(self, message: str) -> None:
        """One line beside any bar (tqdm keeps its bar below it); nothing when off."""
        if self.mode == "off":
            return
        if self.mode == "bar":
            from tqdm.auto import tqdm

            tqdm.write(message, file=self.stream)
            return
        print(message, file=self.stream, flush=True)


SILENT = Progress("off")
