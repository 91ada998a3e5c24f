"""One writer at a time per folder: an exclusive advisory lock on a lock file we create inside it.

``fcntl.flock`` locks belong to the open file, so the kernel releases them when the holding process exits for any
reason, SIGKILL included: a stale lock recovers itself, and there is no pid file to clean up or guess about. The
file's text (pid, host, start time) is only there to name the holder in the message a waiting writer gets. The lock
serialises writers on one machine (and on file systems whose flock is shared, such as local disks); readers never
take it. Locks from two threads of one process exclude each other too, because each ``writer_lock`` opens the file
anew.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mcmfh.errors import MCMFHError

LOCK_NAME = ".writer.lock"
TIMEOUT_ENV = "MCMFH_LOCK_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0  # long enough to queue behind a normal add, short enough that a stuck writer is reported
POLL_S = 0.02


class LockTimeout(MCMFHError):
    """Another writer held the lock for longer than the caller would wait."""


def lock_timeout(value: float | None = None) -> float:
    """The wait a writer accepts: ``value``, else $MCMFH_LOCK_TIMEOUT, else 30 s."""
    if value is not None:
        return float(value)
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        out = float(raw)
    except ValueError:
        raise MCMFHError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if out < 0:
        raise MCMFHError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds >= 0")
    return out


@contextlib.contextmanager
def writer_lock(folder: str | Path, timeout: float | None = None, what: str | None = None) -> Iterator[None]:
    """Hold ``folder``'s writer lock for the block; wait up to ``timeout`` seconds (see ``lock_timeout``)."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    wait = lock_timeout(timeout)
    name = what or str(folder)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise MCMFHError(f"{name}: not writable (cannot create its lock file: {e.strerror})") from e
        raise
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{name}: another writer holds the lock ({_holder(fd)}); waited {wait:g} s. Try again when "
                        f"it has finished, or wait longer with --lock-timeout / {TIMEOUT_ENV}"
                    ) from None
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
