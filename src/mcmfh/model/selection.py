"""Dev-split scoring used for model choice inside ``fit`` (never the test split).

mAP@all with ties broken by database order (stable sort), relevance = at least one shared label, a query with no
relevant item scores 0. Kept here, small, so model choice does not depend on the evaluation package.
"""

from __future__ import annotations

import numpy as np


def map_at_all(distance_q_n: np.ndarray, labels_q_c: np.ndarray, labels_n_c: np.ndarray) -> float:
    """Mean AP over queries ranking the whole database by ascending distance."""
    relevant_q_n = (labels_q_c.astype(np.int32) @ labels_n_c.astype(np.int32).T) > 0
    order_q_n = np.argsort(distance_q_n, axis=1, kind="stable")
    rel_sorted = np.take_along_axis(relevant_q_n, order_q_n, axis=1)
    hits = np.cumsum(rel_sorted, axis=1)
    precision = hits / np.arange(1, rel_sorted.shape[1] + 1)
    n_rel = rel_sorted.sum(axis=1)
    ap = np.where(n_rel > 0, (precision * rel_sorted).sum(axis=1) / np.maximum(n_rel, 1), 0.0)
    return float(ap.mean())


def hamming_distance(codes_q_b: np.ndarray, codes_n_b: np.ndarray) -> np.ndarray:
    """(Q, N) Hamming distances between boolean codes (small sets only: dev selection)."""
    q, n = codes_q_b.astype(np.int32), codes_n_b.astype(np.int32)
    return q @ (1 - n).T + (1 - q) @ n.T


def cosine_distance(a_q_d: np.ndarray, b_n_d: np.ndarray) -> np.ndarray:
    a = a_q_d / np.maximum(np.linalg.norm(a_q_d, axis=1, keepdims=True), 1e-12)
    b = b_n_d / np.maximum(np.linalg.norm(b_n_d, axis=1, keepdims=True), 1e-12)
    return -(a @ b.T)
