"""continuous-mcmfh: same fit as mcmfh, float fused tokens out, ranked by cosine, and its bytes per item."""

from __future__ import annotations

import numpy as np

from conftest import make_features
from mcmfh.evaluation.evaluate import evaluate_method
from mcmfh.factory import create_method, load_method
from tiny_config import TINY_MCMFH


def test_continuous_mcmfh_is_the_fused_space_of_the_same_model(tmp_path) -> None:
    fs = make_features(n=200, di=24, dt=16, n_labels=5, seed=0)
    train, dev, test = fs.splits("train"), fs.splits("dev"), fs.splits("test")
    cont = create_method("continuous-mcmfh", bits=16, seed=0, **TINY_MCMFH)
    hashed = create_method("mcmfh", bits=16, seed=0, **TINY_MCMFH)
    cont.fit(train, dev)
    hashed.fit(train, dev)
    assert cont.continuous and not hashed.continuous
    img, txt = cont.encode_images(test.image), cont.encode_texts(test.text)
    assert img.shape == (len(test), 32) and txt.shape == (len(test), 32) and img.dtype == np.float32
    assert cont.encode_texts(test.text[:0]).shape == (0, 32)
    # Same fit: hashing the continuous model's tokens gives exactly mcmfh's codes.
    assert cont.net is not None and hashed.net is not None
    import torch

    codes = cont.net.hash_img.codes(torch.from_numpy(img)).numpy()
    assert np.array_equal(codes, hashed.encode_images(test.image))
    m = evaluate_method(cont, fs, ("test",), ("train", "dev"))
    assert m["continuous"] and m["bytes_per_item"] == 4 * 32  # float32 x width, not x bits
    assert m["i2t_map_all"] > m["i2t_chance_map"] and m["t2i_map_all"] > m["t2i_chance_map"]
    cont.save(tmp_path / "run")
    again = load_method(tmp_path / "run")
    assert np.array_equal(again.encode_texts(test.text), txt)


def test_relaxed_ceiling_is_tanh_of_what_sign_codes() -> None:
    fs = make_features(n=200, di=24, dt=16, n_labels=5, seed=1)
    train, dev, test = fs.splits("train"), fs.splits("dev"), fs.splits("test")
    relaxed = create_method("continuous-mcmfh-relaxed", bits=32, seed=0, **TINY_MCMFH)
    hashed = create_method("mcmfh", bits=32, seed=0, **TINY_MCMFH)
    relaxed.fit(train, dev)
    hashed.fit(train, dev)
    soft = relaxed.encode_texts(test.text)
    assert relaxed.continuous and soft.shape == (len(test), 32) and soft.dtype == np.float32
    assert np.all(np.abs(soft) < 1) and np.array_equal(soft > 0, hashed.encode_texts(test.text))
    m = evaluate_method(relaxed, fs, ("test",), ("train", "dev"))
    assert m["bytes_per_item"] == 4 * 32
