"""An archive: a trained run plus exact Hamming indexes of its items' image codes and text codes.

Folder layout::

    manifest.json   kind "archive": the run's identity (method, bits, encoder, weights hash), image root, store
    run/            a copy of the run folder, so the archive is self-contained and cannot drift from its model
    images/         sub-index of image codes (items that have an image)
    texts/          sub-index of text codes (every item)
    studies/        (fused studies) one code per study: item id = study id, labels = the union
    study_members/  (fused studies) one row per item: its study and, as payload, its study inputs
    commit.json     the commit record: the sub-index states readers see

``Archive`` coordinates; each idea has its module: the commit protocol (``mcmfh.archive_commit``), query coding
(``mcmfh.archive_query``), search strategies (``mcmfh.archive_search``), writes and study re-coding
(``mcmfh.archive_writes``, with the members' payload format in ``mcmfh.archive_members``). A sub-index is an
``ItemStore`` (``mcmfh.index.store``): local (``--backend local``, the default) or codes in Milvus with metadata in
SQLite or PostgreSQL; the manifest's ``store`` entry says which (without secrets), so ``Archive.open`` reconnects.
The archive never asks which it holds: stores declare their ``capabilities``.

``build`` writes the whole folder atomically; ``add_records``, ``remove``, ``repair`` and ``compact`` are changes
(locked, committed all or nothing); searches never lock the folder.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcmfh.archive_agreement import check_agreement
from mcmfh.archive_commit import CommittedIndexes
from mcmfh.archive_hybrid import channel_depth, hybrid_items, hybrid_studies, use_hybrid
from mcmfh.archive_query import QueryCoder
from mcmfh.archive_search import MODALITIES, item_target, rerank_mode, search_diversified, search_studies
from mcmfh.archive_writes import (
    ArchiveWriter,
    Batch,
    batch_from_features,
    batch_from_records,
    payload_entry,
    studies_entry,
)
from mcmfh.data.records import Dataset
from mcmfh.diversify import DEFAULT_PER_STUDY, diversify
from mcmfh.encoders.base import Encoder, ImageInput
from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.index.payload import PayloadCodec, make_codec
from mcmfh.index.store import ItemStore
from mcmfh.index.stores import StoreConfig, create_store, drop_store, open_store, store_manifest
from mcmfh.io import atomic_dir, atomic_write_json
from mcmfh.items import Hit, Item, StudyHit
from mcmfh.manifest import new_manifest, read_manifest, require_match
from mcmfh.method import HashMethod, weights_sha256
from mcmfh.numpy_hash import NumpyHasher
from mcmfh.progress import SILENT, Progress, Task
from mcmfh.training.runs import check_features, load_run

KIND = "archive"
# Manifest fields every sub-index must share with the archive: an index made by another model is refused.
IDENTITY_KEYS = ("run_id", "method", "bits", "encoder", "encoder_version")
STUDY_PARTS = ("studies", "study_members")  # the fused-study sub-indexes (local only; see mcmfh.archive_writes)


def run_identity(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """What identifies a trained model: its weights' hash plus the encoder it reads."""
    return {"run_id": weights_sha256(run_dir)[:16], "method": manifest["method"], "bits": int(manifest["bits"]),
            "encoder": manifest.get("encoder"), "encoder_version": manifest.get("encoder_version")}  # fmt: skip


class Archive:
    """Open with ``Archive.open(folder)``; make with ``Archive.build(run_dir, features, out)``."""

    def __init__(
        self, folder: Path, manifest: dict[str, Any], writable: bool, lock_timeout: float | None = None,
        check_parts: bool = True,
    ) -> None:  # fmt: skip
        self.folder, self.manifest, self.writable = folder, manifest, writable
        expect = {k: manifest[k] for k in IDENTITY_KEYS}
        store, bits = manifest.get("store", {"backend": "local"}), int(manifest["bits"])

        def open_part(m: str, at: dict[str, Any] | None) -> ItemStore:
            where = store if m in MODALITIES else {"backend": "local"}
            return open_store(folder / m, m, bits, where, expect, writable, lock_timeout, at=at)

        # Every sub-index, in commit order: the study ones last (they are made from the items).
        parts = MODALITIES + (STUDY_PARTS if self.study_rule == "fused" else ())
        self.committed = CommittedIndexes(folder, parts, open_part, writable, lock_timeout, check_parts)
        try:
            self.run_manifest = read_manifest(folder / "run", kind="run")
            require_match(manifest, run_identity(folder / "run", self.run_manifest), IDENTITY_KEYS,
                          f"archive {folder}")  # fmt: skip
            # The torch model is loaded on first use (adds, studies, queries numpy cannot code exactly): a query is
            # coded by the numpy copy of the model where there is one, so a CLI search never imports torch.
            hasher = NumpyHasher.load(folder / "run", self.run_manifest.get("weights_sha256"))
        except BaseException:
            self.committed.close()
            raise
        self._method: HashMethod | None = None
        self._method_lock = threading.Lock()
        entry = manifest.get("payload")
        self.payload_codec: PayloadCodec | None = make_codec(entry["codec"], int(entry["dim"])) if entry else None
        study_entry = (manifest.get("studies") or {}).get("payload")  # archives built before it: one-stage studies
        self.study_codec: PayloadCodec | None = (
            make_codec(study_entry["codec"], int(study_entry["dim"])) if study_entry else None
        )
        self.coder = QueryCoder(lambda: self.method, manifest["encoder"], manifest["encoder_version"],
                                self.payload_codec, f"archive {folder}", hasher=hasher)  # fmt: skip

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
        if dataset is None:
            from mcmfh.data import dataset_from_source  # the loaders, only where an archive is built

            dataset = dataset_from_source(features.manifest.get("source", {}))
        batch = batch_from_features(part, dataset)
        identity = run_identity(run_dir, run_manifest)
        config = store or StoreConfig()
        where = store_manifest(config, identity["run_id"])
        studies = studies_entry(method, where, part)
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
                payload = payload_entry(method, where, part.text[:1])
                manifest = new_manifest(KIND, **identity, dataset=features.manifest.get("dataset"),
                                        label_set=features.manifest.get("label_set"), splits=list(splits),
                                        image_root=(dataset.source or {}).get("root"), store=where, payload=payload,
                                        studies=studies)  # fmt: skip
                atomic_write_json(tmp / "manifest.json", manifest)
                archive = cls(tmp, manifest, writable=True)
                try:
                    with progress.task("index build", total=len(archive.indexes), unit="sub-index") as task:
                        archive._add(batch, task)
                    for index in archive.indexes.values():
                        index.flush()  # a bulk load on a server: searches then run on sealed, indexed segments
                finally:
                    archive.close()
            except BaseException:
                for s in made:  # a half-built archive leaves nothing on the servers
                    with contextlib.suppress(Exception):  # cleanup after a failure must not hide that failure
                        drop_store(s)
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
        return self.committed.state_token()

    def refresh(self) -> bool:
        """Catch up with changes other processes committed; returns whether anything changed."""
        return self.committed.refresh()

    def close(self) -> None:
        self.coder.close()
        self.committed.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------- properties
    @property
    def indexes(self) -> dict[str, ItemStore]:
        """The sub-indexes by name (empty once closed)."""
        return self.committed.indexes

    @property
    def record(self) -> dict[str, Any]:
        """The commit record the sub-indexes are held at (empty for an archive made before records)."""
        return self.committed.record

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
        return self.coder.encoder

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

    def default_rerank(self) -> str:
        """``int8`` (or the archive's payload) when it has one, else ``none``: two-stage search is the default."""
        return self.payload_codec.name if self.payload_codec else "none"

    # ---------------------------------------------------------------------------------------------- search
    def search_text(self, query: str, k: int = 10, target: str = "images", rerank: str | None = None,
                    per_study: int = DEFAULT_PER_STUDY, hybrid: bool | None = None) -> list[Hit]:  # fmt: skip
        """Items nearest to a text query, by their ``target`` codes (images: cross-modal; texts: same modality).

        ``rerank``: ``none`` (Hamming order only) or the archive's payload (two-stage: candidates re-scored, hits
        carry ``score``); default: two-stage when the archive has a payload. ``per_study``: hits shown per study,
        duplicate texts folded (``mcmfh.diversify``; 0: the raw item ranking). ``hybrid``: fuse with the lexical
        channel over the stored texts (``mcmfh.archive_hybrid``; hits then carry the fused score; the fused list
        is grouped as the plain one); default ``archive_hybrid.HYBRID_DEFAULT``."""
        if not query.strip():
            raise MCMFHError("empty text query")
        part = item_target(target)
        if not use_hybrid(self.indexes, part, hybrid):
            return self._search("texts", query, k, target, rerank, per_study)
        if per_study < 0:
            raise MCMFHError(f"per_study must be >= 0 (0: every item), got {per_study}")
        mode = rerank_mode(self.payload_codec, rerank)
        code, relaxed = self.coder.code("texts", query)
        depth = channel_depth(k) if per_study else k  # grouping folds hits: group the fused list, then cut to k
        with self.committed.lock:
            hits = hybrid_items(self.indexes[part], query, code, relaxed, self.payload_codec, mode, depth)
        return diversify(hits, per_study)[:k] if per_study else hits

    def search_image(self, image: ImageInput, k: int = 10, target: str = "texts", rerank: str | None = None,
                     per_study: int = DEFAULT_PER_STUDY) -> list[Hit]:  # fmt: skip
        """Items nearest to an image query (a path or a PIL image), by their ``target`` codes (see search_text)."""
        return self._search("images", image, k, target, rerank, per_study)

    def search_studies_text(self, query: str, k: int = 10, rerank: str | None = None,
                            hybrid: bool | None = None) -> list[StudyHit]:  # fmt: skip
        """Studies nearest to a text query (coded alone, as every query), nearest first; see ``study_rule``.
        ``rerank``: as for items; fused studies with a study payload are two-stage by default (hits carry
        ``score``). ``hybrid``: as ``search_text``, studies ranked lexically by their best-matching member."""
        if not query.strip():
            raise MCMFHError("empty text query")
        if self.study_rule is None or not use_hybrid(self.indexes, "texts", hybrid):
            return self._search_studies("texts", query, k, rerank)
        cross = self._search_studies("texts", query, channel_depth(k), rerank)
        code, _ = self.coder.code("texts", query)
        with self.committed.lock:
            return hybrid_studies(self.indexes, self.study_rule, query, code, k, cross)

    def search_studies_image(self, image: ImageInput, k: int = 10, rerank: str | None = None) -> list[StudyHit]:
        """Studies nearest to an image query (a path or a PIL image), nearest first; see ``study_rule``."""
        return self._search_studies("images", image, k, rerank)

    def _search(self, modality: str, query: Any, k: int, target: str, rerank: str | None,
                per_study: int) -> list[Hit]:  # fmt: skip
        part, mode = item_target(target), rerank_mode(self.payload_codec, rerank)
        if per_study < 0:
            raise MCMFHError(f"per_study must be >= 0 (0: every item), got {per_study}")
        code, relaxed = self.coder.code(modality, query)
        with self.committed.lock:
            return search_diversified(self.indexes[part], code, relaxed, self.payload_codec, mode, k, per_study)

    def _search_studies(self, modality: str, query: Any, k: int, rerank: str | None) -> list[StudyHit]:
        if self.study_rule is None:
            raise MCMFHError(
                "search target 'studies': this archive has no studies (build it from features whose dataset has a "
                "study_id column, or search --target images / texts)"
            )
        codec = self.study_codec if self.study_rule == "fused" else None
        mode = rerank_mode(codec, rerank, "studies")
        if k < 1:
            raise MCMFHError(f"k must be at least 1, got {k}")
        code, relaxed = self.coder.code(modality, query)
        with self.committed.lock:
            return search_studies(self.indexes, self.study_rule, code, k, relaxed, codec, mode)

    def get(self, item_id: str) -> Item | None:
        with self.committed.lock:
            keys = self.indexes["texts"].keys_of([item_id])
            return self.indexes["texts"].get([keys[item_id]])[0] if keys else None

    # ---------------------------------------------------------------------------------------------- changes
    def add_records(self, records: Sequence[Item], source: str, batch_size: int = 32) -> dict[str, int]:
        """Encode new items with the run's encoder and add them; ids already present are skipped."""
        # Encoding runs before the writer lock on purpose (docs/index.md, "Validate, encode, then lock"): the lock is
        # held only to commit, and the ids are checked again under it.
        present = self.indexes["texts"].keys_of([r.id for r in records])
        todo = [r for r in records if r.id not in present]
        return self._add(batch_from_records(todo, self.encoder, source, batch_size))

    def remove(self, item_ids: Sequence[str]) -> int:
        with self.committed.change(), self.committed.lock:
            return self._writer().remove(item_ids)

    def repair(self) -> list[str]:
        """Without a commit record: remove the items that only some sub-indexes hold (a change cut off half-way,
        see ``mcmfh.archive_agreement``) from all of them, under the writer lock, and write a record. Returns their
        ids; with a record, there is nothing to do."""
        with self.committed.change(repair=True), self.committed.lock:
            partial = check_agreement(self.indexes, has_record=bool(self.record)).ids()
            if partial:
                self._writer().remove(partial)
            for index in self.indexes.values():  # an archive made before text search gets its text index
                index.build_text_index()
            return partial

    def compact(self) -> dict[str, bool]:
        """Fold each local sub-index's segments into one (see ``ItemIndex.compact``); server stores need none."""
        with self.committed.change(), self.committed.lock:
            return {m: ix.compact() for m, ix in self.indexes.items()}

    def _add(self, batch: Batch, task: Task | None = None) -> dict[str, int]:
        with self.committed.change():
            return self._writer().add(batch, task)

    def _writer(self) -> ArchiveWriter:
        studies = self.manifest.get("studies") or {}
        shape = studies.get("inputs") if studies.get("rule") == "fused" else None
        return ArchiveWriter(self.indexes, self.method, self.payload_codec, self.bits, shape, self.committed.lock,
                             self.study_codec)  # fmt: skip


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
