"""Turn untrusted upload bytes (and archive files) into the RGB image the encoders expect, safely.

Decoding is the project's shared loader, ``mcmfh.data.images`` (PNG/JPEG through Pillow, from memory; DICOM with
rescale, VOI window, MONOCHROME1 inversion, middle frame), so a query image is rendered exactly as the archive
was when it was indexed. This module adds what only uploads need: the type is taken from the bytes (PNG/JPEG
signature, ``DICM`` at offset 128), never from a file name or declared content type, and failures become HTTP
statuses (413 for images over the pixel limit or decompression bombs, 415 for other types, 422 for corrupt data).
The loader checks the pixel count from the header before decoding, so a tiny file claiming a huge image is
refused without allocating it.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Literal

from PIL import Image

from mcmfh.data.images import load_image, load_image_bytes
from mcmfh.errors import DataError, MCMFHError

ImageKind = Literal["png", "jpeg", "dicom"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
SNIFF_BYTES = DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)  # enough of a file's start to tell its type
# How the shared loader words a size refusal (mcmfh.data.images / mcmfh.data.dicom); a test locks these.
_TOO_LARGE_MARKERS = ("over the limit of", "decompression-bomb")


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


def _rejected(error: DataError, path: Path, shown_as: str) -> ImageRejected:
    message = str(error).replace(str(path), shown_as)
    status = 413 if any(marker in message for marker in _TOO_LARGE_MARKERS) else 422
    return ImageRejected(message, status)


def read_image_file(path: Path, max_pixels: int) -> Image.Image:
    """Decode an archive image file (any type the shared loader reads) to RGB, with HTTP-ready errors."""
    try:
        return load_image(path, max_pixels=max_pixels)
    except DataError as e:
        raise _rejected(e, path, "image file") from None


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode uploaded PNG, JPEG or DICOM bytes into an RGB image of at most ``max_pixels`` pixels."""
    kind = sniff(data)
    if kind is None:
        raise ImageRejected("file is not a PNG, JPEG or DICOM image (checked from its bytes)", 415)
    if kind != "dicom":
        # PNG and JPEG decode from memory (a temporary file cost about as much CPU as the decode itself).
        shown_as = f"uploaded {kind.upper()}"
        try:
            image = load_image_bytes(data, shown_as, max_pixels=max_pixels)
        except DataError as e:
            raise _rejected(e, Path(shown_as), shown_as) from None
        if image is None:
            raise ImageRejected(f"{shown_as}: corrupt image data (not recognised by the decoder)", 422)
        return image
    # pydicom parses lazily from a file; the temporary file is private to this process (mode 0600) and removed on
    # return.
    with tempfile.NamedTemporaryFile(prefix="mcmfh-upload-", suffix=f".{kind}") as tmp:
        tmp.write(data)
        tmp.flush()
        path = Path(tmp.name)
        try:
            return load_image(path, max_pixels=max_pixels)
        except DataError as e:
            raise _rejected(e, path, f"uploaded {kind.upper()}") from None


def to_png(image: Image.Image, max_side: int | None = None) -> bytes:
    """PNG bytes of ``image``, shrunk (aspect kept) so its longer side is at most ``max_side``."""
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
