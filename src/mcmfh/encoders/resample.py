"""Bicubic resize and centre crop of an 8-bit RGB image, bit-identical to Pillow's ``resize(BICUBIC).crop(box)``.

Pillow resamples in two separable passes with fixed-point coefficients (22 fraction bits) and rounds to 8 bits
between them, so the pass order shows in the output; this follows Pillow 13's order (``vertical_first``). Every
output pixel depends only on its own row of coefficients, so computing just the pixels inside the crop gives
exactly Pillow's values for them (unlike resizing a crop box, which changes the coefficients). Both passes run
along the slow axis (the horizontal one on the transposed rows), so the inner loop is a contiguous row the compiler
vectorises; Pillow's loops run over a handful of taps per pixel.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2
_SUPPORT = 2.0  # bicubic filter radius at scale 1
_A = -0.5  # Pillow's bicubic "a"


@numba.njit(cache=True)
def _bicubic(x: float) -> float:
    # The same expression, in the same order, as Pillow's bicubic_filter (double precision; numba, like C without
    # -ffast-math, does not fuse the multiply-adds).
    x = abs(x)
    if x < 1.0:
        return ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * _A
    return 0.0


@numba.njit(cache=True)
def _coeff_table(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int64)
    k = np.zeros((out_size, ksize), np.int32)
    w = np.zeros(ksize, np.float64)
    ss = 1.0 / filterscale
    one = float(1 << PRECISION_BITS)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ww = 0.0
        for x in range(xmax):
            w[x] = _bicubic((x + xmin - center + 0.5) * ss)
            ww += w[x]
        for x in range(xmax):
            v = w[x] / ww if ww != 0.0 else w[x]
            k[xx, x] = int(-0.5 + v * one) if v < 0 else int(0.5 + v * one)
        bounds[xx, 0] = xmin
        bounds[xx, 1] = xmax
    return bounds, k


@functools.lru_cache(maxsize=512)
def bicubic_coeffs(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for a whole-image box (cached: archives and
    queries repeat a few image sizes).

    Returns ``bounds`` (out_size, 2) int64 of (first input index, number of taps) and ``k`` (out_size, ksize) int32
    fixed-point weights (zero past each row's taps). Treat both as read-only."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got {in_size} -> {out_size}")
    return _coeff_table(in_size, out_size)


@numba.njit(cache=True, nogil=True)
def _pass_rows(src: np.ndarray, bounds: np.ndarray, k: np.ndarray, first: int, n: int, base: int) -> np.ndarray:
    """Output rows first..first+n of resampling ``src`` (rows, row_len) uint8 along axis 0; ``base`` is the input
    row that ``src[0]`` stands for. Rounded and clipped to uint8 as Pillow does between its passes."""
    row_len = src.shape[1]
    out = np.empty((n, row_len), np.uint8)
    acc = np.empty(row_len, np.int32)
    half = np.int32(1 << (PRECISION_BITS - 1))
    for r in range(n):
        lo, taps = bounds[first + r, 0] - base, bounds[first + r, 1]
        acc[:] = half
        for t in range(taps):
            w = k[first + r, t]
            line = src[lo + t]
            for j in range(row_len):
                acc[j] += w * np.int32(line[j])  # < 2**31: 255 * sum|k| stays under 2**30
        for j in range(row_len):
            out[r, j] = min(max(acc[j] >> PRECISION_BITS, 0), 255)
    return out


@numba.njit(cache=True, nogil=True)
def _swap_axes(src: np.ndarray) -> np.ndarray:
    """(a, b, 3) -> contiguous (b, a, 3); numpy's transposing copy of 3-byte pixels is ~10x slower."""
    a, b = src.shape[0], src.shape[1]
    out = np.empty((b, a, 3), np.uint8)
    for i in range(a):
        for j in range(b):
            for c in range(3):
                out[j, i, c] = src[i, j, c]
    return out


def resize_crop_normalise(
    image: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int], mean: float, scale: float,
    out: np.ndarray,
) -> None:  # fmt: skip
    """Write ``(resize(image, size, BICUBIC).crop(box) - mean) / scale`` as (3, h, w) float32 into ``out``.

    ``image`` is (H, W, 3) uint8; ``size`` is (width, height) as in PIL; ``box`` is (left, top, right, bottom)
    inside the resized image. Bit-identical to Pillow 13 followed by numpy's float32 normalisation (tested), and so
    the same whichever Pillow is installed."""
    h_in, w_in = image.shape[:2]
    (nw, nh), (left, top, right, bottom) = size, box
    if not (0 <= left < right <= nw and 0 <= top < bottom <= nh):
        raise ValueError(f"crop box {box} is not inside the resized size {size}")
    if vertical_first(w_in, h_in, nw, nh):
        rows = _horizontal(_vertical(image, h_in, nh, top, bottom), w_in, nw, left, right)
    else:
        base, end = _input_rows(h_in, nh, top, bottom)
        rows = _horizontal(image[base:end], w_in, nw, left, right)
        rows = _vertical(rows, h_in, nh, top, bottom, base=base)
    np.subtract(rows.transpose(2, 0, 1), np.float32(mean), out=out, dtype=np.float32)
    np.divide(out, np.float32(scale), out=out)


def vertical_first(w_in: int, h_in: int, w_out: int, h_out: int) -> bool:
    """Pillow 13's pass order (Resample.c): vertical first when the height shrinks by more than twice as many
    pixels as the width. The rounding between passes makes the order visible in the output."""
    return h_in - h_out > 0 and h_in - h_out > (w_in - w_out) * 2


def _input_rows(h_in: int, h_out: int, top: int, bottom: int) -> tuple[int, int]:
    """The input rows [start, end) that output rows top..bottom read (the same rows when the height is unchanged)."""
    if h_out == h_in:
        return top, bottom
    b, _ = bicubic_coeffs(h_in, h_out)
    return int(b[top, 0]), int(b[bottom - 1, 0] + b[bottom - 1, 1])


def _vertical(rows: np.ndarray, h_in: int, h_out: int, top: int, bottom: int, base: int = 0) -> np.ndarray:
    """Output rows top..bottom of the vertical pass; ``rows[0]`` is input row ``base``."""
    if h_out == h_in:
        return rows[top - base : bottom - base]
    b, k = bicubic_coeffs(h_in, h_out)
    n, width = bottom - top, rows.shape[1]
    flat = np.ascontiguousarray(rows).reshape(rows.shape[0], -1)
    return _pass_rows(flat, b, k, top, n, base).reshape(n, width, 3)


def _horizontal(rows: np.ndarray, w_in: int, w_out: int, left: int, right: int) -> np.ndarray:
    """Output columns left..right of the horizontal pass, run along axis 0 of the transposed rows."""
    if w_out == w_in:
        return rows[:, left:right]
    b, k = bicubic_coeffs(w_in, w_out)
    n, height = right - left, rows.shape[0]
    t = _swap_axes(rows).reshape(w_in, -1)
    return _swap_axes(_pass_rows(t, b, k, left, n, 0).reshape(n, height, 3))
