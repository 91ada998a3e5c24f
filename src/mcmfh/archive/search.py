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

from mcmfh.diversify import diversify, others_not_shown
from mcmfh.errors import MCMFHError
from mcmfh.index.codes import pack_codes
from mcmfh.index.payload import PayloadCodec
from mcmfh.index.rerank import candidate_budget
from mcmfh.index.store import WIDEN, ItemStore, Rescore, widen
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


def rerank_mode(codec: PayloadCodec | None, rerank: str | None, what: str = "items") -> str:
    """``--rerank``: ``none`` or the archive's payload codec (default: the codec, i.e. two-stage, when there is one);
    ``what``: items or studies (whose payload only fused studies of a model with relaxed outputs keep)."""
    mode = (codec.name if codec else "none") if rerank is None else rerank
    if mode == "none":
        return mode
    if codec is None:
        raise MCMFHError(
            f"--rerank {mode}: this archive has no {what} payload to re-score with (built by a model without relaxed "
            "outputs or a study head, on a server store, or before payloads existed); use --rerank none"
        )
    if mode != codec.name:
        raise MCMFHError(f"--rerank {mode}: this archive stores {codec.name} payloads; use {codec.name} or none")
    return mode


def rescore_of(relaxed: np.ndarray | None, codec: PayloadCodec | None, mode: str,
               budget: int | None = None) -> Rescore | None:  # fmt: skip
    """Two-stage search for one query (``mode`` from ``rerank_mode``), or None for Hamming order."""
    return (
        None if mode == "none" or codec is None or relaxed is None else Rescore(codec, relaxed[None, :], budget=budget)
    )


def search_items(store: ItemStore, code: np.ndarray, relaxed: np.ndarray | None, codec: PayloadCodec | None,
                 mode: str, k: int, budget: int | None = None, members: bool = False) -> list[Hit]:  # fmt: skip
    """The k items of ``store`` nearest to one query (``mode`` from ``rerank_mode``; ``budget``: a fixed two-stage
    candidate budget, see ``mcmfh.index.rerank``; ``members``: each hit with its study's other items)."""
    how = rescore_of(relaxed, codec, mode, budget)
    return store.search(pack_codes(code[None, :]), k, rescore=how, members=members)[0]


def search_diversified(store: ItemStore, code: np.ndarray, relaxed: np.ndarray | None, codec: PayloadCodec | None,
                       mode: str, k: int, per_study: int) -> list[Hit]:  # fmt: skip
    """The first k entries of the diversified ranking (``mcmfh.diversify``; ``per_study`` 0: the raw k items), each
    with the rest of its study. The raw ranking is asked for until k entries survive folding or it is exhausted,
    all requests with the budget of k (one ranking, of which every request is a prefix)."""
    if per_study == 0:
        return search_items(store, code, relaxed, codec, mode, k)
    budget = candidate_budget(k) if mode != "none" else None

    def shown(n: int) -> tuple[list[Hit], bool]:
        hits = search_items(store, code, relaxed, codec, mode, n, budget, members=True)
        return diversify(hits, per_study), len(hits) < n

    found, _ = widen(shown, lambda r, _n: len(r[0]) >= k or r[1], k * WIDEN, limit=max(1, len(store)))
    return others_not_shown(found[:k])


def search_studies(indexes: Mapping[str, ItemStore], rule: str, code: np.ndarray, k: int,
                   relaxed: np.ndarray | None = None, codec: PayloadCodec | None = None,
                   mode: str = "none") -> list[StudyHit]:  # fmt: skip
    """The k studies nearest to one query by ``rule`` (``fused`` or ``min``), each with its members. Fused studies
    with a payload (``codec``, ``mode`` from ``rerank_mode``) are searched two-stage, as items: the hits carry the
    similarity they are ordered by."""
    packed = pack_codes(code[None, :])
    if rule == "fused":
        how = rescore_of(relaxed, codec, mode)
        found = [(h.item.id, h.distance, h.score) for h in indexes["studies"].search(packed, k, rescore=how)[0]]
    else:
        found = [(sid, d, None) for sid, d in nearest_studies(indexes, packed, k)]
    members = indexes["texts"].members([sid for sid, _, _ in found])
    return [StudyHit(sid, int(d), tuple(members.get(sid, ())), score) for sid, d, score in found]


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
