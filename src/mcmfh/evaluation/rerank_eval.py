"""Evaluation of two-stage search (``mcmfh.index.rerank``): the ranking a user sees, next to one-stage.

For every query the database is ranked as a two-stage search shows it: the stage-1 candidates (the first
``max(RERANK_FLOOR, oversample * k)`` items in Hamming order, see ``mcmfh.index.rerank``) first, ordered by their
re-scored similarity, then every other item in Hamming order. Items tie only where both the similarity and the
Hamming distance are equal, and the usual tie-aware metrics (``mcmfh.evaluation.metrics``) take the expectation over
those
ties. Each payload is evaluated at two depths: ``k`` (the bounded search the product runs) and ``all`` (every item
re-scored: the payload's own ceiling). Database payloads are quantised by the codec; queries use their own
real-valued output, coded alone, as at search time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.evaluation.metrics import RankingOptions, hamming_distances, ranking_metrics
from mcmfh.index.codes import pack_codes
from mcmfh.index.flat import FlatIndex
from mcmfh.index.payload import DEFAULT_PAYLOAD, PayloadCodec, code_bits, make_codec
from mcmfh.index.rerank import DEFAULT_OVERSAMPLE, Candidates, candidates, rescored_ranking
from mcmfh.method import HashMethod

# Figures kept per (payload, depth, direction); P@K are tie-aware expectations like the one-stage ones.
REPORTED_P_AT_K = (10, 20)


@dataclass
class RerankOptions:
    payloads: Sequence[str] = (DEFAULT_PAYLOAD,)
    k: int = 100  # results requested per query at the bounded depth
    oversample: float = DEFAULT_OVERSAMPLE

    def __post_init__(self) -> None:
        if not self.payloads:
            raise MCMFHError("rerank: at least one payload is needed")
        for name in self.payloads:
            make_codec(name, code_bits(name) or 8)  # validates the name
        if self.k < 1:
            raise MCMFHError(f"rerank: k must be >= 1, got {self.k}")
        if not self.oversample >= 1:
            raise MCMFHError(f"rerank: oversample must be >= 1, got {self.oversample}")


def needed_code_bits(options: RerankOptions | None) -> list[int]:
    """Code lengths of the ``code<B>`` payloads: the companion models an evaluation must fit."""
    if options is None:
        return []
    return sorted({b for b in (code_bits(p) for p in options.payloads) if b is not None})


def _vectors(method: HashMethod, x: np.ndarray, image: bool, payload: str, companions: Mapping[int, HashMethod]):
    bits = code_bits(payload)
    if bits is None:
        return method.relaxed_images(x) if image else method.relaxed_texts(x)
    other = method if bits == method.bits else companions.get(bits)
    if other is None:
        raise MCMFHError(f"rerank: payload {payload} needs the same method fitted at {bits} bits")
    return other.encode_images(x) if image else other.encode_texts(x)


class TwoStageRanker:
    """One direction's whole-database two-stage ranking (module docstring) for (Q, bits) bool query and database
    codes and their real-valued vectors (database ones quantised by ``codec``)."""

    def __init__(self, q_codes: np.ndarray, db_codes: np.ndarray, q_vec: np.ndarray, db_vec: np.ndarray,
                 codec: PayloadCodec) -> None:  # fmt: skip
        self.q_packed, db_packed = pack_codes(q_codes), pack_codes(db_codes)
        self.hamming = hamming_distances(self.q_packed, db_packed)
        payload = codec.encode(db_vec)
        self.sims = codec.score(codec.prepare_queries(q_vec), np.broadcast_to(payload, (len(q_vec), *payload.shape)))
        self.index = FlatIndex(8 * db_packed.shape[1])
        self.index.add(db_packed)

    def rank(self, k: int, oversample: float = DEFAULT_OVERSAMPLE) -> tuple[np.ndarray, Candidates]:
        """(Q, N) rank keys (``mcmfh.index.rerank.rescored_ranking``) of a search for k, and its candidates."""
        cand = candidates(self.index, self.q_packed, k, oversample)
        mask = np.zeros(self.hamming.shape, bool)
        rows = np.repeat(np.arange(len(self.q_packed)), cand.ids.shape[1])
        valid = cand.mask().ravel()
        mask[rows[valid], cand.ids.ravel()[valid]] = True
        return rescored_ranking(self.hamming, self.sims, mask), cand


def _direction(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_vec: np.ndarray,
    db_vec: np.ndarray,
    rel: np.ndarray,
    codec: PayloadCodec,
    opts: RerankOptions,
    ranking: RankingOptions,
) -> dict[str, Any]:
    ranker = TwoStageRanker(q_codes, db_codes, q_vec, db_vec, codec)
    n = len(db_codes)
    out: dict[str, Any] = {}
    for depth, k in (("k", min(opts.k, n)), ("all", n)):
        keys, cand = ranker.rank(k, opts.oversample if depth == "k" else 1.0)
        m = ranking_metrics(keys, rel, RankingOptions(ranking.map_k, REPORTED_P_AT_K, ranking.pr_points, None))
        out[depth] = {
            "k": int(k),
            "oversample": float(opts.oversample if depth == "k" else 1.0),
            "map": m["map"],
            "map_all": m["map_all"],
            "p_at_k": m["p_at_k"],
            "mean_candidates": float(cand.count.mean()) if len(cand.count) else 0.0,
            "truncated_queries": float(cand.truncated.mean()) if len(cand.truncated) else 0.0,
            "ap_all_tie_aware": np.asarray(m["ap_all_tie_aware"]).tolist(),
        }
    return out


def evaluate_two_stage(
    method: HashMethod,
    q_image: np.ndarray,
    q_text: np.ndarray,
    db_image: np.ndarray,
    db_text: np.ndarray,
    rel_i2t: np.ndarray,
    rel_t2i: np.ndarray,
    codes: Mapping[str, np.ndarray],
    options: RerankOptions,
    ranking: RankingOptions,
    companions: Mapping[int, HashMethod] | None = None,
) -> dict[str, Any]:
    """``{payload: {"bytes_per_item", "i2t": {"k": {...}, "all": {...}}, "t2i": ...}}`` for a hashing method.

    Features are the raw query / database embeddings per modality; ``codes`` holds the method's binary codes
    already computed by the one-stage evaluation (keys ``q_image``, ``q_text``, ``db_image``, ``db_text``)."""
    if method.continuous or not method.has_relaxed:
        raise MCMFHError(f"rerank: method {method.name!r} has no relaxed output to re-score with")
    companions = companions or {}
    out: dict[str, Any] = {}
    for name in options.payloads:
        dbt = _vectors(method, db_text, False, name, companions)
        dbi = _vectors(method, db_image, True, name, companions)
        qi = _vectors(method, q_image, True, name, companions)
        qt = _vectors(method, q_text, False, name, companions)
        codec = make_codec(name, dbt.shape[1])
        out[name] = {
            "bytes_per_item": codec.bytes_per_item,
            "i2t": _direction(codes["q_image"], codes["db_text"], qi, dbt, rel_i2t, codec, options, ranking),
            "t2i": _direction(codes["q_text"], codes["db_image"], qt, dbi, rel_t2i, codec, options, ranking),
        }
    return out


def flat_keys(two_stage: Mapping[str, Any]) -> dict[str, float]:
    """Summary keys for result rows: ``<dir>_map_2s_<payload>`` (bounded depth), ``..._all`` (every item re-scored),
    ``<dir>_p<K>_2s_<payload>[_all]``, and ``bytes_2s_<payload>``."""
    out: dict[str, float] = {}
    for name, res in two_stage.items():
        out[f"bytes_2s_{name}"] = res["bytes_per_item"]
        for d in ("i2t", "t2i"):
            for depth, suffix in (("k", ""), ("all", "_all")):
                r = res[d][depth]
                out[f"{d}_map_2s_{name}{suffix}"] = r["map"]
                for k in REPORTED_P_AT_K:
                    if str(k) in r["p_at_k"]:
                        out[f"{d}_p{k}_2s_{name}{suffix}"] = r["p_at_k"][str(k)]
            out[f"{d}_candidates_2s_{name}"] = res[d]["k"]["mean_candidates"]
    return out


def strip_per_query(two_stage: Mapping[str, Any]) -> dict[str, Any]:
    """The two-stage results without per-query AP lists (for result rows)."""
    return {
        name: {
            key: (
                {depth: {kk: vv for kk, vv in r.items() if not kk.startswith("ap_")} for depth, r in val.items()}
                if key in ("i2t", "t2i")
                else val
            )
            for key, val in res.items()
        }
        for name, res in two_stage.items()
    }
