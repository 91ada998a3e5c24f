"""The bicubic resize-and-crop kernel against Pillow, value for value."""

from __future__ import annotations

import numpy as np
import PIL
import pytest
from PIL import Image

from mcmfh.encoders.resample import bicubic_coeffs, resize_crop_normalise, vertical_first

PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13  # the pass order this kernel follows


def _pillow(image: np.ndarray, size, box, mean=127.0, scale=128.0) -> np.ndarray:
    ref = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC).crop(box))
    out = np.empty((3, box[3] - box[1], box[2] - box[0]), np.float32)
    np.subtract(ref.transpose(2, 0, 1), np.float32(mean), out=out, dtype=np.float32)
    np.divide(out, np.float32(scale), out=out)
    return out


def _ours(image: np.ndarray, size, box, mean=127.0, scale=128.0) -> np.ndarray:
    out = np.empty((3, box[3] - box[1], box[2] - box[0]), np.float32)
    resize_crop_normalise(image, size, box, mean, scale, out)
    return out


def _cases(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(1, 400, 2))
        # Random noise, plus smooth ramps, which sit near rounding boundaries more often than noise does.
        if i % 2:
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            ramp = np.add.outer(np.arange(h), np.arange(w))[..., None] * np.array([1, 3, 7])
            image = (ramp % 256).astype(np.uint8)
        nw, nh = (int(v) for v in rng.integers(1, 400, 2))
        if i % 5 == 0:
            nh = h  # one pass only
        if i % 7 == 0:
            nw = w
        if i % 11 == 0:
            h = max(h, 3 * w)  # tall images shrunk in height: Pillow 13's vertical-first order
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            nw, nh = max(1, w - 1), max(1, h // 3)
        left, top = int(rng.integers(0, nw)), int(rng.integers(0, nh))
        box = (left, top, int(rng.integers(left + 1, nw + 1)), int(rng.integers(top + 1, nh + 1)))
        yield image, (nw, nh), box


def test_bit_identical_to_pillow_on_random_sizes_and_crops():
    checked = 0
    for image, size, box in _cases(160):
        if not PILLOW_13 and vertical_first(image.shape[1], image.shape[0], *size):
            continue  # older Pillow always runs the horizontal pass first
        assert np.array_equal(_ours(image, size, box), _pillow(image, size, box)), (image.shape, size, box)
        checked += 1
    assert checked > 140


def test_whole_image_and_other_normalisation():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    for size in [(131, 97), (50, 40), (300, 220)]:
        box = (0, 0, *size)
        assert np.array_equal(_ours(image, size, box, 0.0, 255.0), _pillow(image, size, box, 0.0, 255.0))


def test_pass_order_is_visible_and_followed():
    """The rounding between passes makes the order show: the two orders differ on this image, and the kernel gives
    the vertical-first result exactly when the height shrinks by more than twice the width's pixels."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (300, 90, 3), dtype=np.uint8)
    size, box = (80, 60), (0, 0, 80, 60)
    assert vertical_first(90, 300, *size) and not vertical_first(90, 300, 30, 200)
    im = Image.fromarray(image)
    h_first = np.asarray(im.resize((80, 300), Image.BICUBIC).resize(size, Image.BICUBIC))
    v_first = np.asarray(im.resize((90, 60), Image.BICUBIC).resize(size, Image.BICUBIC))
    assert not np.array_equal(h_first, v_first)
    got = _ours(image, size, box, 0.0, 1.0).transpose(1, 2, 0)
    assert np.array_equal(got, v_first.astype(np.float32))


def test_coefficients_sum_to_one_in_fixed_point():
    for n_in, n_out in [(512, 256), (115, 256), (1024, 293), (7, 1)]:
        bounds, k = bicubic_coeffs(n_in, n_out)
        assert bounds.shape == (n_out, 2) and (bounds[:, 0] >= 0).all()
        assert (bounds.sum(1) <= n_in).all()
        # Each row's weights are rounded to 22 fraction bits, so they sum to 1 within one unit per tap.
        assert np.abs(k.sum(1).astype(np.int64) - (1 << 22)).max() <= k.shape[1]
    with pytest.raises(ValueError):
        bicubic_coeffs(0, 3)


def test_bad_crop_box_is_refused():
    image = np.zeros((10, 10, 3), np.uint8)
    out = np.empty((3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="crop box"):
        resize_crop_normalise(image, (8, 8), (4, 4, 9, 9), 0.0, 1.0, out)
