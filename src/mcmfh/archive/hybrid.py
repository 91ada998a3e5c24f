"""Hybrid text search: the cross-modal channel (the query's code against the target codes, ``mcmfh.archive.search``)
fused with a lexical channel (BM25 over the stored report texts, ``mcmfh.index.text_index``) by reciprocal rank
fusion (``mcmfh.fusion``), for text→image, text→text and text→study.

Each channel contributes its top ``channel_depth(k)``: a floor independent of k, so the fused top k is the prefix of
the fused top K for every k < K up to the floor. A hit found only lexically gets its exact Hamming distance from the
stored codes. Hybrid hits carry the fused RRF score as ``score`` (what they are ordered by), not a similarity.

Measured as its own rows (``benchmarks/hybrid_search.py``): it reads the database's text, so it is not a cross-modal
figure. Whether it is the default is ``HYBRID_DEFAULT``, with the measurement that decided it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mcmfh.archive.search import search_items
from mcmfh.errors import MCMFHError
from mcmfh.fusion import rrf
from mcmfh.index.codes import hamming_matrix, pack_codes
from mcmfh.index.payload import PayloadCodec
from mcmfh.index.store import ItemStore
from mcmfh.items import Hit, Item, StudyHit

# Hits each channel contributes to the fusion (more when k is larger): deep enough that an item ranked well by one
# channel only still reaches a first screen, shallow enough that the lexical channel's weak OR-matches stay out.
HYBRID_DEPTH = 100
# Off by default: see docs/hybrid.md for the measurement (benchmarks/hybrid_search.py) that decided it.
HYBRID_DEFAULT = False


def channel_depth(k: int) -> int:
    """How many hits each channel contributes for a top-k request."""
    return max(HYBRID_DEPTH, k)


def use_hybrid(stores: Mapping[str, ItemStore], part: str, hybrid: bool | None) -> bool:
    """Whether a text search runs hybrid: ``hybrid`` if given (True on a store without a text index is refused),
    else ``HYBRID_DEFAULT`` where the store has one."""
    store = stores[part]
    able = store.capabilities.lexical
    if hybrid is None:
        return HYBRID_DEFAULT and able and _has_index(store)
    if hybrid and not able:
        raise MCMFHError("--hybrid: this archive keeps its items on a server store, which has no text index yet")
    return bool(hybrid)


def _has_index(store: ItemStore) -> bool:
    try:
        store.lexical("", 1)  # an empty query reads nothing but still checks the index is there
    except MCMFHError:
        return False
    return True


def code_distances(store: ItemStore, code: np.ndarray, item_ids: list[str]) -> dict[str, int]:
    """Exact Hamming distances from one query code (bool) to the stored codes of ``item_ids`` (a local store)."""
    if not item_ids:
        return {}
    keys = store.keys_of(item_ids)
    info = store.info()
    if info.codes is None or info.keys is None:
        raise MCMFHError("hybrid search: the store's codes are not in memory (a local store is needed)")
    order = np.argsort(info.keys, kind="stable")
    want = np.array([keys[i] for i in item_ids], np.int64)
    rows = order[np.searchsorted(info.keys, want, sorter=order)]
    dist = hamming_matrix(pack_codes(code[None, :]), info.codes[rows])[0]
    return {i: int(d) for i, d in zip(item_ids, dist, strict=True)}


def hybrid_items(store: ItemStore, query: str, code: np.ndarray, relaxed: np.ndarray | None,
                 codec: PayloadCodec | None, mode: str, k: int) -> list[Hit]:  # fmt: skip
    """The top k items of ``store`` for a text query, its two channels fused."""
    depth = channel_depth(k)
    cross = search_items(store, code, relaxed, codec, mode, depth)
    lexical = store.lexical(query, depth)
    fused = rrf([[(h.item.id, (h.distance, -(h.score or 0.0))) for h in cross],
                 [(it.id, -s) for it, s in lexical]])[:k]  # fmt: skip
    by_id: dict[str, Item] = {h.item.id: h.item for h in cross} | {it.id: it for it, _ in lexical}
    dist = {h.item.id: h.distance for h in cross}
    dist |= code_distances(store, code, [i for i, _ in fused if i not in dist])
    return [Hit(by_id[i], dist[i], s) for i, s in fused]


def hybrid_studies(indexes: Mapping[str, ItemStore], rule: str, query: str, code: np.ndarray, k: int,
                   cross: list[StudyHit]) -> list[StudyHit]:  # fmt: skip
    """The top k studies for a text query: ``cross``, the cross-modal study ranking (top ``channel_depth(k)``),
    fused with the lexical ranking of the studies by their best-matching member's report."""
    lexical = lexical_studies(indexes["texts"], query, channel_depth(k))
    fused = rrf([[(h.study_id, (h.distance, -(h.score or 0.0))) for h in cross],
                 [(sid, -s) for sid, s in lexical]])[:k]  # fmt: skip
    known = {h.study_id: h for h in cross}
    others = [sid for sid, _ in fused if sid not in known]
    members = indexes["texts"].members(others)
    dist = _study_distances(indexes, rule, code, others, members)
    out = []
    for sid, s in fused:
        hit = known.get(sid)
        out.append(StudyHit(sid, hit.distance if hit else dist[sid], hit.members if hit else tuple(members[sid]), s))
    return out


def lexical_studies(store: ItemStore, query: str, depth: int) -> list[tuple[str, float]]:
    """The lexical study ranking: studies by their best-matching member among the top ``depth`` item matches,
    (study id, that member's BM25 score), best first."""
    best: dict[str, float] = {}
    for item, s in store.lexical(query, depth):
        best.setdefault(item.study_id or item.id, s)  # best first: a study's first member is its best
    return list(best.items())


def _study_distances(indexes: Mapping[str, ItemStore], rule: str, code: np.ndarray, study_ids: list[str],
                     members: Mapping[str, list[Item]]) -> dict[str, int]:  # fmt: skip
    """The Hamming distance of the query code to each study, by the archive's study rule."""
    if rule == "fused":
        return code_distances(indexes["studies"], code, study_ids)
    out: dict[str, int] = {}
    for part in ("images", "texts"):
        have = indexes[part].keys_of([it.id for sid in study_ids for it in members[sid]])
        dist = code_distances(indexes[part], code, list(have))
        for sid in study_ids:
            for it in members[sid]:
                if it.id in dist:
                    out[sid] = min(out.get(sid, dist[it.id]), dist[it.id])
    return out
