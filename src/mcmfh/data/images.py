"""Read any supported medical image file as an 8-bit RGB PIL image.

The format is detected from the file's bytes, never its name: PNG and JPEG (and the other formats Pillow reads) by
their signature, DICOM by the ``DICM`` marker at offset 128 or, for files without the preamble, by a pydicom parse.
A pixel-count limit guards against decompression bombs (a small file that decodes to gigabytes). Every failure is a
``DataError`` naming the file, never a header value (DICOM headers hold patient identifiers).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mcmfh.data import dicom
from mcmfh.errors import DataError

# 50 megapixels: larger than any radiograph or whole CT slice, far below what would exhaust memory in a batch.
DEFAULT_MAX_PIXELS = 50_000_000
_DICM_OFFSET = 128


def pixel_limit(max_pixels: int | None = None) -> int:
    """``max_pixels``, else $MCMFH_MAX_IMAGE_PIXELS, else ``DEFAULT_MAX_PIXELS``."""
    return int(os.environ.get("MCMFH_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS)) if max_pixels is None else max_pixels


def has_dicm_marker(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(_DICM_OFFSET + 4)
    return head[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM"


def _stat(path: Path) -> None:
    try:
        if not path.is_file():
            raise DataError(f"{path}: image file not found")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: image file is empty")
        with open(path, "rb"):  # readable by us: found here, at load time, not as a failure half-way into an add
            pass
    except PermissionError as e:
        raise DataError(f"{path}: image file is not readable ({e.strerror}); check its permissions") from None


def _open_pil(path: Path | str, max_pixels: int, source: Path | io.BytesIO | None = None) -> Image.Image | None:
    """Open lazily (header only); None when Pillow does not recognise the bytes. ``path`` names the image in
    messages; ``source`` (default: ``path``) is what is read."""
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns/raises at its global limit; ours below is per call.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path if source is None else source)
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError:
        raise DataError(f"{path}: image is over Pillow's decompression-bomb limit") from None
    except OSError as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise DataError(f"{path}: image has {w}x{h} pixels, over the limit of {max_pixels}")
    return img


def check_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> None:
    """Cheap load-time check: the file exists, is non-empty and its header parses as a supported image.

    The full decode happens at encode time (``load_image``); a truncated body is caught there.
    """
    path, limit = Path(path), pixel_limit(max_pixels)
    _stat(path)
    if has_dicm_marker(path):
        dicom.check_dicom(path, limit)
        return
    img = _open_pil(path, limit)
    if img is not None:
        img.close()
        return
    if dicom.is_dicom_file(path):
        dicom.check_dicom(path, limit)
        return
    raise DataError(f"{path}: not a supported image (expected PNG, JPEG or DICOM bytes)")


def load_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB image (DICOM through ``mcmfh.data.dicom.dicom_to_rgb``)."""
    path, limit = Path(path), pixel_limit(max_pixels)
    _stat(path)
    if has_dicm_marker(path):
        return dicom.dicom_to_rgb(path, limit)
    img = _open_pil(path, limit)
    if img is None:
        if dicom.is_dicom_file(path):
            return dicom.dicom_to_rgb(path, limit)
        raise DataError(f"{path}: not a supported image (expected PNG, JPEG or DICOM bytes)")
    try:
        with img:
            img.load()
            return _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt body
        raise DataError(f"{path}: corrupt image data ({e})") from None


def load_image_bytes(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image | None:
    """Decode in-memory PNG/JPEG (any format Pillow reads) bytes to 8-bit RGB exactly as ``load_image`` decodes the
    same bytes from a file, without writing one; None when Pillow does not recognise them (e.g. DICOM, which
    ``load_image`` reads from a file). ``name`` stands for the image in error messages."""
    img = _open_pil(name, pixel_limit(max_pixels), io.BytesIO(data))
    if img is None:
        return None
    try:
        img.load()
        # No file to close: the decoded image is returned as it is when it is already RGB (no copy).
        return img if img.mode == "RGB" else _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt body
        raise DataError(f"{name}: corrupt image data ({e})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit grey PNGs (common for radiographs): stretch the used range to 8 bits instead of clipping at 255.
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.round(a * 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black: the background of medical images is black, so a transparent border stays dark.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")
