"""Open-i label rule: MeSH terms of a report -> normalised tags.

The source terms are the report's MeSH *major* terms (NLM XML ``<MeSH><major>``, Kaggle ``MeSH`` column; ``;``
separates terms). Each term is ``Descriptor[/qualifier[/qualifier...]]``, e.g. ``Thoracic Vertebrae/degenerative/mild``.

Rule, in order:
1. lowercase, collapse whitespace, strip;
2. split the term on ``/``: the first part is the MeSH descriptor, the rest are qualifiers;
3. drop modifier qualifiers that say *how much* or *where on the film* (severity, laterality, extent, e.g. ``mild``,
   ``left``, ``base``, ``multiple``), also when they trail a descriptor after a comma (``cardiomegaly, mild``);
   commas that belong to MeSH descriptors (``aorta, thoracic``, ``catheters, indwelling``) are kept;
4. label set ``mesh`` (default): the descriptor only (``thoracic vertebrae``) — the same tags as the Kaggle
   ``Problems`` column; label set ``mesh_terms``: the descriptor plus every remaining qualifier
   (``thoracic vertebrae``, ``degenerative``), finer but denser;
5. ``normal`` is kept as a tag (1,379 of 3,851 reports); ``no indexing`` (an unindexed report) is dropped;
6. tags in fewer than ``min_count`` records are dropped (the loader's ``min_count`` parameter).
"""

from __future__ import annotations

from collections.abc import Iterable

LABEL_SETS = ("mesh", "mesh_terms")

MODIFIERS = frozenset(
    {
        "mild", "moderate", "severe", "borderline", "small", "large", "acute", "chronic",
        "left", "right", "bilateral", "anterior", "posterior", "base", "apex",
        "multiple", "focal", "diffuse", "patchy", "scattered", "streaky", "round", "multilobar",
    }
)  # fmt: skip
DROPPED = frozenset({"no indexing"})


def _clean(s: str) -> str:
    return " ".join(s.lower().split())


def _strip_trailing_modifiers(s: str) -> str:
    while ", " in s and s.rsplit(", ", 1)[1] in MODIFIERS:
        s = s.rsplit(", ", 1)[0]
    return s


def normalise_terms(terms: Iterable[str], label_set: str = "mesh") -> tuple[str, ...]:
    """Apply the module's rule to raw MeSH terms; order of first appearance kept, duplicates removed."""
    if label_set not in LABEL_SETS:
        raise ValueError(f"unknown Open-i label set {label_set!r}; expected one of {LABEL_SETS}")
    out: list[str] = []
    for term in terms:
        parts = [_strip_trailing_modifiers(_clean(p)) for p in term.split("/")]
        parts = [p for p in parts if p]
        if not parts or parts[0] in DROPPED or parts[0] in MODIFIERS:
            continue
        out.append(parts[0])
        if label_set == "mesh_terms":
            out.extend(p for p in parts[1:] if p not in MODIFIERS)
    return tuple(dict.fromkeys(out))


def split_terms(cell: str | None) -> list[str]:
    """A ``;``-separated MeSH cell -> raw terms."""
    return [t for t in (cell or "").split(";") if t.strip()]
