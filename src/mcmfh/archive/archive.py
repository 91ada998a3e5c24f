"""An archive: a trained run plus exact Hamming indexes of its items' image codes and text codes.

``Archive`` coordinates; each idea has its module in this package: the folder and how it is made (``build``), the
commit protocol (``commit``), query coding (``query``), search strategies (``search``, ``hybrid``), writes and study
re-coding (``writes``, with the members' payload format in ``members``). A sub-index is an ``ItemStore``
(``mcmfh.index.store``), local or on servers as the manifest's ``store`` entry says; the archive never asks which:
stores declare their ``capabilities``. ``build`` writes the whole folder atomically; ``add_records``, ``remove``,
``repair`` and ``compact`` are changes (locked, committed all or nothing); searches never lock the folder.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcmfh.archive.agreement import check_agreement
from mcmfh.archive.build import IDENTITY_KEYS, KIND, STUDY_PARTS, build_folder, run_identity
from mcmfh.archive.commit import CommittedIndexes
from mcmfh.archive.hybrid import channel_depth, hybrid_items, hybrid_studies, use_hybrid
from mcmfh.archive.query import QueryCoder
from mcmfh.archive.search import MODALITIES, item_target, rerank_mode, search_diversified, search_studies
from mcmfh.archive.writes import ArchiveWriter, Batch, batch_from_records
from mcmfh.data.records import Dataset
from mcmfh.diversify import DEFAULT_PER_STUDY, diversify
from mcmfh.encoders.base import Encoder, ImageInput
from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.index.backends import StoreConfig, open_store
from mcmfh.index.payload import PayloadCodec, make_codec
from mcmfh.index.store import ItemStore
from mcmfh.items import Hit, Item, StudyHit
from mcmfh.manifest import read_manifest, require_match
from mcmfh.method import HashMethod
from mcmfh.numpy_hash import NumpyHasher
from mcmfh.progress import SILENT, Progress, Task
from mcmfh.training.runs import load_run


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

        def fill(folder: Path, manifest: dict[str, Any], batch: Batch) -> None:
            with cls(folder, manifest, writable=True) as archive:
                with progress.task("index build", total=len(archive.indexes), unit="sub-index") as task:
                    archive._add(batch, task)
                for index in archive.indexes.values():
                    index.flush()  # a bulk load on a server: searches then run on sealed, indexed segments

        build_folder(Path(run_dir), features, Path(out), splits, dataset, overwrite, store, fill)
        return cls.open(out)

    @classmethod
    def open(cls, folder: str | Path, writable: bool = False, lock_timeout: float | None = None,
             check_parts: bool = True) -> Archive:  # fmt: skip
        """Open an archive; ``writable`` allows changes, each taken under the writer lock (waiting up to
        ``lock_timeout`` seconds, default $MCMFH_LOCK_TIMEOUT or 30). Without a commit record, sub-indexes that
        disagree are refused (``mcmfh.archive.agreement``) unless ``check_parts`` is False (``index info``)."""
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
        """The archive's payload codec (``int8`` by default) when it has one, else ``none``: two-stage search is
        the default."""
        return self.payload_codec.name if self.payload_codec else "none"

    # ---------------------------------------------------------------------------------------------- search
    def search_text(self, query: str, k: int = 10, target: str = "images", rerank: str | None = None,
                    per_study: int = DEFAULT_PER_STUDY, hybrid: bool | None = None) -> list[Hit]:  # fmt: skip
        """Items nearest to a text query, by their ``target`` codes (images: cross-modal; texts: same modality).

        ``rerank``: ``none`` (Hamming order only) or the archive's payload (two-stage: candidates re-scored, hits
        carry ``score``); default: two-stage when the archive has a payload. ``per_study``: hits shown per study,
        duplicate texts folded (``mcmfh.diversify``; 0: the raw item ranking). ``hybrid``: fuse with the lexical
        channel over the stored texts (``mcmfh.archive.hybrid``; hits then carry the fused score; the fused list
        is grouped as the plain one); default ``hybrid.HYBRID_DEFAULT``."""
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
        codec = self.study_codec if self.study_rule == "fused" else self.payload_codec
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
        see ``mcmfh.archive.agreement``) from all of them, under the writer lock, and write a record. Returns their
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
