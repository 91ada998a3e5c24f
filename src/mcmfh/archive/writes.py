"""An archive's writes: items hashed into its sub-indexes, and studies coded again from their members.

Every write runs inside one change of the commit protocol (``mcmfh.archive.commit``); each sub-index skips the ids
it already holds, so rerunning an add that was cut off completes it. An archive built from features with studies by
a method with a study head (``HashMethod.has_study_codes``) on a local store keeps two study sub-indexes:
``study_members`` (one row per item, its study inputs as payload: ``mcmfh.archive.members``) and ``studies`` (one
fused code per study, and, for a method with relaxed outputs, the study head's relaxed output as its payload:
two-stage study search re-scores with it). An add re-codes exactly the studies it touched from their members' stored
inputs and a remove re-codes or drops them; the re-coded rows replace the old ones in one generation of ``studies/``
(``add(replace=...)``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mcmfh.archive.members import member_inputs, member_payload, member_width, study_item
from mcmfh.archive.query import hash_rows
from mcmfh.data.records import Dataset
from mcmfh.encoders.base import Encoder
from mcmfh.errors import ArtefactError
from mcmfh.features import FeatureSet
from mcmfh.index.codes import pack_codes
from mcmfh.index.payload import DEFAULT_PAYLOAD, PayloadCodec
from mcmfh.index.store import ItemStore
from mcmfh.items import Item
from mcmfh.method import HashMethod
from mcmfh.progress import Task

MODALITIES = ("images", "texts")
RECODE_STUDIES = 4096  # studies coded per pass when many change at once (a build): bounds the inputs held


@dataclass(frozen=True)
class Batch:
    """Items to index with their frozen embeddings (image rows only where ``has_image``)."""

    records: list[Item]
    image: np.ndarray
    text: np.ndarray
    has_image: np.ndarray
    source: str


def batch_from_features(features: FeatureSet, dataset: Dataset) -> Batch:
    """The items of ``features`` (their dataset's records) with their cached embeddings."""
    by_id = {r.id: r for r in dataset.records}
    missing = [i for i in features.ids if i not in by_id]
    if missing:
        raise ArtefactError(
            f"{len(missing)} feature id(s) are not in dataset {dataset.name} (first: {missing[:3]}); "
            "were the features encoded from other data?"
        )
    return Batch(records=[by_id[i] for i in features.ids], image=features.image, text=features.text,
                 has_image=features.has_image, source=dataset.name)  # fmt: skip


def batch_from_records(records: Sequence[Item], encoder: Encoder, source: str, batch_size: int) -> Batch:
    """``records`` encoded with ``encoder`` (image rows zero where an item has no image)."""
    has_image = np.array([r.image is not None for r in records], dtype=bool)
    image = np.zeros((len(records), encoder.image_dim), dtype=np.float32)
    image[has_image] = encoder.encode_images([r.image for r in records if r.image is not None], batch_size=batch_size)
    text = encoder.encode_texts([r.text for r in records], batch_size=batch_size)
    return Batch(records=list(records), image=image, text=text, has_image=has_image, source=source)


def payload_entry(method: HashMethod, store: dict[str, Any], probe: np.ndarray) -> dict[str, Any] | None:
    """The manifest's ``payload`` entry: relaxed outputs at ``DEFAULT_PAYLOAD`` (int8: one byte per output, i.e.
    bits bytes for most methods) for two-stage search, where the model has relaxed outputs and the store is
    local (server stores keep codes only). ``probe``: one text embedding, to read the width of the relaxed output."""
    if store.get("backend", "local") != "local" or not method.has_relaxed:
        return None
    return {"codec": DEFAULT_PAYLOAD, "dim": int(method.relaxed_texts(probe).shape[1])}


def studies_entry(method: HashMethod, store: dict[str, Any], part: FeatureSet) -> dict[str, Any] | None:
    """The manifest's ``studies`` entry: None without studies; rule ``fused`` (with the study inputs' shape, and the
    studies' payload for two-stage search where the method has relaxed outputs) for a method with a study head on a
    local store, else ``min`` (members' own codes, nothing more to keep)."""
    if not part.has_studies:
        return None
    if store.get("backend", "local") != "local" or not method.has_study_codes:
        return {"rule": "min"}
    inputs = method.study_inputs(part.image[:1], part.text[:1])
    entry: dict[str, Any] = {"rule": "fused", "inputs": [int(x) for x in inputs.shape[1:]], "dtype": "float16"}
    if method.has_relaxed:
        _, relaxed = method.relaxed_study_inputs(inputs, part.has_image[:1], ["probe"])
        entry["payload"] = {"codec": DEFAULT_PAYLOAD, "dim": int(relaxed.shape[1])}
    return entry


class ArchiveWriter:
    """Writes to an archive's ``indexes`` with its ``method`` and payload ``codec``; ``study_shape``: the study
    inputs' shape when the archive keeps fused studies, ``study_codec`` their payload's (None: no study payload).
    ``lock`` guards the stores' handles."""

    def __init__(self, indexes: Mapping[str, ItemStore], method: HashMethod, codec: PayloadCodec | None, bits: int,
                 study_shape: Sequence[int] | None, lock: threading.Lock,
                 study_codec: PayloadCodec | None = None) -> None:  # fmt: skip
        self.indexes, self.method, self.codec, self.bits = indexes, method, codec, bits
        self.study_shape, self.lock, self.study_codec = study_shape, lock, study_codec

    def add(self, batch: Batch, task: Task | None = None) -> dict[str, int]:
        """Hash and add the batch's items each sub-index lacks; returns how many each added (and studies coded);
        ``task`` counts the sub-indexes written."""
        added = {}
        for m in MODALITIES:
            index = self.indexes[m]
            rows = np.flatnonzero(batch.has_image) if m == "images" else np.arange(len(batch.records))
            present = index.keys_of([batch.records[i].id for i in rows])
            rows = np.array([i for i in rows if batch.records[i].id not in present], dtype=np.int64)
            if not len(rows):
                added[m] = 0
                if task is not None:
                    task.update(1, items=f"{m} 0")
                continue
            x = batch.image[rows] if m == "images" else batch.text[rows]
            codes, relaxed = hash_rows(self.method, m, x, relaxed=self.codec is not None)
            items = [replace(batch.records[i], source=batch.source) for i in rows]
            payload = None if self.codec is None or relaxed is None else self.codec.encode(relaxed)
            with self.lock:
                index.add(pack_codes(codes), items, payload=payload)
            added[m] = len(rows)
            if task is not None:
                task.update(1, items=f"{m} {len(rows)}")
        if self.study_shape is not None:
            added["studies"] = self._add_members(batch)
            if task is not None:
                task.update(len(self.indexes) - len(MODALITIES), items=f"studies {added['studies']}")
        return added

    def _add_members(self, batch: Batch) -> int:
        """Store the batch's new items' study inputs and re-code the studies they join; returns how many studies
        were (re-)coded."""
        members = self.indexes["study_members"]
        present = members.keys_of([r.id for r in batch.records])
        rows = np.array([i for i, r in enumerate(batch.records) if r.id not in present], dtype=np.int64)
        if not len(rows):
            return 0
        inputs = self.method.study_inputs(batch.image[rows], batch.text[rows])
        items = [replace(batch.records[i], source=batch.source) for i in rows]
        blank = np.zeros((len(rows), self.bits // 8), np.uint8)  # never searched: the members index holds inputs
        with self.lock:
            members.add(blank, items, payload=member_payload(inputs, batch.has_image[rows]))
            return self.recode_studies([batch.records[i].study_id or batch.records[i].id for i in rows])

    def remove(self, item_ids: Sequence[str]) -> int:
        """Remove items from every sub-index and re-code (or drop) their studies. Under ``lock``."""
        removed = max(self.indexes[m].remove(list(item_ids)) for m in MODALITIES)
        if self.study_shape is not None:
            members = self.indexes["study_members"]
            gone = members.get(list(members.keys_of(list(item_ids)).values()))
            if gone:
                members.remove([it.id for it in gone])
                self.recode_studies([it.study_id or it.id for it in gone])
        return removed

    def recode_studies(self, study_ids: Sequence[str]) -> int:
        """Code ``study_ids`` again from all of their members' stored inputs; in one generation of ``studies/``, the
        new codes replace the old ones and a study left without members is dropped. Under ``lock``."""
        assert self.study_shape is not None
        wanted = list(dict.fromkeys(study_ids))
        members_ix, studies_ix = self.indexes["study_members"], self.indexes["studies"]
        groups = members_ix.members(wanted)
        live = [sid for sid in wanted if sid in groups]
        width = member_width(self.study_shape)
        parts = [np.zeros((0, self.bits), bool)]
        payloads = [] if self.study_codec is None else [np.zeros((0, self.study_codec.bytes_per_item), np.uint8)]
        for start in range(0, len(live), RECODE_STUDIES):  # a build codes every study: bounded memory
            chunk = live[start : start + RECODE_STUDIES]
            raw = members_ix.payloads([it.key for sid in chunk for it in groups[sid]], width)
            inputs, has_image = member_inputs(raw, self.study_shape)
            owners = [sid for sid in chunk for _ in groups[sid]]
            coded, codes = self.method.encode_study_inputs(inputs, has_image, owners)
            assert coded.ids == chunk
            parts.append(np.asarray(codes, bool))
            if self.study_codec is not None:
                payloads.append(self.study_codec.encode(self.method.relaxed_study_inputs(inputs, has_image, owners)[1]))
        rows = [study_item(sid, groups[sid]) for sid in live]
        payload = np.concatenate(payloads) if payloads else None
        studies_ix.add(pack_codes(np.concatenate(parts)), rows, payload=payload, replace=wanted)
        return len(live)
