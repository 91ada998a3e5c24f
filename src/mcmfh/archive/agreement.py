"""Do an archive's sub-indexes hold the same items? Checked when the archive has no commit record.

An archive commits its sub-indexes one after the other, then its record ``commit.json`` (``mcmfh.archive``), and
readers are pinned to the record, so they never see half a change. Without a record (an archive made before records
existed, or one whose record was lost) each sub-index is read at its newest state, and a change cut off between two
sub-index commits would show: half an add (the image codes committed, the texts not) or half a remove, with the two
search directions answering from different archives.

The invariant: ``texts/`` holds every item, ``images/`` exactly the items of ``texts/`` that have an image, and in an
archive with fused studies ``study_members/`` exactly the items of ``texts/``. An item found in some of these but not
all is *partial*. Without a record, ``Archive`` refuses to open (and any writer to change) an archive with partial
items, ``mcmfh index info`` reports them, and ``mcmfh index repair`` removes them from every sub-index under the
writer lock and writes a record (for half an add, re-running the add completes it; half a remove is completed).

Not detected: two opposite cut-offs that leave equal id sets, and a study code not re-coded after its members
changed (study codes are derived; re-adding a member re-codes its study). Server stores (Milvus) keep their own
invariant and are not checked here. The check reads every item id once: O(N), only for archives without a record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcmfh.errors import ArtefactError
from mcmfh.index.store import ItemStore

SHOWN_IDS = 3  # ids quoted in a message


@dataclass
class Agreement:
    """The check's outcome: whether there is a record, and the partial items by what is wrong with them."""

    record: bool
    partial: dict[str, list[str]] = field(default_factory=dict)  # description -> sorted item ids

    @property
    def ok(self) -> bool:
        return not self.partial

    def ids(self) -> list[str]:
        return sorted({i for ids in self.partial.values() for i in ids})

    def summary(self) -> str:
        return "; ".join(f"{len(ids)} item(s) {what} (e.g. {', '.join(repr(i) for i in ids[:SHOWN_IDS])})"
                         for what, ids in self.partial.items())  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {"commit_record": self.record, "sub_indexes_agree": self.ok,
                "partial_items": {what: len(ids) for what, ids in self.partial.items()}}  # fmt: skip


def check_agreement(indexes: Mapping[str, ItemStore], has_record: bool) -> Agreement:
    """Compare the local sub-indexes' item ids (nothing to do, and ``ok``, when there is a record)."""
    out = Agreement(record=has_record)
    texts = indexes.get("texts")
    if has_record or texts is None or not texts.capabilities.snapshots:
        return out
    every = texts.item_ids()
    pairs = []
    images = indexes.get("images")
    if images is not None and images.capabilities.snapshots:
        pairs.append(("image", images.item_ids(), texts.item_ids(with_image=True)))
    members = indexes.get("study_members")
    if members is not None:
        pairs.append(("study member", members.item_ids(), every))
    for what, have, want in pairs:
        extra, missing = sorted(have - want), sorted(want - have)
        if extra:
            out.partial[f"have an {what} row but no text row" if what == "image"
                        else f"are {what}s but not in texts/"] = extra  # fmt: skip
        if missing:
            out.partial[f"have a text row but no {what} row"] = missing
    return out


def require_agreement(folder: Path, agreement: Agreement) -> None:
    """Refuse an archive whose sub-indexes disagree (see the module docstring), with the way out."""
    if agreement.ok:
        return
    raise ArtefactError(
        f"archive {folder}: its sub-indexes disagree and it has no commit record (commit.json): "
        f"{agreement.summary()}. A change was cut off half-way; run `mcmfh index repair {folder}` (removes those "
        "items from every sub-index under the writer lock), then re-run the add that was cut off"
    )
