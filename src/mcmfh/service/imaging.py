"""Turn untrusted bytes (an upload or an archive file) into an RGB image, safely.

The type comes from the bytes (PNG/JPEG magic, ``DICM`` at offset 128), never from a file name or a declared
content type, and the pixel count is checked from the header before any pixel is decoded, so a small file that
claims a huge image (a decompression bomb) is refused without allocating it.

Minimal DICOM reader (the project has no shared image loader yet): first frame, rescale slope/intercept, the first
window centre/width when present (else min-max), MONOCHROME1 inverted, to 8-bit RGB.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from mcmfh.errors import MCMFHError

ImageKind = Literal["png", "jpeg", "dicom"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}


class ImageRejected(MCMFHError):
    """Bytes that are not an acceptable image; ``status`` is the HTTP status the service answers with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> ImageKind | None:
    """The image type the bytes really are, or None."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return "dicom"
    return None


def _check_pixels(width: int, height: int, frames: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image has an empty size ({width}x{height})", 422)
    if width * height * frames > max_pixels:
        raise ImageRejected(
            f"image is {width}x{height}" + (f"x{frames} frames" if frames > 1 else "") + f", over the limit of "
            f"{max_pixels} pixels",
            413,
        )


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode PNG, JPEG or DICOM bytes into an RGB image of at most ``max_pixels`` pixels."""
    kind = sniff(data)
    if kind is None:
        raise ImageRejected("file is not a PNG, JPEG or DICOM image (checked from its bytes)", 415)
    if kind == "dicom":
        return _decode_dicom(data, max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: make it an error like the rest.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]])
            _check_pixels(image.width, image.height, 1, max_pixels)
            image.load()  # first frame only: an animated PNG is searched by its first frame
            return _to_rgb(image)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected(f"image refused as a decompression bomb: {e}", 413) from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's ways of saying "corrupt or truncated"
        raise ImageRejected(f"{kind.upper()} file could not be decoded: {e}", 422) from None


def _first_number(value) -> float | None:
    """A DICOM window attribute may hold several values: the first one is the default window."""
    if isinstance(value, str | bytes):
        value = [value]
    try:
        return float(value[0]) if hasattr(value, "__getitem__") else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low) * 255.0


def _window(values: np.ndarray, ds) -> np.ndarray:
    """Map modality values to 0..255 with the file's first VOI window, else its min-max range."""
    center, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    if center is None or width is None or width < 1:
        return _min_max(values)
    low, high = center - width / 2, center + width / 2
    return np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with 16-bit and float greys (common in medical PNGs) stretched to 8 bits instead of clipped."""
    if image.mode.startswith(("I", "F")):
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.round(_min_max(values)).astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")


def _decode_dicom(data: bytes, max_pixels: int) -> Image.Image:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError) as e:
        raise ImageRejected(f"DICOM file could not be read: {e}", 422) from None
    if "PixelData" not in ds:
        raise ImageRejected("DICOM file has no pixel data", 422)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    _check_pixels(cols, rows, frames, max_pixels)
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as e:  # pydicom raises many types: missing decoder plugin, bad lengths, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageRejected(f"DICOM pixel data could not be decoded (transfer syntax {syntax}): {e}", 415) from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if samples == 1:
        values = pixels.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(
            ds.get("RescaleIntercept", 0) or 0
        )
        gray = _window(values, ds)
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            gray = 255.0 - gray  # MONOCHROME1: low values are white
        return Image.fromarray(np.round(gray).astype(np.uint8), mode="L").convert("RGB")
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ImageRejected(f"DICOM colour image has shape {pixels.shape}, expected (rows, columns, 3)", 415)
    if pixels.dtype != np.uint8:
        pixels = np.round(_min_max(pixels.astype(np.float64))).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def read_image_file(path: Path, max_pixels: int) -> Image.Image:
    """Decode an archive image file with the same checks as an upload."""
    return decode_image(path.read_bytes(), max_pixels)


def to_png(image: Image.Image, max_side: int | None = None) -> bytes:
    """PNG bytes of ``image``, shrunk (aspect kept) so its longer side is at most ``max_side``."""
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
