"""Micro-batching: concurrent submissions share batch calls, every caller gets its own row, errors reach all."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mcmfh.batching import BatchingConfig, MicroBatcher
from mcmfh.errors import MCMFHError


def test_concurrent_items_are_batched_and_answered_in_order() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def fn(items: list[int]) -> np.ndarray:
        gate.wait(5)  # the first call holds the worker while the others queue up
        sizes.append(len(items))
        return np.array([[x, x * x] for x in items])

    batcher = MicroBatcher(fn, BatchingConfig(max_batch=8, max_wait_s=0.05))
    with ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(batcher.submit, i) for i in range(24)]
        gate.set()
        rows = [f.result(timeout=10) for f in futures]
    batcher.close()
    assert [r.tolist() for r in rows] == [[i, i * i] for i in range(24)]
    assert sum(sizes) == 24 and max(sizes) <= 8
    assert len(sizes) < 24  # at least some requests shared a call


def test_errors_reach_every_caller_of_the_batch_and_the_worker_survives() -> None:
    def fn(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError("bad item")
        return [s.upper() for s in items]

    batcher = MicroBatcher(fn, BatchingConfig(max_batch=4, max_wait_s=0.0))
    with pytest.raises(ValueError, match="bad item"):
        batcher.submit("bad")
    assert batcher.submit("ok") == "OK"
    batcher.close()
    with pytest.raises(MCMFHError, match="closed"):
        batcher.submit("late")


def test_wrong_row_count_is_an_error() -> None:
    batcher = MicroBatcher(lambda items: [], BatchingConfig(max_wait_s=0.0))
    with pytest.raises(MCMFHError, match="0 rows for 1 items"):
        batcher.submit(1)
    batcher.close()
    with pytest.raises(MCMFHError, match="max_batch"):
        MicroBatcher(lambda items: items, BatchingConfig(max_batch=0))
