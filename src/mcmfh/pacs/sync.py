"""The sync loop: list (QIDO-RS), diff against the sync state, fetch new images (WADO-RS, bounded concurrency),
encode and add them in batches through ``target``, record them; optionally prune what the PACS no longer has.

Resumable: each batch is committed to the archive, then to the state, so a killed sync loses at most one batch of
transfer; the next run skips what the state (or the archive) already holds. One sync per archive at a time (a lock
file). Instances of studies without a report are skipped and picked up by a later sync once the report exists.

The archive is bound to the PACS URL of its first sync whose listing succeeded (a typo that answers 404 binds
nothing); ``repoint`` moves it to another URL. A run in which some instances or reports failed is ``partial``
(``SyncResult.status``): what was added is committed and the failures are retried by the next run. Objects that
are not images (no pixel data) are remembered and never fetched again (``mcmfh.pacs.failures``).
"""

from __future__ import annotations

import fcntl
import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from mcmfh.errors import MCMFHError
from mcmfh.io import atomic_write_bytes
from mcmfh.items import Item
from mcmfh.pacs.client import PacsConfig, connect, require_extra
from mcmfh.pacs.failures import failure_reason, not_an_image
from mcmfh.pacs.fetch import ImageFetcher
from mcmfh.pacs.prune import DEFAULT_MAX_SHARE, check_prune, gone_in_scope
from mcmfh.pacs.qido import listing_error
from mcmfh.pacs.query import Filters, InstanceRef, list_instances
from mcmfh.pacs.reports import ReportFile, sr_reports
from mcmfh.pacs.state import FOLDER, SyncState
from mcmfh.pacs.target import open_archive
from mcmfh.progress import SILENT, Progress

SOURCE = "pacs"
LOCK_NAME = "sync.lock"
IMAGES = "images"


@dataclass(frozen=True)
class SyncOptions:
    reports: Path | None = None  # a RIS export; None with sr=False means: SR reports
    sr: bool = False
    filters: Filters = field(default_factory=Filters)
    prune: bool = False
    force: bool = False  # prune past the guard of mcmfh.pacs.prune
    prune_max_share: float = DEFAULT_MAX_SHARE
    repoint: bool = False  # this run may move the archive to another PACS URL
    fetch: str = "auto"
    batch_size: int = 32
    image_side: int = 512  # the kept PNG's longest side: encoders read 224-384 px, so larger adds only disk
    progress: Progress = SILENT  # instances fetched and indexed

    def __post_init__(self) -> None:
        if self.reports is not None and self.sr:
            raise MCMFHError("give either --reports FILE or --sr, not both")
        if self.batch_size < 1 or self.image_side < 16:
            raise MCMFHError("--batch-size >= 1 and --image-side >= 16 expected")
        if not 0.0 <= self.prune_max_share <= 1.0:
            raise MCMFHError(f"--prune-max-share {self.prune_max_share}: expected a share from 0 to 1")
        if self.repoint and self.prune:
            raise MCMFHError("--repoint with --prune: re-point first (a run without --prune), check that the new PACS "
                             "lists what you expect, then prune in a later run")  # fmt: skip


@dataclass
class SyncResult:
    listed: int = 0
    new: int = 0
    fetched: int = 0  # image instances retrieved (WADO-RS), successful or not
    rendered: int = 0  # of those, served as the server's rendered frame (the rest: pixel data decoded here)
    added: int = 0
    no_report: int = 0
    failed: int = 0  # image instances that failed (fetch or decode); retried by the next run
    not_image: int = 0  # fetched, but no image in them (no pixel data): remembered, never fetched again
    pruned: int = 0
    list_s: float = 0.0
    transfer_s: float = 0.0  # wall time of the WADO-RS fetches (reports and images)
    encode_s: float = 0.0  # wall time of encoding + hashing + committing to the archive
    total_s: float = 0.0
    errors: list[str] = field(default_factory=list)  # "instance UID: reason", "report UID: reason"
    failures: dict[str, int] = field(default_factory=dict)  # "instance: reason" -> count
    repointed_from: str | None = None

    @property
    def status(self) -> str:
        """``complete``, or ``partial`` when some instance or report failed (the next run retries them)."""
        return "partial" if self.errors else "complete"

    def note_failure(self, kind: str, uid: str, reason: str) -> None:
        self.errors.append(f"{kind} {uid}: {reason}")
        key = f"{kind}: {reason}"
        self.failures[key] = self.failures.get(key, 0) + 1

    def as_dict(self) -> dict:
        return {**asdict(self), "status": self.status}


def item_id_of(ref: InstanceRef) -> str:
    return ref.sop_uid


def sync(archive_dir: str | Path, config: PacsConfig, options: SyncOptions | None = None,
         log: Callable[[str], None] | None = None) -> SyncResult:  # fmt: skip
    """Bring the archive at ``archive_dir`` up to date with the PACS at ``config.url``."""
    options = options or SyncOptions(sr=True)
    require_extra()
    archive_dir = Path(archive_dir)
    if not (archive_dir / "manifest.json").is_file():
        raise MCMFHError(f"{archive_dir}: not an archive (no manifest.json); make one with `mcmfh index build`")
    log = log or (lambda _: None)
    t0 = time.perf_counter()
    result = SyncResult()
    reports = ReportFile.load(options.reports) if options.reports else None  # bad file: fail before any request
    client = connect(config)
    with _lock(archive_dir / FOLDER / LOCK_NAME):
        state = SyncState(archive_dir)
        try:
            state.check_source(config.public_url, options.repoint)
            t = time.perf_counter()
            images, srs = _listed(client, options.filters, config)
            result.list_s = time.perf_counter() - t
            result.listed = len(images)
            before = state.record_source(config.public_url)  # only now: this URL answered a listing
            if before is not None and before != config.public_url:
                result.repointed_from = before
                log(f"re-pointed this archive from {before} to {config.public_url}")
            known, not_images = state.known(), state.not_images()
            new = [r for r in images if r.sop_uid not in known and r.sop_uid not in not_images]
            result.new = len(new)
            gone: list[str] = []
            if options.prune:
                gone, in_scope = gone_in_scope(known, images, options.filters)
                if not options.force:
                    check_prune(len(gone), in_scope, len(images), options.prune_max_share, config.public_url)
            writer = open_archive(archive_dir) if new or gone else None
            try:
                if gone:
                    result.pruned = writer.remove([known[s][0] for s in gone])
                    state.forget(gone)
                    log(f"pruned {result.pruned} item(s) deleted on the PACS")
                if new:
                    t = time.perf_counter()
                    texts = _reports_for(client, new, srs, reports, result)
                    result.transfer_s += time.perf_counter() - t
                    todo = [r for r in new if texts.get(r.study_uid)]
                    result.no_report = len(new) - len(todo)
                    _add_all(todo, texts, client, config, options, archive_dir, writer, state, result)
            finally:
                if writer is not None:
                    writer.close()
        finally:
            state.close()
    result.total_s = time.perf_counter() - t0
    return result


def _listed(client, filters: Filters, config: PacsConfig):
    try:
        return list_instances(client, filters, config.paging(), workers=config.workers)
    except Exception as e:
        error = listing_error(e, config.public_url)
        if error is None:
            raise
        raise error from None


def _reports_for(
    client, new: Sequence[InstanceRef], srs: Sequence[InstanceRef], reports: ReportFile | None, result: SyncResult
) -> dict[str, str]:
    studies = {r.study_uid for r in new}
    if reports is None:
        return sr_reports(client, srs, studies, lambda uid, reason: result.note_failure("report", uid, reason))
    first = {}
    for r in new:
        first.setdefault(r.study_uid, r)
    return {s: text for s, ref in first.items() if (text := reports.text_for(ref))}


def _add_all(todo, texts, client, config, options, archive_dir, writer, state, result) -> None:
    fetcher = ImageFetcher(client, options.fetch)
    image_dir = archive_dir / FOLDER / IMAGES
    image_dir.mkdir(parents=True, exist_ok=True)

    def fetch_one(ref: InstanceRef) -> tuple[InstanceRef, Path | None, BaseException | None]:
        try:
            image = fetcher(ref)
        except Exception as e:  # one bad instance must not stop the sync; reasons never carry header values
            return ref, None, e
        path = image_dir / f"{ref.sop_uid}.png"
        atomic_write_bytes(path, _png(image, options.image_side))
        return ref, path, None

    bar = options.progress.task("index sync", total=len(todo), unit="instance")
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        for batch in _chunks(todo, options.batch_size):
            t = time.perf_counter()
            fetched = list(pool.map(fetch_one, batch))
            result.transfer_s += time.perf_counter() - t
            result.fetched += len(batch)
            ok = [(ref, path) for ref, path, err in fetched if err is None]
            skipped = [(ref.sop_uid, failure_reason(err)) for ref, _, err in fetched if err and not_an_image(err)]
            for ref, _, err in fetched:
                if err is not None and not not_an_image(err):
                    result.failed += 1
                    result.note_failure("instance", ref.sop_uid, failure_reason(err, options.fetch == "pixels"))
            result.not_image += len(skipped)
            records = [Item(id=item_id_of(ref), image=path, text=texts[ref.study_uid], labels=(), split="pacs")
                       for ref, path in ok]  # fmt: skip
            t = time.perf_counter()
            if records:
                result.added += writer.add(records, SOURCE)
                state.record([ref for ref, _ in ok], [r.id for r in records])
            if skipped:
                state.record_not_images(skipped)
            result.encode_s += time.perf_counter() - t
            bar.update(len(batch), failed=result.failed or None)
    bar.close()
    result.rendered += fetcher.rendered


def _png(image: Image.Image, side: int) -> bytes:
    image = image.copy()
    image.thumbnail((side, side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # PIL writes no text chunks unless asked: the PNG carries pixels only
    return buf.getvalue()


def _chunks(items: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MCMFHError(f"{path.parent.parent}: another sync is running on this archive") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock, also when the process is killed
