"""Result diversification: one entry per study (case) with its best-matching member first, and duplicate texts
folded, as search engines' field collapsing (or clip-retrieval's deduplication) does.

A ranking of item hits is walked in order; a hit is shown unless ``per_study`` hits of its study (``Item.study_id``,
or the item itself when it has none) are shown already, or its text is, word for word (whitespace and case aside),
the text of a hit shown before it: the same caption of two images of one case, or a report shared by a study's
images, never fills a screen. A folded duplicate is kept on the hit it repeats (``Hit.duplicates``). ``per_study``
0 is the raw ranking: nothing folded. The hits shown for a prefix of a ranking are a prefix of those shown for the
whole (only the duplicates folded under them may grow), so a search that keeps the prefix property
(``mcmfh.index.rerank``) keeps it diversified too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from mcmfh.items import Hit, Item

# Hits shown per study by default: one entry per case, its other members one click away ("N more in this case").
DEFAULT_PER_STUDY = 1


def study_key(item: Item) -> str:
    """The study an item counts for: its ``study_id``, or its own id (an item of no study is a study of its own)."""
    return item.study_id or item.id


def text_key(item: Item) -> str:
    """What makes two texts the same for folding: the words, case-folded (empty: never folded as a duplicate)."""
    return " ".join(item.text.split()).casefold()


def diversify(hits: Sequence[Hit], per_study: int = DEFAULT_PER_STUDY) -> list[Hit]:
    """The hits shown, in rank order, each with the ids of the later hits folded under it as duplicates of its
    text; ``per_study`` 0 returns the hits unchanged."""
    if per_study < 0:
        raise ValueError(f"per_study must be >= 0, got {per_study}")
    if per_study == 0:
        return list(hits)
    shown: list[Hit] = []
    dupes: dict[int, list[str]] = {}
    per: dict[str, int] = {}
    by_text: dict[str, int] = {}
    for hit in hits:
        text, study = text_key(hit.item), study_key(hit.item)
        if text and text in by_text:
            dupes.setdefault(by_text[text], []).append(hit.item.id)
            continue
        if per.get(study, 0) >= per_study:
            continue
        per[study] = per.get(study, 0) + 1
        if text:
            by_text[text] = len(shown)
        shown.append(hit)
    return [replace(h, duplicates=tuple(dupes[i])) if i in dupes else h for i, h in enumerate(shown)]


def others_not_shown(shown: Sequence[Hit]) -> list[Hit]:
    """Each shown hit with the other items of its study (its ``others``, as a store's ``search(members=True)``
    gives them) less those shown themselves: "N more in this case"."""
    on_screen = {h.item.id for h in shown}
    return [replace(h, others=tuple(m for m in h.others if m.id not in on_screen)) for h in shown]


def diversified_rows(order: np.ndarray, groups: np.ndarray, texts: np.ndarray, k: int, per_study: int = 1) -> list[int]:
    """The first k rows of a database ranking (``order``: row numbers, best first) as diversification shows them:
    at most ``per_study`` rows per group (``groups``: a study number per row) and no row whose text (``texts``: a
    hashable text key per row, e.g. the text embedding's bytes) an earlier shown row had. The evaluation's view of
    ``diversify``, on arrays."""
    shown: list[int] = []
    per: dict[int, int] = {}
    seen: set[Any] = set()
    for r in order:
        g, t = int(groups[r]), texts[r]
        if t in seen or per.get(g, 0) >= per_study:
            continue
        seen.add(t)
        per[g] = per.get(g, 0) + 1
        shown.append(int(r))
        if len(shown) == k:
            break
    return shown


def case_metrics(keys: np.ndarray, rel: np.ndarray, groups: np.ndarray, texts: np.ndarray, k: int) -> dict[str, float]:
    """For (Q, N) rank keys (lower first; ties in database order) and relevance: ``p_cases`` — precision of the
    first k entries of the diversified ranking (distinct cases); ``p_items`` — of the raw first k, same order;
    ``cases_raw`` — distinct groups among the raw first k. Stable order inside ties, not tie-aware."""
    p_cases, p_items, cases_raw = [], [], []
    for q in range(keys.shape[0]):
        order = np.argsort(keys[q], kind="stable")
        shown = diversified_rows(order, groups, texts, k)
        p_cases.append(float(rel[q, shown].sum()) / k)
        p_items.append(float(rel[q, order[:k]].sum()) / k)
        cases_raw.append(len(set(groups[order[:k]].tolist())))
    return {"p_cases": float(np.mean(p_cases)), "p_items": float(np.mean(p_items)),
            "cases_raw": float(np.mean(cases_raw))}  # fmt: skip
