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
are below ``COLLAPSE_FRACTION`` of the most it could have, min(bits, log2(items)), or its largest bucket holds more
than ``COLLAPSE_BUCKET_SHARE`` of the items. A row is collapsed when either modality is.
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


def code_health(codes: np.ndarray, bits: int | None = None) -> dict[str, Any]:
    """Health figures of one modality's codes: bool (N, bits), or packed uint8 (N, bytes) with ``bits`` given."""
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
    return {
        "items": int(n),
        "bits": int(nbits),
        "distinct": int(len(counts)),
        "distinct_share": float(len(counts) / n),
        "largest_bucket_share": float(counts.max() / n),
        "effective_bits": round(entropy, 4),
        "effective_bits_ceiling": round(ceiling, 4),
        "bit_balance": [round(float(s), 4) for s in share],
        "mean_bit_imbalance": float(np.abs(share - 0.5).mean() * 2),
        "mean_abs_bit_correlation": round(mean_corr, 4),
    }


def is_collapsed(health: Mapping[str, Any]) -> bool:
    """The documented collapse rule for one modality's ``code_health`` figures."""
    ceiling = float(health["effective_bits_ceiling"])
    low_entropy = ceiling > 0 and float(health["effective_bits"]) < COLLAPSE_FRACTION * ceiling
    return bool(low_entropy or float(health["largest_bucket_share"]) > COLLAPSE_BUCKET_SHARE)


def method_code_health(image_codes: np.ndarray, text_codes: np.ndarray) -> dict[str, Any]:
    """Both modalities' health and the row verdict ``collapsed`` (either modality collapsed)."""
    out: dict[str, Any] = {"image": code_health(image_codes), "text": code_health(text_codes)}
    out["collapsed"] = is_collapsed(out["image"]) or is_collapsed(out["text"])
    return out


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
