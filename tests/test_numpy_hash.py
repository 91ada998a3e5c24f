"""The numpy query path (mcmfh.numpy_hash) gives torch's codes exactly, for every MCMFH family member and the
forward-pass options it reads; models it cannot reproduce are left to torch; a CLI text search imports no torch,
numba or transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_features
from mcmfh.factory import available_methods, create_method, method_class
from mcmfh.model.config import MCMFHConfig
from mcmfh.model.mcmfh import MCMFH
from mcmfh.numpy_hash import INFERENCE_FIELDS, SUPPORTED_METHODS, UNREAD_FIELDS, NumpyHasher
from tiny_config import TINY_MCMFH

# One fit is enough to compare forward passes: what is compared is the network, not how well it learned.
QUICK = {**TINY_MCMFH, "epochs_stage1": 1, "epochs_stage2": 1, "study_head": False}
VARIANTS = [
    *[(name, {}) for name in SUPPORTED_METHODS],
    ("mcmfh", {"gate": "dense"}),
    ("mcmfh", {"gate": "sparse", "experts": 3, "top_k": 1}),
    ("mcmfh", {"single_rule": "alone"}),
    ("mcmfh", {"whiten_dim": 8, "center": False}),
    ("mcmfh", {"dv_votes": 3, "layers": 1, "heads": 2}),
    ("mcmfh", {"capacity": "auto", "dv_hidden": 256, "width": 96, "ffn_hidden": 96}),  # resolved to small widths
]


def _fit(tmp_path: Path, name: str, options: dict) -> tuple:
    fs = make_features(n=120, seed=1)
    method = create_method(name, bits=16, seed=0, **{**QUICK, **options})
    method.fit(fs.splits("train"), fs.splits("dev"))
    method.save(tmp_path)
    return method, fs


IDS = [f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS]


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_numpy_codes_equal_torch_codes(tmp_path: Path, name: str, options: dict) -> None:
    method, fs = _fit(tmp_path, name, options)
    hasher = NumpyHasher.load(tmp_path)
    assert hasher is not None, f"{name} {options}: the numpy path refused a model it should reproduce"
    rng = np.random.default_rng(0)
    for modality, x in (("images", fs.image), ("texts", fs.text)):
        # the stored rows plus off-distribution ones (larger norms push pre-activations further from 0 and back)
        rows = np.concatenate([x, 3.0 * rng.normal(size=(40, x.shape[1]))]).astype(np.float32)
        out, safe = hasher.relaxed(rows, modality)
        torch_out = method.relaxed_images(rows) if modality == "images" else method.relaxed_texts(rows)
        assert safe.mean() > 0.9  # the margins mark only near-ties, not whole batches
        np.testing.assert_array_equal(out[safe] > 0, torch_out[safe] > 0)
        encode = method.encode_images if modality == "images" else method.encode_texts
        np.testing.assert_array_equal(out[safe] > 0, encode(rows)[safe])
        np.testing.assert_allclose(out, torch_out, atol=1e-5)


def test_a_model_with_an_unknown_option_or_tensor_is_left_to_torch(tmp_path: Path) -> None:
    from safetensors.numpy import load, save

    _fit(tmp_path, "mcmfh", {})
    assert NumpyHasher.load(tmp_path) is not None
    weights = tmp_path / "weights.safetensors"
    state = load(weights.read_bytes())
    cfg = json.loads(bytes(state["meta.config_json"]).decode())
    cfg = {**cfg, "model": {**cfg["model"], "new_option": 1}}
    changed = {**state, "meta.config_json": np.frombuffer(json.dumps(cfg).encode(), np.uint8)}
    weights.write_bytes(save(changed))
    assert NumpyHasher.load(tmp_path) is None  # a new option may change the forward pass
    weights.write_bytes(save({**state, "net.extra.weight": np.zeros(2, np.float32)}))
    assert NumpyHasher.load(tmp_path) is None  # weights it does not know what to do with
    weights.write_bytes(save(state))
    assert NumpyHasher.load(tmp_path, weights_sha256="0" * 64) is None  # a replaced file: load_run names it


def test_every_config_field_is_classified_and_every_family_member_covered() -> None:
    """A new MCMFHConfig field or MCMFH subclass must be placed here, or queries silently fall back to torch."""
    model_fields = set(MCMFHConfig().model_fields())
    assert model_fields == INFERENCE_FIELDS | UNREAD_FIELDS and not INFERENCE_FIELDS & UNREAD_FIELDS
    family = {n for n in available_methods() if issubclass(method_class(n), MCMFH)}
    continuous = {n for n in family if method_class(n).continuous}  # real-valued outputs: not hashed
    assert family - continuous == set(SUPPORTED_METHODS)


def test_a_cli_text_search_imports_no_torch_numba_or_transformers(tmp_path: Path) -> None:
    from data_fixtures import tiny_archive
    from mcmfh.archive import Archive
    from mcmfh.training.runs import train_run

    pieces = tiny_archive(tmp_path / "a")
    run = train_run(tmp_path / "a" / "features", "mcmfh", 16, 0, tmp_path / "run", QUICK)
    Archive.build(run, pieces["fs"], tmp_path / "idx").close()
    code = (
        "import sys\nfrom mcmfh.cli import main\n"
        f"sys.argv = ['mcmfh', 'search', {str(tmp_path / 'idx')!r}, '--text', 'a scan of the chest', '--k', '3']\n"
        "rc = main()\nprint(rc, *sorted(m for m in ('torch', 'numba', 'transformers') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 result(s)" in r.stdout and r.stdout.strip().splitlines()[-1] == "0"  # none of the three loaded
