"""The stored form of a study member: what ``study_members/`` keeps per item so a study can be coded again.

A member's payload row is a has-image byte, then its (2, width) study inputs (``HashMethod.study_inputs``) as
little-endian float16: plenty for a re-code, at half the bytes of float32. A study's own row in ``studies/`` is its
id and the union of its members' labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mcmfh.items import Item

STUDY_INPUT_DTYPE = "<f2"


def member_width(shape: Sequence[int]) -> int:
    """Bytes per member row for study inputs of ``shape``: the has-image byte and the float16 values."""
    return 1 + np.dtype(STUDY_INPUT_DTYPE).itemsize * int(np.prod(shape))


def member_payload(inputs: np.ndarray, has_image: np.ndarray) -> np.ndarray:
    """(n, ``member_width``) uint8 rows of members' study inputs (n, *shape) and has-image flags (n,)."""
    flat = np.ascontiguousarray(np.asarray(inputs, np.float32).reshape(len(inputs), -1).astype(STUDY_INPUT_DTYPE))
    return np.concatenate([np.asarray(has_image, np.uint8)[:, None], flat.view(np.uint8)], axis=1)


def member_inputs(raw: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``member_payload``: (n, *shape) float32 inputs and (n,) has-image."""
    raw = np.ascontiguousarray(raw)
    inputs = raw[:, 1:].copy().view(STUDY_INPUT_DTYPE).astype(np.float32)
    return inputs.reshape(len(raw), *shape), raw[:, 0].astype(bool)


def study_item(study_id: str, members: Sequence[Item]) -> Item:
    """The row of a study in ``studies/``: its id, and the union of its members' labels (first seen first)."""
    labels = tuple(dict.fromkeys(label for it in members for label in it.labels))
    return Item(id=study_id, image=None, text="", labels=labels, study_id=study_id, source=members[0].source)
