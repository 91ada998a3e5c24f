"""An archive's search strategies over its stores, for one coded query.

Items: one-stage (Hamming order) or two-stage (candidates re-scored by the stored payloads), both run by the store
(``ItemStore.search``). Cross-modal by default: a text query searches image codes (the images for a clinical phrase),
an image query searches text codes (the report for an image). Studies: ``fused`` ranks the one code per study of
``studies/`` (a method's study head); ``min`` ranks studies by the nearest of their members' image and text codes
(a method without one; the no-fusion rule of ``mcmfh.evaluation.study_eval``). Either way a study hit carries its
members.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.index.codes import pack_codes
from mcmfh.index.payload import PayloadCodec
from mcmfh.index.store import ItemStore, Rescore, widen
from mcmfh.items import Hit, StudyHit

MODALITIES = ("images", "texts")
TARGETS = ("images", "texts", "studies")
_ALIASES = {"image": "images", "images": "images", "text": "texts", "texts": "texts"}
# The min rule's first request: enough item hits for k studies of a few members each, in one round most times.
STUDY_HITS_PER_STUDY = 4
STUDY_HITS_FLOOR = 32


def item_target(name: str) -> str:
    """The sub-index an item search with ``--target name`` reads."""
    if name == "studies":
        raise MCMFHError("search target 'studies': use search_studies_text / search_studies_image")
    if name not in _ALIASES:
        raise MCMFHError(f"search target {name!r}: expected one of {list(TARGETS)}")
    return _ALIASES[name]


def rerank_mode(codec: PayloadCodec | None, rerank: str | None) -> str:
    """``--rerank``: ``none`` or the archive's payload codec (default: the codec, i.e. two-stage, when there is one)."""
    mode = (codec.name if codec else "none") if rerank is None else rerank
    if mode == "none":
        return mode
    if codec is None:
        raise MCMFHError(
            f"--rerank {mode}: this archive has no payload to re-score with (built by a model without relaxed "
            "outputs, on a server store, or before payloads existed); use --rerank none"
        )
    if mode != codec.name:
        raise MCMFHError(f"--rerank {mode}: this archive stores {codec.name} payloads; use {codec.name} or none")
    return mode


def search_items(store: ItemStore, code: np.ndarray, relaxed: np.ndarray | None, codec: PayloadCodec | None,
                 mode: str, k: int) -> list[Hit]:  # fmt: skip
    """The k items of ``store`` nearest to one query (``mode`` from ``rerank_mode``)."""
    how = None if mode == "none" or codec is None or relaxed is None else Rescore(codec, relaxed[None, :])
    return store.search(pack_codes(code[None, :]), k, rescore=how)[0]


def search_studies(indexes: Mapping[str, ItemStore], rule: str, code: np.ndarray, k: int) -> list[StudyHit]:
    """The k studies nearest to one query by ``rule`` (``fused`` or ``min``), each with its members."""
    packed = pack_codes(code[None, :])
    if rule == "fused":
        found = [(h.item.id, h.distance) for h in indexes["studies"].search(packed, k)[0]]
    else:
        found = nearest_studies(indexes, packed, k)
    members = indexes["texts"].members([sid for sid, _ in found])
    return [StudyHit(sid, int(d), tuple(members.get(sid, ()))) for sid, d in found]


def nearest_studies(indexes: Mapping[str, ItemStore], packed: np.ndarray, k: int) -> list[tuple[str, int]]:
    """The k studies nearest by their members' image and text codes (the ``min`` rule), exactly: item hits are
    fetched until k studies lie strictly closer than any item not fetched yet."""

    def rank(want: int) -> tuple[list[tuple[str, int]], bool]:
        lists = [indexes[m].search(packed, want)[0] for m in MODALITIES]
        full = [hits[-1].distance for hits in lists if len(hits) == want]  # lists that may go on beyond
        bound = min(full, default=np.inf)
        best: dict[str, int] = {}
        for hits in lists:
            for h in hits:
                if h.distance < bound:
                    sid = h.item.study_id or h.item.id
                    best[sid] = min(best.get(sid, h.distance), h.distance)
        return sorted(best.items(), key=lambda kv: (kv[1], kv[0])), bool(full)

    found, _ = widen(rank, lambda result, _want: len(result[0]) >= k or not result[1],
                     max(STUDY_HITS_PER_STUDY * k, STUDY_HITS_FLOOR))  # fmt: skip
    return found[:k]
