"""An archive: a trained run plus exact Hamming indexes of its items' image codes and text codes.

Folder layout::

    manifest.json   kind "archive": the run's identity (method, bits, encoder, weights hash), image root
    run/            a copy of the run folder, so the archive is self-contained and cannot drift from its model
    images/         sub-index of image codes (items that have an image)
    texts/          sub-index of text codes (every item)
    studies/        (archives with studies) one fused code per study: item id = study id, labels = the union
    study_members/  (archives with studies) one row per item: its study and, as payload, its ``study_inputs``

An archive built from features with studies (``FeatureSet.has_studies``) by a method with a study head
(``HashMethod.has_study_codes``) on a local store keeps the two study sub-indexes (manifest entry ``studies``). A
member's payload is a has-image byte and its (2, width) study inputs as float16, so ``add`` re-codes exactly the
studies it touched from their members' stored inputs and ``remove`` re-codes or drops them; the re-coded rows
replace the old ones in one generation of ``studies/`` (``ItemIndex.add(replace=...)``). All four sub-indexes are in
the commit record, so a reader sees items and studies change together. Without a study head, a study search ranks
studies by the nearest of their members' image and text codes (``search_studies_text`` / ``_image``; the no-fusion
``min`` rule of ``mcmfh.study_eval``).

A sub-index is an ``ItemIndex`` in the folder (``--backend local``, the default) or a ``ServerStore``: codes in a
Milvus collection, metadata in the folder's SQLite or in PostgreSQL (``mcmfh.index.stores``). The manifest's
``store`` entry says which (without secrets), so ``Archive.open`` reconnects.

Cross-modal by default: a text query is hashed by the text branch and searched against image codes (the images for
a clinical phrase); an image query is hashed by the image branch and searched against text codes (the report for an
image). Each query is coded from its own modality alone, as at evaluation.

``build`` writes the whole folder atomically. ``add``, ``remove`` and ``compact`` run under the archive's writer lock
(``mcmfh.locking``: one writer at a time, others wait up to ``lock_timeout``; a killed writer's lock is released
by the kernel), after catching up with what other writers committed. Each change commits the two local
sub-indexes one after the other and then ``commit.json``, the archive's commit record: a snapshot of both
sub-index manifests, replaced by one rename. Readers open the sub-indexes at the record's snapshots, never at a
newer sub-index state, so they see a change in both modalities or in neither. A writer killed between the
sub-indexes and the record left one sub-index ahead; the next writer rolls it back to the record
(``ItemIndex.roll_back_to``), and rerunning the ``add`` completes it (ids already present are skipped). With no
record (lost, or an archive made before records), sub-indexes that disagree are refused until ``repair``
(``mcmfh.archive_agreement``). Server
stores (Milvus) are not pinned: their codes and metadata keep their own invariant (``mcmfh.index.stores``).
Readers never lock. A long-lived reader (the service) polls ``state_token()`` and calls ``refresh()`` (or
reopens) when it changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.archive_agreement import check_agreement, require_agreement
from mcmfh.batching import BatchingConfig, MicroBatcher
from mcmfh.data.records import Dataset, Record
from mcmfh.encoders.base import Encoder, ImageInput
from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.index.codes import pack_codes
from mcmfh.index.items import Hit, Item, StudyHit, record_item
from mcmfh.index.payload import PayloadCodec, make_codec
from mcmfh.index.rerank import candidates, rescore
from mcmfh.index.server_store import ServerStore
from mcmfh.index.storage import ItemIndex
from mcmfh.index.stores import (
    ItemStore,
    StoreConfig,
    create_store,
    drop_store,
    open_store,
    store_manifest,
)
from mcmfh.io import atomic_dir, atomic_write_json
from mcmfh.locking import lock_timeout, writer_lock
from mcmfh.manifest import new_manifest, read_manifest, require_match
from mcmfh.method import WEIGHTS_NAME, HashMethod
from mcmfh.numpy_hash import NUMPY_QUERY_ROWS, NumpyHasher
from mcmfh.progress import SILENT, Progress, Task
from mcmfh.runs import check_features, load_run

KIND = "archive"
RECORD_NAME = "commit.json"  # the archive's commit record: {"generation": n, "images": manifest, "texts": manifest}
OPEN_RETRIES = 5  # an open or refresh that races two commits re-reads the record this many times
MODALITIES = ("images", "texts")
# Manifest fields every sub-index must share with the archive: an index made by another model is refused.
IDENTITY_KEYS = ("run_id", "method", "bits", "encoder", "encoder_version")
PAYLOAD_CODEC = "int8"  # two-stage payload: the model's relaxed outputs, bits bytes per item (issue 17's choice)
BATCH_ENV = "MCMFH_BATCH_QUERIES"  # "0": encode queries one at a time under the archive lock (the old behaviour)
STUDY_PARTS = ("studies", "study_members")  # the study sub-indexes (local only; see the module docstring)
STUDY_INPUT_DTYPE = "<f2"  # stored study inputs: float16 (2 x width values per item) is plenty for a re-code
TARGETS = ("images", "texts", "studies")
RECODE_STUDIES = 4096  # studies coded per pass when many change at once (a build): bounds the inputs held


def run_identity(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """What identifies a trained model: its weights' hash plus the encoder it reads."""
    weights = Path(run_dir) / WEIGHTS_NAME
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return {
        "run_id": digest,
        "method": manifest["method"],
        "bits": int(manifest["bits"]),
        "encoder": manifest.get("encoder"),
        "encoder_version": manifest.get("encoder_version"),
    }


def dataset_from_source(source: dict[str, Any]) -> Dataset:
    """Reload the dataset a feature cache was encoded from (its manifest's ``source``)."""
    from mcmfh.data import load_dataset

    if not source or "loader" not in source:
        raise MCMFHError("the features do not record which dataset they came from; pass the dataset explicitly")
    return load_dataset(source["loader"], source["root"], label_set=source.get("label_set"), skip_bad=True,
                        **source.get("options", {}))  # fmt: skip


@dataclass(frozen=True)
class Batch:
    """Items to index with their frozen embeddings (image rows only where ``has_image``)."""

    records: list[Record]
    image: np.ndarray
    text: np.ndarray
    has_image: np.ndarray
    source: str


class Archive:
    """Open with ``Archive.open(folder)``; make with ``Archive.build(run_dir, features, out)``."""

    def __init__(
        self, folder: Path, manifest: dict[str, Any], writable: bool, lock_timeout: float | None = None,
        check_parts: bool = True,
    ) -> None:  # fmt: skip
        self.folder = folder
        self.manifest = manifest
        self.writable = writable
        self.lock_timeout = lock_timeout
        expect = {k: manifest[k] for k in IDENTITY_KEYS}
        store = manifest.get("store", {"backend": "local"})
        self.indexes: dict[str, ItemStore] = {}
        # Every sub-index, in commit order: the study ones last (they are made from the items).
        fused = (manifest.get("studies") or {}).get("rule") == "fused"
        self.parts = MODALITIES + (STUDY_PARTS if fused else ())
        for attempt in range(OPEN_RETRIES + 1):
            self.record = read_record(folder)
            try:
                for m in self.parts:
                    where = store if m in MODALITIES else {"backend": "local"}
                    self.indexes[m] = open_store(folder / m, m, int(manifest["bits"]), where, expect, writable,
                                                 lock_timeout, at=self.record.get(m))  # fmt: skip
                if check_parts and not self.record:  # nothing pins the sub-indexes: they must agree
                    require_agreement(folder, check_agreement(self.indexes, has_record=False))
                break
            except ArtefactError:
                self.close()
                # Two commits while opening removed the snapshot's files: that is not damage, retry on the new one.
                if attempt == OPEN_RETRIES or read_record(folder) == self.record:
                    raise
            except BaseException:
                self.close()
                raise
        self.run_manifest = read_manifest(folder / "run", kind="run")
        require_match(manifest, run_identity(folder / "run", self.run_manifest), IDENTITY_KEYS, f"archive {folder}")
        # The torch model is loaded on first use (adds, studies, queries numpy cannot code exactly): a query is coded
        # by the numpy copy of the model where there is one (mcmfh.numpy_hash), so a CLI search never imports torch.
        self._method: HashMethod | None = None
        self._method_lock = threading.Lock()
        self.query_hasher = NumpyHasher.load(folder / "run", self.run_manifest.get("weights_sha256"))
        self._encoder: Encoder | None = None
        # One lock for the indexes and the SQLite handles: the service calls from several threads. Query encoding
        # runs outside it, in one micro-batcher per modality.
        self._lock = threading.Lock()
        self._changing = threading.Lock()  # held for a whole change (both sub-indexes and the record)
        self._batchers: dict[str, MicroBatcher[Any]] = {}
        self._image_pool: ThreadPoolExecutor | None = None
        self.batching = BatchingConfig()

    # ---------------------------------------------------------------------------------------------- make / open
    @classmethod
    def build(
        cls,
        run_dir: str | Path,
        features: FeatureSet,
        out: str | Path,
        splits: Sequence[str] = ("train", "dev"),
        dataset: Dataset | None = None,
        overwrite: bool = False,
        store: StoreConfig | None = None,
        progress: Progress = SILENT,
    ) -> Archive:
        """Hash the ``splits`` of ``features`` with the run's model and store them with their metadata (``progress``
        counts the sub-indexes written).

        ``store`` picks where the sub-indexes live (default: local). On a server, a failed build deletes the
        collections (and schemas) it made; ``overwrite`` also replaces those of an earlier archive of this run."""
        run_dir, out = Path(run_dir), Path(out)
        method, run_manifest = load_run(run_dir)
        check_features(run_manifest, features, run_dir)
        if out.exists() and not overwrite:
            raise MCMFHError(f"{out}: already exists (use --overwrite to replace it)")
        part = features.splits(*splits)
        if not len(part):
            raise MCMFHError(f"features have no items in split(s) {list(splits)}")
        dataset = dataset or dataset_from_source(features.manifest.get("source", {}))
        batch = _batch_from_features(part, dataset)
        identity = run_identity(run_dir, run_manifest)
        config = store or StoreConfig()
        where = store_manifest(config, identity["run_id"])
        studies = _studies_entry(method, where, part)
        if overwrite and where["backend"] != "local" and out.exists():
            drop_server_stores(out)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            shutil.copytree(run_dir, tmp / "run")
            fields = {k: v for k, v in identity.items() if k != "bits"}  # bits is the index's own field
            made: list[ItemStore] = []
            try:
                for m in MODALITIES:
                    made.append(create_store(tmp / m, m, identity["bits"], where, config, fields))
                for m in STUDY_PARTS if studies and studies["rule"] == "fused" else ():
                    made.append(create_store(tmp / m, m, identity["bits"], {"backend": "local"}, StoreConfig(), fields))
                manifest = new_manifest(
                    KIND,
                    **identity,
                    dataset=features.manifest.get("dataset"),
                    label_set=features.manifest.get("label_set"),
                    splits=list(splits),
                    image_root=(dataset.source or {}).get("root"),
                    store=where,
                    payload=_payload_entry(method, where, part.text[:1]),
                    studies=studies,
                )
                atomic_write_json(tmp / "manifest.json", manifest)
                archive = cls(tmp, manifest, writable=True)
                try:
                    with progress.task("index build", total=len(archive.parts), unit="sub-index") as task:
                        archive._add_batch(batch, method, task)
                    for index in archive.indexes.values():
                        if isinstance(index, ServerStore):
                            index.flush()  # a bulk load: searches then run on sealed, indexed segments
                finally:
                    archive.close()
            except BaseException:
                for s in made:  # a half-built archive leaves nothing on the servers
                    _quietly(drop_store, s)
                raise
            for s in made:
                s.close()
        return cls.open(out)

    @classmethod
    def open(cls, folder: str | Path, writable: bool = False, lock_timeout: float | None = None,
             check_parts: bool = True) -> Archive:  # fmt: skip
        """Open an archive; ``writable`` allows changes, each taken under the writer lock (waiting up to
        ``lock_timeout`` seconds, default $MCMFH_LOCK_TIMEOUT or 30). Without a commit record, sub-indexes that
        disagree are refused (``mcmfh.archive_agreement``) unless ``check_parts`` is False (``index info``)."""
        folder = Path(folder)
        manifest = read_manifest(folder, KIND)
        missing = [k for k in IDENTITY_KEYS if k not in manifest]
        if missing:
            raise ArtefactError(f"{folder}/manifest.json: missing fields {missing}")
        return cls(folder, manifest, writable, lock_timeout, check_parts)

    def state_token(self) -> tuple[Any, ...]:
        """A cheap value that changes whenever a change to this archive is committed (poll it, then ``refresh``)."""
        try:
            st = (self.folder / RECORD_NAME).stat()
            record: tuple[int, ...] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            record = ()
        pinned = [m for m in self.parts if m in self.record]
        return record, *(self.indexes[m].state_token() for m in self.parts if m not in pinned)

    def refresh(self) -> bool:
        """Catch up with changes other processes committed; returns whether anything changed."""
        # Not during this process's own change: refreshing to the record mid-change would undo its first half.
        with self._changing, self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> bool:
        for attempt in range(OPEN_RETRIES + 1):
            record = read_record(self.folder)
            try:
                changed = [self._refresh_one(m, record) for m in self.parts]
                self.record = record
                return any(changed)
            except ArtefactError:
                if attempt == OPEN_RETRIES or read_record(self.folder) == record:
                    raise
        raise AssertionError("unreachable")

    def _refresh_one(self, modality: str, record: dict[str, Any]) -> bool:
        index = self.indexes[modality]
        if isinstance(index, ItemIndex) and modality in record:
            return index.refresh(at=record[modality])
        return index.refresh()

    @contextlib.contextmanager
    def _writing(self, repair: bool = False) -> Iterator[None]:
        if not self.writable:
            raise MCMFHError(f"archive {self.folder}: opened read-only (use Archive.open(..., writable=True))")
        what = f"archive {self.folder}"
        with writer_lock(self.folder, self.lock_timeout, what=what), self._changing, contextlib.ExitStack() as servers:
            for index in self.indexes.values():
                if isinstance(index, ServerStore):
                    servers.enter_context(index.writer_lock(lock_timeout(self.lock_timeout), what))
            with self._lock:
                self._refresh_locked()
                self._roll_back()
                if not repair and not self.record:  # a change would write a record over the disagreement
                    require_agreement(self.folder, check_agreement(self.indexes, has_record=False))
            try:
                yield
            except BaseException:
                with self._lock:  # a change that failed half-way (disk full, ^C) leaves the record's state
                    self._roll_back()
                raise
            self._commit()

    def _roll_back(self) -> None:
        """Undo a sub-index commit that the record does not name (a writer died between sub-index and record)."""
        for m in self.parts:
            index = self.indexes[m]
            if isinstance(index, ItemIndex) and m in self.record:
                index.roll_back_to(self.record[m])

    def _commit(self) -> None:
        """Write the commit record naming every local sub-index's committed state (the archive's commit point)."""
        local = {m: ix.manifest for m, ix in self.indexes.items() if isinstance(ix, ItemIndex)}
        if not local or all(self.record.get(m) == state for m, state in local.items()):
            return  # nothing changed (e.g. an add of ids already present): readers have nothing to reload
        record = {"generation": int(self.record.get("generation", 0)) + 1, **local}
        atomic_write_json(self.folder / RECORD_NAME, record)
        self.record = record

    def close(self) -> None:
        for batcher in getattr(self, "_batchers", {}).values():
            batcher.close()
        self._batchers = {}
        pool = getattr(self, "_image_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
            self._image_pool = None
        for index in self.indexes.values():
            index.close()
        self.indexes = {}

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------- properties
    @property
    def bits(self) -> int:
        return int(self.manifest["bits"])

    @property
    def image_root(self) -> Path | None:
        root = self.manifest.get("image_root")
        return Path(root) if root else None

    def __len__(self) -> int:
        return len(self.indexes["texts"])

    @property
    def method(self) -> HashMethod:
        """The run's fitted method (torch for the MCMFH family), loaded on first use."""
        with self._method_lock:
            if self._method is None:
                self._method = load_run(self.folder / "run")[0]
            return self._method

    @property
    def encoder(self) -> Encoder:
        """The run's encoder, loaded on first use and checked to be the version the model was trained on."""
        if self._encoder is None:
            from mcmfh.encoders import get_encoder

            encoder = get_encoder(self.manifest["encoder"])
            if encoder.version != self.manifest["encoder_version"]:
                raise ArtefactError(
                    f"archive {self.folder}: trained on encoder {self.manifest['encoder']} version "
                    f"{self.manifest['encoder_version']}, this installation has {encoder.version}"
                )
            self._encoder = encoder
        return self._encoder

    # ---------------------------------------------------------------------------------------------- search
    @property
    def payload_codec(self) -> PayloadCodec | None:
        """The per-item payload two-stage search re-scores with (archives built with a relaxed-output model)."""
        entry = self.manifest.get("payload")
        return make_codec(entry["codec"], int(entry["dim"])) if entry else None

    def default_rerank(self) -> str:
        """``int8`` (or the archive's payload) when it has one, else ``none``: two-stage search is the default."""
        codec = self.payload_codec
        return codec.name if codec else "none"

    def search_text(self, query: str, k: int = 10, target: str = "images", rerank: str | None = None) -> list[Hit]:
        """Items nearest to a text query, by their ``target`` codes (images: cross-modal; texts: same modality).

        ``rerank``: ``none`` (Hamming order only) or the archive's payload (two-stage: candidates re-scored, hits
        carry ``score``); default: two-stage when the archive has a payload."""
        if not query.strip():
            raise MCMFHError("empty text query")
        return self._search("texts", query, k, target, rerank)

    def search_image(
        self, image: ImageInput, k: int = 10, target: str = "texts", rerank: str | None = None
    ) -> list[Hit]:
        """Items nearest to an image query (a path or a PIL image), by their ``target`` codes (see search_text)."""
        return self._search("images", image, k, target, rerank)

    @property
    def has_studies(self) -> bool:
        """Whether studies can be searched: the archive was built from features that group items into studies."""
        return bool(self.manifest.get("studies"))

    @property
    def study_rule(self) -> str | None:
        """``fused``: one code per study (the method's study head, sub-index ``studies``); ``min``: the nearest of a
        study's members' image and text codes (a method without a study head); None: no studies."""
        entry = self.manifest.get("studies")
        return str(entry["rule"]) if entry else None

    def search_studies_text(self, query: str, k: int = 10, rerank: str | None = None) -> list[StudyHit]:
        """Studies nearest to a text query (coded alone, as every query), nearest first; see ``study_rule``."""
        if not query.strip():
            raise MCMFHError("empty text query")
        return self._search_studies("texts", query, k, rerank)

    def search_studies_image(self, image: ImageInput, k: int = 10, rerank: str | None = None) -> list[StudyHit]:
        """Studies nearest to an image query (a path or a PIL image), nearest first; see ``study_rule``."""
        return self._search_studies("images", image, k, rerank)

    def _search_studies(self, modality: str, query: Any, k: int, rerank: str | None) -> list[StudyHit]:
        if not self.has_studies:
            raise MCMFHError(
                "search target 'studies': this archive has no studies (build it from features whose dataset has a "
                "study_id column, or search --target images / texts)"
            )
        if rerank not in (None, "none"):
            raise MCMFHError(f"--rerank {rerank}: studies are ranked by Hamming distance only; use --rerank none")
        if k < 1:
            raise MCMFHError(f"k must be at least 1, got {k}")
        code, _ = self._encode_query(modality, query)
        packed = pack_codes(code[None, :])
        with self._lock:
            if self.study_rule == "fused":
                found = [(h.item.item_id, h.distance) for h in self.indexes["studies"].search(packed, k)[0]]
            else:
                found = self._nearest_studies(packed, k)
            members = self.indexes["texts"].members([sid for sid, _ in found])
        return [StudyHit(sid, int(d), tuple(members.get(sid, ()))) for sid, d in found]

    def _nearest_studies(self, packed: np.ndarray, k: int) -> list[tuple[str, int]]:
        """The k studies nearest by their members' image and text codes (the no-fusion ``min`` rule), exactly:
        item hits are fetched until k studies lie strictly closer than any item not fetched yet."""
        want = max(4 * k, 32)
        while True:
            lists = [self.indexes[m].search(packed, want)[0] for m in MODALITIES]
            full = [hits[-1].distance for hits in lists if len(hits) == want]  # lists that may go on beyond
            bound = min(full, default=np.inf)
            best: dict[str, int] = {}
            for hits in lists:
                for h in hits:
                    if h.distance < bound:
                        sid = h.item.study_id or h.item.item_id
                        best[sid] = min(best.get(sid, h.distance), h.distance)
            if len(best) >= k or not full:
                return sorted(best.items(), key=lambda kv: (kv[1], kv[0]))[:k]
            want *= 4

    def _search(self, modality: str, query: Any, k: int, target: str, rerank: str | None) -> list[Hit]:
        if target == "studies":
            raise MCMFHError("search target 'studies': use search_studies_text / search_studies_image")
        mode = self._rerank_mode(rerank)
        code, relaxed = self._encode_query(modality, query)
        with self._lock:
            index = self.indexes[_target(target)]
            if mode == "none":
                return index.search(pack_codes(code[None, :]), k)[0]
            assert isinstance(index, ItemIndex) and relaxed is not None and self.payload_codec is not None
            return _two_stage(index, code, relaxed, self.payload_codec, k)

    def _rerank_mode(self, rerank: str | None) -> str:
        mode = self.default_rerank() if rerank is None else rerank
        if mode == "none":
            return mode
        codec = self.payload_codec
        if codec is None:
            raise MCMFHError(
                f"--rerank {mode}: this archive has no payload to re-score with (built by a model without relaxed "
                "outputs, on a server store, or before payloads existed); use --rerank none"
            )
        if mode != codec.name:
            raise MCMFHError(f"--rerank {mode}: this archive stores {codec.name} payloads; use {codec.name} or none")
        return mode

    def _encode_query(self, modality: str, query: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """One query's code (bits,) and relaxed output (bits,) (None without a payload), outside the index lock.

        Texts: concurrent queries share one encoder-and-hash call (mcmfh.batching). Images: the image network costs
        the same per image at any batch size, so each image is encoded on its own by one of ``image_workers``
        threads as soon as one is free (a batch would make every image wait for the slowest of its batch), and
        only the hashing, which is cheaper per row in batches, is shared. MCMFH_BATCH_QUERIES=0 encodes one query
        at a time under the lock."""
        with self._lock:
            encoder = self.encoder  # loaded once, under the lock
            if os.environ.get(BATCH_ENV, "1") == "0":
                return self._encode_batch(encoder, modality, [query])[0]
            if modality == "texts":
                batcher = self._batcher("encode-texts", partial(self._encode_batch, encoder, modality))
            else:
                batcher = self._batcher("hash-images", lambda rows: self._hash_batch(modality, np.stack(rows)))
                if self._image_pool is None:
                    workers = self.batching.image_workers or os.cpu_count() or 1
                    self._image_pool = ThreadPoolExecutor(workers, thread_name_prefix="encode-image")
                pool = self._image_pool
        if modality == "texts":
            return batcher.submit(query)
        embedding = pool.submit(encoder.encode_images, [query], 1).result()
        return batcher.submit(embedding[0])

    def _batcher(self, name: str, fn: Any) -> MicroBatcher[Any]:
        """The micro-batcher called ``name``, started on first use. Under ``self._lock``."""
        if name not in self._batchers:
            self._batchers[name] = MicroBatcher(fn, self.batching, name=name)
        return self._batchers[name]

    def _encode_batch(self, encoder: Encoder, modality: str, queries: list[Any]) -> list[tuple[Any, Any]]:
        emb = encoder.encode_texts(queries) if modality == "texts" else encoder.encode_images(queries, batch_size=1)
        return self._hash_batch(modality, emb)

    def _hash_batch(self, modality: str, emb: np.ndarray) -> list[tuple[Any, Any]]:
        codes, relaxed = self._hash_queries(modality, emb)
        return [(codes[i], None if relaxed is None else relaxed[i]) for i in range(len(emb))]

    def _hash_queries(self, modality: str, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Query codes (and relaxed outputs with a payload): the numpy copy of the model, with torch for the rows
        it marks unsafe (a sign or expert choice within float32 rounding), so codes are always torch's."""
        with_relaxed = self.payload_codec is not None
        if self.query_hasher is None or len(emb) > NUMPY_QUERY_ROWS:
            return _hash(self.method, modality, emb, relaxed=with_relaxed)
        out, safe = self.query_hasher.relaxed(emb, modality)
        if not safe.all():
            rows = np.flatnonzero(~safe)
            fn = self.method.relaxed_images if modality == "images" else self.method.relaxed_texts
            out[rows] = fn(emb[rows])
        return out > 0, (out if with_relaxed else None)

    def get(self, item_id: str) -> Item | None:
        with self._lock:
            keys = self.indexes["texts"].keys_of([item_id])
            return self.indexes["texts"].get([keys[item_id]])[0] if keys else None

    # ---------------------------------------------------------------------------------------------- add / remove
    def add_records(self, records: Sequence[Record], source: str, batch_size: int = 32) -> dict[str, int]:
        """Encode new items with the run's encoder and add them; ids already present are skipped."""
        # Encoding runs before the writer lock on purpose (docs/index.md, "Validate, encode, then lock"): the lock is
        # held only to commit, and the ids are checked again under it.
        present = self.indexes["texts"].keys_of([r.id for r in records])
        todo = [r for r in records if r.id not in present]
        with_image = [r for r in todo if r.image is not None]
        image = self.encoder.encode_images([r.image for r in with_image], batch_size=batch_size)
        batch = Batch(
            records=todo,
            image=_scatter(image, [r.image is not None for r in todo], self.encoder.image_dim),
            text=self.encoder.encode_texts([r.text for r in todo], batch_size=batch_size),
            has_image=np.array([r.image is not None for r in todo], dtype=bool),
            source=source,
        )
        return self._add_batch(batch, self.method)

    def remove(self, item_ids: Sequence[str]) -> int:
        with self._writing(), self._lock:
            return self._remove_locked(item_ids)

    def repair(self) -> list[str]:
        """Without a commit record: remove the items that only some sub-indexes hold (a change cut off half-way,
        see ``mcmfh.archive_agreement``) from all of them, under the writer lock, and write a record. Returns their
        ids; with a record, there is nothing to do."""
        with self._writing(repair=True), self._lock:
            partial = check_agreement(self.indexes, has_record=bool(self.record)).ids()
            if partial:
                self._remove_locked(partial)
            return partial

    def _remove_locked(self, item_ids: Sequence[str]) -> int:
        removed = max(self.indexes[m].remove(list(item_ids)) for m in MODALITIES)
        if "study_members" in self.indexes:
            members = self.indexes["study_members"]
            gone = members.get(list(members.keys_of(list(item_ids)).values()))
            if gone:
                members.remove([it.item_id for it in gone])
                self._recode_studies([it.study_id or it.item_id for it in gone], self.method)
        return removed

    def compact(self) -> dict[str, bool]:
        """Fold each local sub-index's segments into one (see ``ItemIndex.compact``); server stores need none."""
        with self._writing(), self._lock:
            return {m: bool(getattr(ix, "compact", lambda: False)()) for m, ix in self.indexes.items()}

    def _add_batch(self, batch: Batch, method: HashMethod, task: Task | None = None) -> dict[str, int]:
        with self._writing():
            return self._add_locked(batch, method, task)

    def _add_locked(self, batch: Batch, method: HashMethod, task: Task | None = None) -> dict[str, int]:
        added = {}
        for m in MODALITIES:  # each sub-index skips what it holds, so a rerun completes a half-done add
            index = self.indexes[m]
            rows = np.flatnonzero(batch.has_image) if m == "images" else np.arange(len(batch.records))
            present = index.keys_of([batch.records[i].id for i in rows])
            rows = np.array([i for i in rows if batch.records[i].id not in present], dtype=np.int64)
            if not len(rows):
                added[m] = 0
                continue
            x = batch.image[rows] if m == "images" else batch.text[rows]
            codec = self.payload_codec
            codes, relaxed = _hash(method, m, x, relaxed=codec is not None)
            items = [record_item(batch.records[i], batch.source) for i in rows]
            with self._lock:
                if codec is None or relaxed is None:
                    index.add(pack_codes(codes), items)
                else:
                    assert isinstance(index, ItemIndex)
                    index.add(pack_codes(codes), items, payload=codec.encode(relaxed))
            added[m] = len(rows)
            if task is not None:
                task.update(1, items=f"{m} {len(rows)}")
        if "study_members" in self.indexes:
            added["studies"] = self._add_members(batch, method)
            if task is not None:
                task.update(len(STUDY_PARTS), items=f"studies {added['studies']}")
        return added

    def _add_members(self, batch: Batch, method: HashMethod) -> int:
        """Store the batch's new items' study inputs and re-code the studies they join; returns how many studies
        were (re-)coded. Like the item sub-indexes, it skips ids it holds, so a rerun completes a half-done add."""
        members = self.indexes["study_members"]
        present = members.keys_of([r.id for r in batch.records])
        rows = np.array([i for i, r in enumerate(batch.records) if r.id not in present], dtype=np.int64)
        if not len(rows):
            return 0
        inputs = method.study_inputs(batch.image[rows], batch.text[rows])
        items = [record_item(batch.records[i], batch.source) for i in rows]
        blank = np.zeros((len(rows), self.bits // 8), np.uint8)  # never searched: the members index holds inputs
        with self._lock:
            members.add(blank, items, payload=_member_payload(inputs, batch.has_image[rows]))
            return self._recode_studies([batch.records[i].study or batch.records[i].id for i in rows], method)

    def _recode_studies(self, study_ids: Sequence[str], method: HashMethod) -> int:
        """Code ``study_ids`` again from all of their members' stored inputs; in one generation of ``studies/``, the
        new codes replace the old ones and a study left without members is dropped. Under ``self._lock``."""
        wanted = list(dict.fromkeys(study_ids))
        members_ix, studies_ix = self.indexes["study_members"], self.indexes["studies"]
        assert isinstance(members_ix, ItemIndex) and isinstance(studies_ix, ItemIndex)
        groups = members_ix.members(wanted)
        live = [sid for sid in wanted if sid in groups]
        shape = self.manifest["studies"]["inputs"]
        width = 1 + 2 * int(np.prod(shape))  # has-image byte + float16 values
        parts = [np.zeros((0, self.bits), bool)]
        for start in range(0, len(live), RECODE_STUDIES):  # a build codes every study: bounded memory
            chunk = live[start : start + RECODE_STUDIES]
            raw = members_ix.payloads([it.key for sid in chunk for it in groups[sid]], width)
            inputs, has_image = _member_inputs(raw, shape)
            coded, codes = method.encode_study_inputs(inputs, has_image, [sid for sid in chunk for _ in groups[sid]])
            assert coded.ids == chunk
            parts.append(np.asarray(codes, bool))
        rows = [_study_item(sid, groups[sid]) for sid in live]
        studies_ix.add(pack_codes(np.concatenate(parts)), rows, replace=wanted)
        return len(live)


def read_record(folder: Path) -> dict[str, Any]:
    """The archive's commit record; empty for an archive made before records existed (its sub-indexes' newest
    states count as committed until its first change writes one)."""
    path = Path(folder) / RECORD_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{path}: unreadable commit record ({e})") from e
    if not isinstance(record, dict) or not isinstance(record.get("generation"), int):
        raise ArtefactError(f"{path}: not an archive commit record (expected a 'generation' and sub-index states)")
    return record


def drop_server_stores(folder: Path) -> None:
    """Before an overwrite: delete the collections/schemas the archive at ``folder`` keeps on servers."""
    try:
        old = read_manifest(folder, KIND)
    except ArtefactError:
        return  # not a finished archive: nothing recorded to drop
    store = old.get("store", {})
    if store.get("backend", "local") == "local":
        return
    for m in MODALITIES:
        drop_store(open_store(folder / m, m, int(old["bits"]), store, {}, writable=True))


def _payload_entry(method: HashMethod, store: dict[str, Any], probe: np.ndarray) -> dict[str, Any] | None:
    """The manifest's ``payload`` entry: int8 relaxed outputs (one byte per output, i.e. bits bytes for most
    methods) for two-stage search, where the model has relaxed outputs and the store is local (server stores keep
    codes only). ``probe``: one text embedding, to read the width of the relaxed output."""
    if store.get("backend", "local") != "local" or not method.has_relaxed:
        return None
    return {"codec": PAYLOAD_CODEC, "dim": int(method.relaxed_texts(probe).shape[1])}


def _studies_entry(method: HashMethod, store: dict[str, Any], part: FeatureSet) -> dict[str, Any] | None:
    """The manifest's ``studies`` entry: None without studies; rule ``fused`` (with the study inputs' shape) for a
    method with a study head on a local store, else ``min`` (members' own codes, nothing more to keep)."""
    if not part.has_studies:
        return None
    if store.get("backend", "local") != "local" or not method.has_study_codes:
        return {"rule": "min"}
    shape = method.study_inputs(part.image[:1], part.text[:1]).shape[1:]
    return {"rule": "fused", "inputs": [int(x) for x in shape], "dtype": "float16"}


def _member_payload(inputs: np.ndarray, has_image: np.ndarray) -> np.ndarray:
    """(n, 1 + 2 * size) uint8 per member: a has-image byte, then its study inputs as little-endian float16."""
    flat = np.ascontiguousarray(np.asarray(inputs, np.float32).reshape(len(inputs), -1).astype(STUDY_INPUT_DTYPE))
    return np.concatenate([np.asarray(has_image, np.uint8)[:, None], flat.view(np.uint8)], axis=1)


def _member_inputs(raw: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``_member_payload``: (n, *shape) float32 inputs and (n,) has-image."""
    raw = np.ascontiguousarray(raw)
    inputs = raw[:, 1:].copy().view(STUDY_INPUT_DTYPE).astype(np.float32)
    return inputs.reshape(len(raw), *shape), raw[:, 0].astype(bool)


def _study_item(study_id: str, members: Sequence[Item]) -> dict[str, Any]:
    """The row of a study in ``studies/``: its id, and the union of its members' labels (first seen first)."""
    labels = list(dict.fromkeys(label for it in members for label in it.labels))
    return {"id": study_id, "caption": "", "labels": labels, "source": members[0].source, "study_id": study_id}


def _hash(method: HashMethod, modality: str, x: np.ndarray, relaxed: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes of ``modality`` rows, and their relaxed outputs when asked: one pass of the model, the codes being the
    signs of the relaxed outputs (``HashMethod``'s contract, tested per method)."""
    if not relaxed:
        return (method.encode_images(x) if modality == "images" else method.encode_texts(x)), None
    out = method.relaxed_images(x) if modality == "images" else method.relaxed_texts(x)
    return out > 0, out


def _two_stage(index: ItemIndex, code: np.ndarray, relaxed: np.ndarray, codec: PayloadCodec, k: int) -> list[Hit]:
    """Stage 1 from the Hamming index (whole tie groups, mcmfh.index.rerank), stage 2 from the stored payloads."""
    cands = candidates(index.index, pack_codes(code[None, :]), k)
    ids = cands.ids[0, : int(cands.count[0])]
    if not len(ids):
        return []
    rows = index.payloads(ids, codec.bytes_per_item)
    position = {int(key): i for i, key in enumerate(ids)}
    rows_of = np.vectorize(lambda key: position.get(int(key), 0))  # padding slots (-1 -> 0) are masked by rescore
    result = rescore(cands, rows, relaxed[None, :], codec, k, rows_of=rows_of)
    keep = result.ids[0] >= 0
    keys, dist, sims = result.ids[0][keep], result.distances[0][keep], result.similarities[0][keep]
    items = {it.key: it for it in index.get(np.unique(keys))}
    return [Hit(items[int(c)], int(d), float(s)) for c, d, s in zip(keys, dist, sims, strict=True)]


def _quietly(fn: Any, *args: Any) -> None:
    with contextlib.suppress(Exception):  # cleanup after a failure must not hide that failure
        fn(*args)


def _target(name: str) -> str:
    aliases = {"image": "images", "images": "images", "text": "texts", "texts": "texts"}
    if name not in aliases:
        raise MCMFHError(f"search target {name!r}: expected one of {list(TARGETS)}")
    return aliases[name]


def _scatter(rows: np.ndarray, mask: Sequence[bool], dim: int) -> np.ndarray:
    out = np.zeros((len(mask), dim), dtype=np.float32)
    out[np.asarray(mask, dtype=bool)] = rows
    return out


def _batch_from_features(features: FeatureSet, dataset: Dataset) -> Batch:
    by_id = {r.id: r for r in dataset.records}
    missing = [i for i in features.ids if i not in by_id]
    if missing:
        raise ArtefactError(
            f"{len(missing)} feature id(s) are not in dataset {dataset.name} (first: {missing[:3]}); "
            "were the features encoded from other data?"
        )
    return Batch(
        records=[by_id[i] for i in features.ids],
        image=features.image,
        text=features.text,
        has_image=features.has_image,
        source=dataset.name,
    )
