"""The store contract: what an archive needs of each sub-index (``ItemStore``), what a store declares it can do
(``Capabilities``), and the one search every store runs (``search_store``), two-stage included.

A store keeps items (``mcmfh.items.Item``) with their packed codes and, where it can, a payload row per item.
Two implementations: ``ItemIndex`` (``mcmfh.index.local_store``: codes in segments and SQLite metadata in the archive
folder, crash-safe by generations) and ``ServerStore`` (``mcmfh.index.server_store``: codes in Milvus, metadata in
SQLite or PostgreSQL). An archive never asks which one it holds: it reads ``capabilities``, and every operation a
store cannot do is a documented no-op (``compact``, ``flush``, ``roll_back_to``, ``drop``) or refused with a
one-line error (``payloads``, ``search(rescore=...)``, ``add(payload=...)``).

Search is the same for every store: exact Hamming k-NN from its codes index, then, with ``rescore``, stage 2 of
two-stage search (``mcmfh.index.rerank``: whole tie groups as candidates, re-scored by the payload rows), then one
lookup of the hits' items. Results are ordered by (distance, insertion order), or (similarity, distance, insertion
order) when re-scored; either way the top k is the prefix of the top K for one query (two-stage: while both share
a candidate budget, see ``mcmfh.index.rerank``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.index.base import NearestCodes
from mcmfh.index.payload import PayloadCodec
from mcmfh.index.rerank import DEFAULT_OVERSAMPLE, candidates, rescore
from mcmfh.items import Hit, Item

T = TypeVar("T")
# A search that filters or groups its hits asks again for this many times as many until it has enough: few rounds
# (each a full k-NN) for a filter that keeps a quarter of the hits or more.
WIDEN = 4


@dataclass(frozen=True)
class Capabilities:
    """What a store can do, declared by its class (never probed)."""

    payloads: bool  # keeps a payload row per item: ``search(rescore=...)``, ``add(payload=...)``, ``payloads``
    snapshots: bool  # its committed state is a manifest snapshot an archive's commit record pins and rolls back to
    remote: bool  # its codes live on a server: ``flush`` seals a bulk load there and ``drop`` deletes them
    lexical: bool = False  # keeps a text index over its items' text: ``lexical``, ``build_text_index``


@dataclass(frozen=True)
class Rescore:
    """Two-stage search: Hamming candidates re-scored by the stored payloads against the queries' own vectors."""

    codec: PayloadCodec
    vectors: np.ndarray  # (Q, codec.dim): each query's real-valued output (never quantised)
    oversample: float = DEFAULT_OVERSAMPLE
    budget: int | None = None  # a fixed candidate budget for every k (None: rerank.candidate_budget(k, oversample))


@dataclass(frozen=True)
class StoreInfo:
    """What ``mcmfh index info`` shows of a store beyond its count."""

    segments: int | None  # local stores: how many segments adds have appended (None: not segmented)
    codes: np.ndarray | None  # the stored packed codes where they are in memory (None: on a server, not read back)
    sealed_from: int | None  # payload rows from this key on carry a checksum (None: none do)
    keys: np.ndarray | None = None  # the keys of ``codes``, row for row (None where ``codes`` is None)


class ItemStore(Protocol):
    """What an archive needs of a sub-index. Reads never lock; every change is committed before it returns."""

    capabilities: Capabilities

    # ---- reading
    def __len__(self) -> int: ...
    def search(self, queries: np.ndarray, k: int = 10, rescore: Rescore | None = None,
               members: bool = False) -> list[list[Hit]]: ...  # fmt: skip
    def get(self, keys: Sequence[int] | np.ndarray) -> list[Item]: ...
    def keys_of(self, item_ids: Sequence[str]) -> dict[str, int]: ...
    def item_ids(self, with_image: bool = False) -> set[str]: ...
    def members(self, study_ids: Sequence[str]) -> dict[str, list[Item]]: ...
    def payloads(self, keys: Sequence[int] | np.ndarray, width: int) -> np.ndarray: ...
    def lexical(self, query: str, n: int) -> list[tuple[Item, float]]: ...
    def info(self) -> StoreInfo: ...

    # ---- committed state
    def state_token(self) -> Any: ...
    def snapshot(self) -> dict[str, Any] | None: ...
    def refresh(self, at: Mapping[str, Any] | None = None) -> bool: ...

    # ---- writing (stores opened writable)
    def add(self, codes: np.ndarray, items: Sequence[Item], payload: np.ndarray | None = None,
            replace: Sequence[str] = ()) -> np.ndarray: ...  # fmt: skip
    def remove(self, item_ids: Sequence[str]) -> int: ...
    def compact(self) -> bool: ...
    def build_text_index(self) -> bool: ...
    def flush(self) -> None: ...
    def roll_back_to(self, snapshot: Mapping[str, Any]) -> bool: ...
    def writer_lock(self, timeout: float, what: str) -> contextlib.AbstractContextManager[None]: ...

    # ---- lifetime
    def drop(self) -> None: ...
    def close(self) -> None: ...


class ItemRows(Protocol):
    """The metadata side a search reads: items by key, alone or with every member of their studies (one round trip
    on a local store), and (stores with payloads) payload rows by key, alone or with their items in one round trip
    (a store without payloads refuses ``payloads`` and ``payload_rows``)."""

    def lookup(self, keys: Sequence[int] | np.ndarray) -> dict[int, Item]: ...
    def lookup_studies(self, keys: Sequence[int] | np.ndarray) -> tuple[dict[int, Item], dict[str, list[Item]]]: ...
    def payload_rows(self, keys: Sequence[int] | np.ndarray, width: int) -> tuple[dict[int, Item], np.ndarray]: ...
    def payloads(self, keys: Sequence[int] | np.ndarray, width: int) -> np.ndarray: ...


def search_store(codes: NearestCodes, rows: ItemRows, queries: np.ndarray, k: int, rescore: Rescore | None = None,
                 spare: int = 0, strict: bool = True, members: bool = False) -> list[list[Hit]]:  # fmt: skip
    """Top-k hits per packed query code from ``codes`` (exact k-NN) and ``rows`` (the items), nearest first.

    ``rescore``: two-stage search; the hits then carry the similarity they are ordered by (None for the Hamming tail
    past the candidate budget). ``members``: each hit carries the other items of its study as ``others`` (key
    order), read with the hits (``ItemRows.lookup_studies``). ``spare``: codes the
    index may hold without rows (a server store's unfinished change): that many more are asked for. ``strict``:
    a key without a row is damage and raises; otherwise (a server store) it is left out."""
    if k < 1:
        raise MCMFHError(f"search: k must be >= 1, got {k}")
    if rescore is None:
        dist, keys = codes.search(queries, k + spare)
        sims = None
    else:
        dist, keys, sims = _two_stage(codes, rows, queries, k, rescore)
    found = np.unique(keys[keys >= 0])
    studies: dict[str, list[Item]] = {}
    if not found.size:
        items: dict[int, Item] = {}
    elif members:
        items, studies = rows.lookup_studies(found)
    else:
        items = rows.lookup(found)
    absent = [int(x) for x in found if int(x) not in items]
    if strict and absent:
        raise MCMFHError(f"search: no items with keys {absent[:5]}")
    out = []
    for q in range(len(keys)):
        pairs = enumerate(zip(dist[q], keys[q], strict=True))
        hits = [Hit(items[int(c)], int(d), None if sims is None or np.isnan(sims[q, j]) else float(sims[q, j]))
                for j, (d, c) in pairs if c >= 0 and int(c) in items]  # fmt: skip
        if members:
            hits = [replace(h, others=_others(h.item, studies)) for h in hits]
        out.append(hits[:k])
    return out


def _others(item: Item, studies: Mapping[str, list[Item]]) -> tuple[Item, ...]:
    return tuple(m for m in studies.get(item.study_id or item.id, ()) if m.id != item.id)


def _two_stage(codes: NearestCodes, rows: ItemRows, queries: np.ndarray, k: int,
               how: Rescore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Stage 1 (``mcmfh.index.rerank.candidates``), then stage 2 on the candidates' payload rows (read without their
    items: the caller looks up the k kept): (distances, keys, similarities), each (Q, k), -1 / -inf padded."""
    cands = candidates(codes, queries, k, how.oversample, budget=how.budget)
    ids = np.unique(cands.ids[cands.ids >= 0])  # sorted: a key's payload row is found by bisection
    payload = rows.payloads(ids, how.codec.bytes_per_item)
    # Padding slots (-1) land on row 0; rescore masks them.
    result = rescore(cands, payload, how.vectors, how.codec, k, rows_of=lambda key: np.searchsorted(ids, key))
    return result.distances, result.ids, result.similarities


def widen(search: Callable[[int], T], enough: Callable[[T, int], bool], first: int, limit: int | None = None) -> T:
    """``search(n)`` for n = first, 4 first, 16 first, ... (at most ``limit``) until ``enough(result, n)``: the
    exact answer of a search that filters or groups its hits (it cannot know beforehand how many it needs)."""
    want = first
    while True:
        result = search(want)
        if enough(result, want) or (limit is not None and want >= limit):
            return result
        want = want * WIDEN if limit is None else min(limit, want * WIDEN)
