"""A fitted MCMFH model's query path in numpy: image or text embeddings -> relaxed codes, without torch.

A one-shot ``mcmfh search`` loaded torch (and every registered method) for a few small matrix products per query:
importing them was 2.2 s of a 6.1 s text search (``python -X importtime``, 2 cores at load average 10). This module
evaluates the same network from the run's saved weights (``weights.safetensors``: input transform -> DV-MLP vote
-> fusion transformer (single-item rule) -> hashing MLP -> tanh), in float64.

It must give the codes torch gives. Torch computes in float32, so a value whose sign or order hangs on the last few
bits can come out otherwise: rows with a hash pre-activation closer to 0 than ``SIGN_MARGIN``, or with an expert
choice (top-k) decided by less than ``GATE_MARGIN``, are marked unsafe and the caller codes them with torch. Only
models it can reproduce are taken: the MCMFH family below, whose weights hold exactly the tensors read here and
whose config names no field unknown to this module (a new option may change the forward pass: such a model is left
to torch until this module learns it). tests/test_numpy_hash.py checks codes equal to torch's for every family
member, and relaxed outputs within 1e-5.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.method import CONFIG_NAME, WEIGHTS_NAME

# The registered methods whose image / text path is MCMFHNet's (mcmfh.model.mcmfh and its subclasses).
SUPPORTED_METHODS = ("mcmfh", "mcmfh-no-moe", "mcmfh-no-dv", "mcmfh-no-gateloss", "mcmfh-no-fusion", "mcmfh-supervised")
# MCMFHConfig fields the forward pass reads here, and those it need not read: training-only ones (in a flat config
# saved before architecture and training were split), and those the weights carry (dv_dropout is in the stored vote
# masks, ffn_hidden in the experts' shapes; capacity is saved resolved into the widths).
INFERENCE_FIELDS = frozenset({
    "center", "whiten_dim", "dv_hidden", "width", "dropout_voting", "dv_votes", "layers", "heads", "use_moe",
    "experts", "top_k", "gate", "gate_blend", "single_rule", "hash_hidden", "study_head",
})  # fmt: skip
UNREAD_FIELDS = frozenset({
    "whiten_eps", "input_dropout", "capacity", "small_train_pairs", "dv_dropout", "ffn_hidden", "attn_dropout",
    "ffn_dropout", "router_noise",
    "modality_dropout", "hash_dropout", "temperature", "hash_temperature", "lambda_hash", "lambda_gate",
    "balance_weight", "z_weight", "lambda_pair", "lambda_decorrelation", "lambda_quant", "lambda_bit_balance",
    "lambda_label", "label_soft", "lambda_label_stage1", "lambda_label_contrast", "label_instance_share",
    "lambda_label_pair", "label_intra", "label_margin", "label_pos_margin", "lambda_label_proxy", "label_delta",
    "lambda_bank", "bank_temperature", "hash_on_codes", "rescue_collapsed_share", "vote_views", "small_vote_views",
    "view_train_pairs", "view_spread_pairs",
    "view_dominant_share", "epochs_stage3",
    "min_steps_stage3", "study_batch",
    "lambda_study_token", "lr", "weight_decay", "epochs_stage1", "epochs_stage2", "min_steps_stage1",
    "min_steps_stage2", "batch_size", "select_on", "stage1_after_pairing_minimum", "eval_every",
})  # fmt: skip
# About 20x the largest difference from torch measured (relaxed outputs, where tanh' is ~1 near 0): 5.5e-7 over the
# 3,600 image and text rows of the demo's three 16-bit fits; one row of the 3,600 fell within the margins.
SIGN_MARGIN = 1e-5
GATE_MARGIN = 1e-5
# Batches up to this many rows are coded here, larger ones by torch (float32, one BLAS call per layer): measured
# per batch on 2 busy cores (load average 10), numpy against torch on one thread: 1 row 12 vs 23 ms, 8 rows 86 vs
# 40 ms, 64 rows 324 vs 55 ms. A one-shot search codes one row; a busy service batches and loads torch once.
NUMPY_QUERY_ROWS = 4
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which MCMFHNet uses
IMAGE, TEXT = 0, 1  # positions in the fusion sequence (mcmfh.model.fusion)


# libm's erf element by element: a query has a few thousand GELU inputs (~0.3 ms this way), and importing
# scipy.special for it took 0.7 s of a one-shot search on 2 busy cores.
_ERF = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _ERF(x / np.sqrt(2.0)).astype(np.float64))  # the exact (erf) GELU, torch's default


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class NumpyHasher:
    """Relaxed codes of a fitted MCMFH model; ``load`` returns None for a model it cannot reproduce."""

    def __init__(self, cfg: dict[str, Any], weights: dict[str, np.ndarray], bits: int) -> None:
        self.cfg, self.bits = cfg, bits
        self.w = {k[4:]: v.astype(np.float64) for k, v in weights.items() if k.startswith("net.")}

    @classmethod
    def load(cls, run_dir: str | Path, weights_sha256: str | None = None) -> NumpyHasher | None:
        from safetensors.numpy import load

        run_dir = Path(run_dir)
        try:
            method = json.loads((run_dir / CONFIG_NAME).read_text(encoding="utf-8"))
            data = (run_dir / WEIGHTS_NAME).read_bytes()
        except (OSError, ValueError):
            return None  # the torch path says what is wrong with the run
        if method.get("method") not in SUPPORTED_METHODS:
            return None
        if weights_sha256 is not None and hashlib.sha256(data).hexdigest() != weights_sha256:
            return None  # a corrupt or replaced file: load_run names it
        try:
            weights = load(data)
            saved = json.loads(bytes(weights["meta.config_json"]).decode())
        except Exception:  # safetensors' own error types: the torch path reports them
            return None
        # The architecture part (``mcmfh.model.config.ModelConfig``); a model saved before the split has one flat dict.
        cfg = saved["model"] if set(saved) == {"model", "train"} else saved
        if set(cfg) - INFERENCE_FIELDS - UNREAD_FIELDS or INFERENCE_FIELDS - set(cfg):
            return None  # a newer option, or a model older than one this module reads: torch knows its defaults
        hasher = cls(cfg, weights, int(method["bits"]))
        have = {k for k in hasher.w if not k.startswith("study.")}
        return hasher if have == hasher.expected_keys() else None

    def expected_keys(self) -> set[str]:
        """Every tensor of the image and text paths for this config: the weights must hold exactly these."""
        keys = {"fusion.type_emb_2_d", "fusion.absent_2_d", "fusion.norm.weight", "fusion.norm.bias"}
        for m in ("img", "txt"):
            keys |= {f"pre_{m}.mean", f"pre_{m}.proj", f"dv_{m}.masks"}
            keys |= {f"{p}.{w}" for p in (f"dv_{m}.fc1", f"dv_{m}.fc2", f"hash_{m}.net.0", f"hash_{m}.net.3")
                     for w in ("weight", "bias")}  # fmt: skip
        for i in range(int(self.cfg["layers"])):
            pre = f"fusion.layers.{i}"
            keys |= {f"{pre}.{n}.{w}" for n in ("norm1", "norm2", "attn.out_proj") for w in ("weight", "bias")}
            keys |= {f"{pre}.attn.in_proj_weight", f"{pre}.attn.in_proj_bias"}
            if self.cfg["use_moe"]:
                keys |= {f"{pre}.ffn.{n}" for n in ("router.weight", "w1_e_d_h", "b1_e_h", "w2_e_h_d", "b2_e_d")}
            else:
                keys |= {f"{pre}.ffn.net.{j}.{w}" for j in (0, 3) for w in ("weight", "bias")}
        return keys

    # ---------------------------------------------------------------------------------------------- the network
    def relaxed(self, x: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(relaxed outputs (N, bits) float32 = tanh of the hash pre-activations, safe (N,) bool): a row is safe
        when its codes and expert choices cannot depend on float32 rounding (see the module docstring)."""
        m = "img" if modality == "images" else "txt"
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self.w[f"pre_{m}.mean"].shape[0]:
            raise ValueError(f"{modality} embeddings must be (N, {self.w[f'pre_{m}.mean'].shape[0]}), got {x.shape}")
        safe = np.ones(len(x), bool)
        token = self._dv(self._pre(x, m), m)
        fused = self._fuse(token, IMAGE if m == "img" else TEXT, safe)
        pre = self._linear(np.maximum(self._linear(fused, f"hash_{m}.net.0"), 0.0), f"hash_{m}.net.3")
        safe &= np.abs(pre).min(axis=1) >= SIGN_MARGIN
        return np.tanh(pre).astype(np.float32), safe

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _pre(self, x: np.ndarray, m: str) -> np.ndarray:
        proj = self.w[f"pre_{m}.proj"]
        x = x - self.w[f"pre_{m}.mean"]
        return x @ proj if proj.size else x

    def _dv(self, x: np.ndarray, m: str) -> np.ndarray:
        h = _gelu(self._linear(x, f"dv_{m}.fc1"))
        masks = self.w[f"dv_{m}.masks"]
        if masks.shape[0]:
            h = h * masks.mean(axis=0)  # fc2 is linear: the mean of the T masked passes is fc2 of the mean mask
        return self._linear(h, f"dv_{m}.fc2")

    def _fuse(self, token: np.ndarray, pos: int, safe: np.ndarray) -> np.ndarray:
        w = self.w
        own = token + w["fusion.type_emb_2_d"][pos]
        if self.cfg["single_rule"] == "alone":
            seq, read = own[:, None, :], 0
        else:
            other = np.broadcast_to(w["fusion.absent_2_d"][1 - pos] + w["fusion.type_emb_2_d"][1 - pos], own.shape)
            seq, read = np.stack([own, other] if pos == IMAGE else [other, own], axis=1), pos
        for i in range(int(self.cfg["layers"])):
            pre = f"fusion.layers.{i}"
            seq = seq + self._attention(self._norm(seq, f"{pre}.norm1"), f"{pre}.attn")
            seq = seq + self._ffn(self._norm(seq, f"{pre}.norm2"), f"{pre}.ffn", safe)
        return self._norm(seq, "fusion.norm")[:, read]

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + LAYER_NORM_EPS) * self.w[f"{name}.weight"] + self.w[f"{name}.bias"]

    def _attention(self, x: np.ndarray, name: str) -> np.ndarray:
        n, s, d = x.shape
        heads = int(self.cfg["heads"])
        qkv = x @ self.w[f"{name}.in_proj_weight"].T + self.w[f"{name}.in_proj_bias"]
        q, k, v = (t.reshape(n, s, heads, d // heads).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))
        att = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads))
        out = (att @ v).transpose(0, 2, 1, 3).reshape(n, s, d)
        return out @ self.w[f"{name}.out_proj.weight"].T + self.w[f"{name}.out_proj.bias"]

    def _ffn(self, x: np.ndarray, name: str, safe: np.ndarray) -> np.ndarray:
        w = self.w
        if not self.cfg["use_moe"]:
            return self._linear(_gelu(self._linear(x, f"{name}.net.0")), f"{name}.net.3")
        n, s, d = x.shape
        flat = x.reshape(-1, d)
        probs = _softmax(flat @ w[f"{name}.router.weight"].T)
        k = int(self.cfg["top_k"])
        order = np.argsort(-probs, axis=1, kind="stable")
        top = order[:, :k]
        if k < probs.shape[1]:  # the k-th and (k+1)-th expert nearly tied: float32 could pick the other one
            ranked = np.take_along_axis(probs, order, axis=1)
            safe &= (ranked[:, k - 1] - ranked[:, k] >= GATE_MARGIN).reshape(n, s).all(axis=1)
        topv = np.take_along_axis(probs, top, axis=1)
        sparse = np.zeros_like(probs)
        np.put_along_axis(sparse, top, topv / topv.sum(axis=1, keepdims=True), axis=1)
        gate = {"dense": probs, "sparse": sparse}.get(self.cfg["gate"])
        if gate is None:
            a = float(self.cfg["gate_blend"])
            gate = a * probs + (1.0 - a) * sparse
        h = _gelu(np.einsum("nd,edh->neh", flat, w[f"{name}.w1_e_d_h"]) + w[f"{name}.b1_e_h"])
        y = np.einsum("neh,ehd->ned", h, w[f"{name}.w2_e_h_d"]) + w[f"{name}.b2_e_d"]
        return np.einsum("ne,ned->nd", gate, y).reshape(n, s, d)
