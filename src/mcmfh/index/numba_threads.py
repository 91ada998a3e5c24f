"""Start numba's thread pool without changing anyone else's OpenMP thread count.

numba's OpenMP threading layer sets the calling thread's OpenMP thread count to numba's own (``NUMBA_NUM_THREADS``,
every CPU) when it starts its pool, and torch's CPU kernels run on the same GNU OpenMP runtime (both load
``libgomp.so.1``, which the dynamic linker shares). So the first parallel Hamming search in a process used to raise
torch's thread count behind the user's back: with ``OMP_NUM_THREADS=1`` a model fitted after an evaluation that ran a
two-stage search trained on two threads, and its codes differed from the same fit run first (measured: MedPix,
``mcmfh-supervised`` 32 bits seed 1, 0.498 / 0.556 against 0.497 / 0.566). ``ensure_started`` starts the pool at
kernel import, in the importing thread, and puts that thread's OpenMP count back.
"""

from __future__ import annotations

import ctypes
import threading

import numba

# The GNU OpenMP runtime numba's "omp" layer and torch share on Linux; elsewhere (no libgomp) there is nothing to
# restore.
GOMP_SONAME = "libgomp.so.1"

_lock = threading.Lock()
_started = False


def _gomp() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(GOMP_SONAME)
    except OSError:
        return None


def ensure_started() -> None:
    """Start numba's threading layer once per process (idempotent, thread-safe)."""
    global _started
    with _lock:
        if not _started:
            gomp = _gomp()
            before = gomp.omp_get_max_threads() if gomp is not None else 0
            numba.get_num_threads()  # starts the pool (numba launches its layer on first use)
            if gomp is not None and gomp.omp_get_max_threads() != before:
                gomp.omp_set_num_threads(before)
            _started = True
