"""The real search engine behind the service: an ``Archive`` (run + encoder + Hamming indexes) as a ``SearchEngine``.

Text queries search image codes and image queries search text codes (cross-modal, each query coded from its own
modality alone). The archive serialises inference and database access with its own lock.

The archive stays live: a watcher thread polls ``Archive.state_token()`` (a ``stat`` per sub-index) every
``reload_interval`` seconds and, when it changed, ``Archive.refresh()`` reads the new segments and rows under the
archive's lock, so a search runs wholly before or wholly after the swap. A commit by ``mcmfh index add`` or
``remove`` is therefore visible within about one interval (0.25 s by default); a refresh that fails (say, mid-way
through a commit) keeps the old state, logs one line and is retried on the next tick.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from PIL import Image

from mcmfh.archive import Archive
from mcmfh.diversify import DEFAULT_PER_STUDY
from mcmfh.items import Hit, Item, StudyHit
from mcmfh.pacs.state import FACETS, SyncState, state_path
from mcmfh.service.engine import EngineInfo

log = logging.getLogger(__name__)
RELOAD_INTERVAL_S = 0.25  # how often the watcher checks for commits: well inside the one-second promise


class ArchiveEngine:
    def __init__(self, archive: Archive, reload_interval: float | None = RELOAD_INTERVAL_S) -> None:
        self.archive = archive
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._state: SyncState | None = None
        self.reloads = 0  # committed changes picked up since start (for tests and /health)
        self._stop = threading.Event()
        self._token = archive.state_token()
        self._watcher: threading.Thread | None = None
        if reload_interval:
            self._watcher = threading.Thread(target=self._watch, args=(reload_interval,), daemon=True,
                                             name="mcmfh-archive-watcher")  # fmt: skip
            self._watcher.start()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.check_for_changes()

    def check_for_changes(self) -> bool:
        """Pick up committed changes now; returns whether there were any."""
        if not self.archive.indexes:  # closed under us (e.g. by its owner): nothing left to follow
            self._stop.set()
            return False
        try:
            token = self.archive.state_token()
            if token == self._token:
                return False
            self.archive.refresh()
        except Exception as e:  # keep serving the last good state; the next tick tries again
            log.warning("archive reload failed (%s: %s); still serving the previous state", type(e).__name__, e)
            return False
        self._token = token
        self.reloads += 1
        return True

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self._state is not None:
            self._state.close()
        self.archive.close()

    @property
    def image_root(self) -> Path | None:
        """Where the archive's item images live (the dataset root it was built from)."""
        return self.archive.image_root

    def info(self) -> EngineInfo:
        m = self.archive.manifest
        return EngineInfo(method=m["method"], bits=int(m["bits"]), encoder=str(m["encoder"]),
                          items=len(self.archive), name=self.archive.folder.name,
                          studies=self.archive.has_studies)  # fmt: skip

    def search_text(self, query: str, k: int, per_study: int | None = None, hybrid: bool | None = None) -> list[Hit]:
        per = DEFAULT_PER_STUDY if per_study is None else per_study
        return self.archive.search_text(query, k, per_study=per, hybrid=hybrid)

    def search_image(self, image: Image.Image, k: int, per_study: int | None = None) -> list[Hit]:
        per = DEFAULT_PER_STUDY if per_study is None else per_study
        return self.archive.search_image(image, k, per_study=per)

    def search_studies_text(self, query: str, k: int, hybrid: bool | None = None) -> list[StudyHit]:
        return self.archive.search_studies_text(query, k, hybrid=hybrid)

    def search_studies_image(self, image: Image.Image, k: int) -> list[StudyHit]:
        return self.archive.search_studies_image(image, k)

    def get_item(self, item_id: str) -> Item | None:
        return self.archive.get(item_id)

    def add_records(self, records: list[Item]) -> int:
        """Add through the served archive (opened writable, see ``open_engine``): the archive takes the writer
        lock per change, so this waits for (and excludes) CLI writers; one API write at a time in this process."""
        with self._write_lock:
            return self.archive.add_records(records, source="api")["texts"]

    def remove(self, item_ids: list[str]) -> int:
        with self._write_lock:
            return self.archive.remove(item_ids)

    def image_path(self, item_id: str) -> Path | None:
        item = self.archive.get(item_id)
        if item is None or item.image is None:
            return None
        return Path(item.image).resolve()

    def study_metadata(self, item_ids: list[str]) -> dict[str, dict[str, str]]:
        state = self._sync_state()
        return state.metadata(item_ids) if state is not None else {}

    def facets(self) -> dict[str, list[str]]:
        state = self._sync_state()
        return state.facets() if state is not None else {name: [] for name in FACETS}

    def _sync_state(self) -> SyncState | None:
        """The archive's PACS sync state (``mcmfh index sync``), opened once it exists: a sync may start later."""
        with self._state_lock:
            if self._state is None and state_path(self.archive.folder).is_file():
                self._state = SyncState(self.archive.folder)
            return self._state


def set_torch_threads(threads: int | None) -> None:
    """Threads per torch call (the hashing model) in the serving process; None leaves torch's default (all cores).

    The service gets its parallelism from concurrent requests (one micro-batcher per modality, ONNX Runtime
    sessions with one intra-op thread each). A torch call that also spreads over every core only adds spinning
    threads on cores already busy: measured on 2 cores, a hashing call took 5.5 ms of CPU with 2 threads and
    2.3-3.0 ms with one, at the same wall time."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def open_engine(index_dir: Path, warm_up: bool = True, reload_interval: float | None = RELOAD_INTERVAL_S,
                writable: bool = False, lock_timeout: float | None = None,
                torch_threads: int | None = 1) -> ArchiveEngine:  # fmt: skip
    """Open the archive; ``warm_up`` loads the encoder and compiles the search kernels now, not on the first query;
    ``reload_interval`` (seconds; None: never) is how often committed changes are looked for. ``writable`` allows
    ``add_records`` / ``remove`` (opening writable takes no lock: each change does, waiting ``lock_timeout`` s).
    ``torch_threads``: threads per hashing-model call (``set_torch_threads``; None: torch's default)."""
    set_torch_threads(torch_threads)
    archive = Archive.open(index_dir, writable=writable, lock_timeout=lock_timeout)
    if warm_up:
        archive.search_text("warm-up", 1)
    return ArchiveEngine(archive, reload_interval)
