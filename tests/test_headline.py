"""Every headline figure is order-independent: permuting the database (randomly, or sorted by label) leaves it
unchanged, while the stable-order figures can move; code health flags codes that collapsed onto a few buckets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conftest import make_features
from mcmfh.evaluation.code_health import code_health, is_collapsed, method_code_health
from mcmfh.evaluation.evaluate import evaluate_method
from mcmfh.factory import create_method
from mcmfh.features import FeatureSet
from mcmfh.method import HashMethod

HEADLINE = ("map", "map_all_tie_aware", "map_50_tie_aware", "precision_radius", "chance_map")


class LabelCodes(HashMethod):
    """Test double of a collapsed model: every item's code is its first label's index (a few buckets only)."""

    name = "label-codes"

    def fit(self, train: FeatureSet, dev: FeatureSet | None = None) -> dict[str, Any]:
        return {}

    def _codes(self, x: np.ndarray) -> np.ndarray:
        bucket = (x[:, 0] > 0).astype(int)  # 2 buckets, loosely tied to the labels through feature 0
        return np.repeat(bucket[:, None], self.bits, axis=1).astype(bool)

    encode_images = encode_texts = _codes

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        pass


def _permuted(features: FeatureSet, order: np.ndarray) -> FeatureSet:
    return features.subset(order)


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    out = {f"{d}_{k}": m[f"{d}_{k}"] for d in ("i2t", "t2i") for k in HEADLINE}
    for d in ("i2t", "t2i"):
        out[f"{d}_p_at_k"] = m[d]["p_at_k"]
        out[f"{d}_pr"] = m[d]["pr_curve"]["precision"] + m[d]["pr_curve"]["recall"]
    health = m["code_health"]
    if health is not None:
        out["health"] = {mod: dict(health[mod]) for mod in ("image", "text")}
    return out


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key, va in a.items():
        if key == "health":
            for mod in va:
                for k in va[mod]:
                    assert va[mod][k] == pytest.approx(b[key][mod][k], abs=1e-9), (key, mod, k)
        else:
            assert va == pytest.approx(b[key], abs=1e-9), key


@pytest.fixture(scope="module")
def feats():
    return make_features(n=300, di=24, dt=16, n_labels=5, seed=2)


@pytest.mark.parametrize("name", ["cca-itq", "label-codes"])
def test_headline_figures_do_not_depend_on_database_order(feats, name):
    method = LabelCodes(16, 0) if name == "label-codes" else create_method(name, 16, 0)
    method.fit(feats.splits("train"), feats.splits("dev"))
    base = evaluate_method(method, feats)
    rng = np.random.default_rng(0)
    by_label = np.lexsort(feats.labels.T[::-1])  # rows grouped by label, as real exports often are
    stable_moved = False
    for order in (rng.permutation(len(feats)), by_label, by_label[::-1]):
        other = evaluate_method(method, _permuted(feats, order))
        _assert_same(_headline(base), _headline(other))
        stable_moved |= abs(other["i2t_map_all"] - base["i2t_map_all"]) > 1e-6
    if name == "label-codes":
        assert stable_moved  # the trap exists: the stable order rewards a label-sorted database
        assert base["code_health"]["collapsed"]
    assert base["i2t_map"] == base["i2t_map_all_tie_aware"]


def test_code_health_figures():
    rng = np.random.default_rng(0)
    healthy = rng.random((4096, 16)) < 0.5
    h = code_health(healthy)
    assert h["distinct"] > 3000 and h["largest_bucket_share"] < 0.01
    assert 11.0 < h["effective_bits"] <= h["effective_bits_ceiling"] == pytest.approx(12.0)
    assert h["mean_abs_bit_correlation"] < 0.05 and h["mean_bit_imbalance"] < 0.05
    assert not is_collapsed(h)
    # 7 codes over 588 items, as in the held-out failure: collapsed.
    few = np.unpackbits(np.array([[c] for c in rng.integers(0, 7, 588)], np.uint8), axis=1)[:, -3:]
    collapsed = np.concatenate([few, np.zeros((588, 13), np.uint8)], axis=1).astype(bool)
    hc = code_health(collapsed)
    assert hc["distinct"] == 7 and hc["effective_bits"] == pytest.approx(np.log2(7), abs=0.1)
    assert is_collapsed(hc)
    # Duplicated bits: perfectly correlated, entropy unchanged by the copies.
    dup = np.repeat(healthy[:, :4], 4, axis=1)
    hd = code_health(dup)
    assert hd["effective_bits"] == pytest.approx(4.0, abs=0.01) and hd["mean_abs_bit_correlation"] > 0.15
    both = method_code_health(healthy, collapsed[: 4096 % 588 or 588])
    assert both["collapsed"] and not is_collapsed(both["image"])
    # Packed codes give the same figures as bool codes.
    assert code_health(np.packbits(healthy, axis=1), 16)["effective_bits"] == h["effective_bits"]


def test_identical_inputs_lower_the_health_ceiling():
    """Many images sharing one caption must share a code: that is the data, not a collapse."""
    rng = np.random.default_rng(1)
    captions = rng.normal(size=(12, 8)).astype(np.float32)
    group = rng.integers(0, 12, 600)
    inputs = captions[group]
    codes = (rng.random((12, 16)) < 0.5)[group]  # one code per distinct caption: as spread as the data allows
    plain = code_health(codes)
    assert is_collapsed(plain)  # judged against log2(600) items it looks collapsed ...
    aware = code_health(codes, inputs=inputs)
    assert aware["effective_bits_ceiling"] == pytest.approx(aware["effective_bits"], abs=1e-6)
    assert not is_collapsed(aware)  # ... against its 12 distinct inputs it is not
    one = code_health(np.zeros((600, 16), bool), inputs=inputs)
    assert is_collapsed(one)  # one code for 12 different captions still is
