"""Code health: is a set of binary codes using its bits, or has the model collapsed onto a few buckets?

A collapsed model gives most items one of a handful of codes. Its stable-order mAP can still look good when the
database order follows the labels, so collapse is measured directly, per modality, from the codes alone:

- ``distinct``: number of distinct codes; ``distinct_share``: distinct / items.
- ``largest_bucket_share``: share of items that have the most common code.
- ``bit_balance``: per bit, the share of items with that bit set (0.5 = balanced); ``mean_bit_imbalance`` is the
  mean of |share - 0.5| * 2 (0 = every bit splits the items in half, 1 = every bit constant).
- ``effective_bits``: entropy (base 2) of the distribution of codes over items: log2 of the number of equally
  used codes that would carry the same information. At most min(bits, log2(items)).
- ``mean_abs_bit_correlation``: mean |Pearson correlation| over pairs of non-constant bits (constant bits count as
  fully redundant, 1).

Collapse rule (``is_collapsed``, documented in docs/evaluation.md): a modality is collapsed when its effective bits
are below ``COLLAPSE_FRACTION`` of the most it could have, min(bits, log2(items)) — or, when the coded inputs are
given, min(bits, entropy of the distinct inputs), since identical inputs (one caption on many images) must share a
code — or its largest bucket holds more than ``COLLAPSE_BUCKET_SHARE`` of the items (or more than the largest group
of identical inputs, if that is larger). A row is collapsed when either modality is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mcmfh.errors import MCMFHError

# A modality whose code entropy is below this fraction of its ceiling min(bits, log2 N) is collapsed. Healthy
# 16-bit MedPix models reach ~0.8-0.9 of the ceiling; the held-out failure (7-17 codes for 588 items) was ~0.3.
COLLAPSE_FRACTION = 0.5
# ... or when one code holds more than this share of the items (a 16-bit code over thousands of items never should).
COLLAPSE_BUCKET_SHARE = 0.25


def _as_bool(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise MCMFHError(f"code health: expected (N, bits) codes, got shape {codes.shape}")
    if codes.dtype == np.uint8:  # packed (see mcmfh.index.codes): unpack, bit order does not matter here
        return np.unpackbits(codes, axis=1).astype(bool)
    return codes.astype(bool) if codes.dtype != bool else codes


def _entropy(rows: np.ndarray) -> tuple[float, float]:
    """Entropy (bits) of the distribution of distinct rows, and the share of the most common row."""
    rows = np.ascontiguousarray(rows)
    keys = rows.reshape(len(rows), -1).view(np.dtype((np.void, rows.dtype.itemsize * int(np.prod(rows.shape[1:])))))
    _, counts = np.unique(keys.ravel(), return_counts=True)
    p = counts / len(rows)
    return max(0.0, float(-(p * np.log2(p)).sum())), float(counts.max() / len(rows))


def code_health(codes: np.ndarray, bits: int | None = None, inputs: np.ndarray | None = None) -> dict[str, Any]:
    """Health figures of one modality's codes: bool (N, bits), or packed uint8 (N, bytes) with ``bits`` given.

    ``inputs`` (N, d), the embeddings that were coded: identical inputs must share a code, so the ceiling of the
    effective bits is the entropy of the distinct inputs (not log2 N) and a bucket may hold as many items as the
    largest group of identical inputs (many images of a case sharing one caption is data, not collapse)."""
    b = _as_bool(codes)
    if bits is not None:
        b = b[:, :bits]
    n, nbits = b.shape
    if n == 0:
        raise MCMFHError("code health: no codes")
    _, counts = np.unique(np.packbits(b, axis=1), axis=0, return_counts=True)
    p = counts / n
    entropy = max(0.0, float(-(p * np.log2(p)).sum()))  # one code: -0.0 otherwise
    share = b.mean(0)
    x = b.astype(np.float64) - share
    std = x.std(0)
    live = std > 0
    n_pairs = nbits * (nbits - 1) // 2
    if n_pairs:
        corr = np.ones((nbits, nbits))
        if live.sum() > 1:
            xl = x[:, live] / std[live]
            corr[np.ix_(live, live)] = np.abs(xl.T @ xl / n)
        mean_corr = float(corr[np.triu_indices(nbits, 1)].mean())
    else:
        mean_corr = 0.0
    ceiling = float(min(nbits, np.log2(n))) if n > 1 else 0.0
    input_share = 0.0
    if inputs is not None and len(inputs) == n:
        input_entropy, input_share = _entropy(np.asarray(inputs))
        ceiling = min(ceiling, input_entropy)
    return {
        "items": int(n),
        "bits": int(nbits),
        "distinct": int(len(counts)),
        "distinct_share": float(len(counts) / n),
        "largest_bucket_share": float(counts.max() / n),
        "effective_bits": round(entropy, 4),
        "effective_bits_ceiling": round(ceiling, 4),
        "largest_input_share": round(input_share, 4),
        "bit_balance": [round(float(s), 4) for s in share],
        "mean_bit_imbalance": float(np.abs(share - 0.5).mean() * 2),
        "mean_abs_bit_correlation": round(mean_corr, 4),
    }


def is_collapsed(health: Mapping[str, Any]) -> bool:
    """The documented collapse rule for one modality's ``code_health`` figures."""
    ceiling = float(health["effective_bits_ceiling"])
    low_entropy = ceiling > 0 and float(health["effective_bits"]) < COLLAPSE_FRACTION * ceiling
    bucket_limit = max(COLLAPSE_BUCKET_SHARE, float(health.get("largest_input_share", 0.0)))
    return bool(low_entropy or float(health["largest_bucket_share"]) > bucket_limit)


def method_code_health(
    image_codes: np.ndarray,
    text_codes: np.ndarray,
    image_inputs: np.ndarray | None = None,
    text_inputs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Both modalities' health and the row verdict ``collapsed`` (either modality collapsed); with the inputs that
    were coded, identical inputs lower the ceiling (``code_health``)."""
    out: dict[str, Any] = {
        "image": code_health(image_codes, inputs=image_inputs),
        "text": code_health(text_codes, inputs=text_inputs),
    }
    out["collapsed"] = is_collapsed(out["image"]) or is_collapsed(out["text"])
    return out


def strip_bits(health: Any) -> Any:
    """One modality's figures without the per-bit list (for logs and result rows); other values unchanged."""
    return {k: v for k, v in health.items() if k != "bit_balance"} if isinstance(health, dict) else health


def health_line(health: Mapping[str, Any]) -> str:
    """One short line per modality, for logs and CLI summaries."""
    parts = []
    for modality in ("image", "text"):
        h = health[modality]
        parts.append(
            f"{modality}: {h['distinct']} codes / {h['items']}, largest bucket {h['largest_bucket_share']:.0%}, "
            f"{h['effective_bits']:.1f}/{h['effective_bits_ceiling']:.1f} effective bits, "
            f"|corr| {h['mean_abs_bit_correlation']:.2f}"
        )
    verdict = "COLLAPSED" if health.get("collapsed") else "healthy"
    return f"{verdict} — " + "; ".join(parts)


# What to try when a fit ends collapsed, in the order that helped on small, coarsely labelled archives.
COLLAPSE_ADVICE = (
    "more training pairs or finer labels if you have them; a longer code (--bits 32); "
    "or a linear method for archives this small (--method cca-itq): docs/evaluation.md, 'Collapse'"
)


def collapse_warning(health: Mapping[str, Any], what: str) -> str | None:
    """One line for a user whose codes collapsed (None when they are healthy): the figures and what to try."""
    if not health.get("collapsed"):
        return None
    return f"warning: {what} collapsed — {health_line(health)}; try {COLLAPSE_ADVICE}"
