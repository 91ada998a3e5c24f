import numpy as np
import pytest
from PIL import Image

from mcmfh.encoders import available_encoders, get_encoder
from mcmfh.errors import DataError, MCMFHError


def _png(path, seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


def test_registry_lists_builtins():
    assert {"tiny", "offline", "biomedclip"} <= set(available_encoders())
    with pytest.raises(MCMFHError, match="unknown encoder 'nope'"):
        get_encoder("nope")


def test_tiny_is_deterministic_normalised_and_seeded(tmp_path):
    paths = [_png(tmp_path / f"{i}.png", i) for i in range(5)]
    a, b = get_encoder("tiny"), get_encoder("tiny")
    ia, ib = a.encode_images(paths, batch_size=2), b.encode_images(paths, batch_size=3)
    assert ia.shape == (5, 32) and ia.dtype == np.float32
    np.testing.assert_allclose(ia, ib, atol=1e-6)  # batch size does not change results
    np.testing.assert_allclose(np.linalg.norm(ia, axis=1), 1, atol=1e-5)
    assert not np.allclose(ia[0], ia[1])
    other = get_encoder("tiny", seed=1)
    assert other.version != a.version
    assert not np.allclose(other.encode_images(paths[:1]), ia[:1])


def test_tiny_texts():
    enc = get_encoder("tiny", text_dim=16)
    texts = ["a chest x-ray", "A chest X-ray!", "knee mri", ""]
    t = enc.encode_texts(texts)
    assert t.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)  # even the empty text
    np.testing.assert_allclose(t[0], t[1], atol=1e-6)  # lowercased word tokens
    assert t[0] @ t[2] < 0.99
    np.testing.assert_array_equal(t, get_encoder("tiny", text_dim=16).encode_texts(texts))


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        get_encoder("tiny").encode_images([bad])


def test_accepts_pil_images_and_describes_itself():
    enc = get_encoder("tiny", image_dim=8)
    out = enc.encode_images([Image.new("L", (20, 20), 128)])
    assert out.shape == (1, 8)
    d = enc.describe()
    assert d["encoder"] == "tiny" and d["image_dim"] == 8 and "image" in d["preprocessing"]
