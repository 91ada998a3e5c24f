"""Dynamic micro-batching: concurrent callers' items gathered into one call of a batch function.

Encoders cost far more per call than per item (a 1-query ONNX/torch call pays its fixed overhead for one row), so
a server under concurrent load answers faster when requests that arrive together share one encoder call, as
inference servers (Triton, TorchServe) do. A caller submits one item and blocks; a worker thread takes the first
waiting item, collects more until ``max_batch`` items or ``max_wait_s`` have passed, calls the batch function once
and hands each caller its own row. A lone request waits at most ``max_wait_s`` more than unbatched.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mcmfh.errors import MCMFHError

T = TypeVar("T")


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = 32  # rows per encoder call; the service's default client count fits in one call
    max_wait_s: float = 0.004  # how long the first item of a batch waits for company (small next to ~20 ms/query)
    image_workers: int | None = None  # image queries encoded at once by an archive; default one per core


class MicroBatcher(Generic[T]):
    """``submit(item)`` returns ``fn([..., item, ...])[j]`` for its own j; ``fn`` maps a list to as many rows.

    An exception raised by ``fn`` is raised in every caller of that batch. One worker thread per batcher: batchers
    for different encoders (text, image) run in parallel."""

    def __init__(self, fn: Callable[[list[T]], Sequence[Any]], config: BatchingConfig | None = None,
                 name: str = "batcher") -> None:  # fmt: skip
        self.fn = fn
        self.config = config or BatchingConfig()
        if self.config.max_batch < 1 or self.config.max_wait_s < 0:
            raise MCMFHError(f"{name}: max_batch must be >= 1 and max_wait_s >= 0, got {self.config}")
        self._queue: queue.SimpleQueue[tuple[T, Future[Any]] | None] = queue.SimpleQueue()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()
        self.calls = 0  # batch-function calls so far (for tests and stats)

    def submit(self, item: T) -> Any:
        if self._closed:
            raise MCMFHError("micro-batcher is closed")
        future: Future[Any] = Future()
        self._queue.put((item, future))
        return future.result()

    def close(self) -> None:
        """Stop the worker after the items already submitted."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.config.max_wait_s
            stop = False
            while len(batch) < self.config.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._call(batch)
            if stop:
                return

    def _call(self, batch: list[tuple[T, Future[Any]]]) -> None:
        self.calls += 1
        try:
            rows = self.fn([item for item, _ in batch])
            if len(rows) != len(batch):
                raise MCMFHError(f"batch function returned {len(rows)} rows for {len(batch)} items")
        except BaseException as e:  # every waiting caller must be released, whatever happened
            for _, future in batch:
                future.set_exception(e)
            return
        for (_, future), row in zip(batch, rows, strict=True):
            future.set_result(row)
