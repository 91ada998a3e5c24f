"""Reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009) of ranked lists, with ties handled explicitly.

Each list is ranked best first as (id, key) pairs; consecutive pairs with equal keys are one tie group and share its
mean rank, so the fused order never depends on the order inside a tie group (a Hamming list is mostly ties). An id's
fused score is the sum over the lists that hold it of 1 / (k + rank). Fused ties are broken by the best position an
id holds in any list, then by the list order (first list first): deterministic for given inputs.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

# RRF's k: a rank-r hit counts 1 / (k + r), so k sets how much the first few ranks outweigh the rest. 60 is the
# value Cormack et al. found best and robust across TREC collections, and the default of Elasticsearch/OpenSearch;
# with it, agreement between the channels (an item both rank in their top tens) outweighs a first place in one.
RRF_K = 60.0

Ranked = Sequence[tuple[str, Hashable]]  # (id, tie key), best first


def tie_ranks(keys: Sequence[Hashable]) -> list[float]:
    """1-based ranks of a list ranked best first, each tie group (consecutive equal keys) at its mean rank."""
    out: list[float] = []
    start = 0
    for end in range(1, len(keys) + 1):
        if end == len(keys) or keys[end] != keys[start]:
            out.extend([(start + 1 + end) / 2.0] * (end - start))
            start = end
    return out


def rrf(lists: Sequence[Ranked], k: float = RRF_K) -> list[tuple[str, float]]:
    """The fused ranking of ``lists`` (each best first, as ``Ranked``): (id, fused score), best first."""
    if k <= 0:
        raise ValueError(f"rrf: k must be > 0, got {k}")
    score: dict[str, float] = {}
    best: dict[str, tuple[float, int]] = {}
    for li, ranked in enumerate(lists):
        for (item, _), r in zip(ranked, tie_ranks([key for _, key in ranked]), strict=True):
            score[item] = score.get(item, 0.0) + 1.0 / (k + r)
            best[item] = min(best.get(item, (r, li)), (r, li))
    return sorted(score.items(), key=lambda kv: (-kv[1], *best[kv[0]], kv[0]))
