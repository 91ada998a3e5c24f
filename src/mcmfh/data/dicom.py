"""DICOM to 8-bit RGB, the way a radiologist's viewer shows it by default.

Pipeline (DICOM PS3.3 C.11): stored values -> modality LUT (rescale slope/intercept) -> the header's VOI transform
(a VOI LUT Sequence if present, else the first Window Center/Width pair, else the full value range) -> 8 bits ->
MONOCHROME1 inverted so that dense tissue is bright -> grey replicated to RGB. Colour images (RGB, YBR) are converted
to RGB and scaled to 8 bits.

Multi-frame objects (cine, CT/MR stacks in one file) give one image: the **middle frame** (index ``n // 2``), the frame
most likely to show the anatomy of interest, instead of the first one that often is a scout or an edge slice.

Privacy: DICOM headers carry patient identifiers (PatientName, PatientID, BirthDate, ...). Nothing here logs, returns
or raises any header value: errors name the file path and the kind of failure only, pydicom's own warnings (which can
quote element values) are silenced while reading, and exceptions are raised ``from None`` so a traceback never shows
pydicom's message either.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from mcmfh.errors import DataError

_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}
_PIXEL_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class DecodeError(DataError):
    """A DICOM object that was read but gives no image, and why: ``reason`` is one of ``REASONS``; ``detail`` says
    it without the file name (and never with a header value but the pixel dimensions and transfer syntax)."""

    REASONS = ("no_image", "too_large", "no_pixel_data", "no_decoder", "corrupt")

    def __init__(self, where: str | Path, reason: str, detail: str, remedy: str = "") -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{where}: {detail}" + (f"; {remedy}" if remedy else ""))
        self.reason, self.detail, self.remedy = reason, detail, remedy


def _bare_dataset(path: Path) -> bool:
    """A DICOM dataset written without preamble/file meta starts with a group 0002 or 0008 tag (little endian)."""
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] != b"DICM" and head[:2] in (b"\x02\x00", b"\x08\x00")


def _read(path: Path, stop_before_pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # force=True only for bare datasets, recognised by their first tag; anything else must carry "DICM".
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=_bare_dataset(path))
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file (no DICM marker and not parseable as DICOM)") from None
    except Exception as e:  # pydicom messages may quote header values, so only the class name is kept
        raise DataError(f"{path}: unreadable DICOM file ({type(e).__name__})") from None


def is_dicom_file(path: Path) -> bool:
    """True for a bare DICOM dataset (no 128-byte preamble) whose header parses and describes an image."""
    if not _bare_dataset(path):
        return False
    try:
        ds = _read(path, stop_before_pixels=True)
        return "Rows" in ds and "Columns" in ds
    except DataError:
        return False


def check_dicom(path: Path, max_pixels: int) -> None:
    """Cheap validity check: the header parses, has pixel dimensions and is below the pixel-count limit."""
    ds = _read(path, stop_before_pixels=True)
    _check_size(ds, path, max_pixels)


def _check_size(ds, path: Path, max_pixels: int) -> None:
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception:  # a forced parse of a damaged file can yield elements that are not numbers
        rows = cols = 0
    if rows <= 0 or cols <= 0:
        raise DecodeError(path, "no_image", "DICOM file has no image (Rows/Columns missing)")
    # Only the frame we decode counts; but a giant multi-frame file is still refused to bound memory.
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:
        raise DataError(f"{path}: DICOM file has an invalid NumberOfFrames") from None
    if rows * cols * frames > max_pixels:
        raise DecodeError(path, "too_large", f"DICOM image has {rows}x{cols}x{frames} pixels, over the limit of "
                          f"{max_pixels}")  # fmt: skip


def _ensure_transfer_syntax(ds) -> None:
    """Bare datasets have no file meta: take the transfer syntax from the encoding they were read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _decode_failure(ds, where: str | Path, error: Exception) -> DecodeError:
    """Why ``ds.pixel_array`` failed, read from the dataset (pydicom's message may quote header values)."""
    if not any(name in ds for name in _PIXEL_ELEMENTS):
        return DecodeError(where, "no_pixel_data", "DICOM object has no pixel data (it holds no image)")
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if not syntax.is_transfer_syntax or syntax.is_compressed:  # an unknown (private) syntax: no decoder either
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:  # no pydicom decoder exists for this syntax at all
            decoder = None
        if decoder is None or not decoder.is_available:
            needs = decoder.missing_dependencies if decoder else []
            options = "; or ".join(d.split(" - requires ")[-1].replace("numpy and ", "") for d in needs)
            return DecodeError(where, "no_decoder", f"transfer syntax {syntax.name} ({syntax}) has no decoder "
                               "installed here", f"install {options}" if options else "")  # fmt: skip
    return DecodeError(where, "corrupt", f"DICOM pixel data cannot be decoded ({type(error).__name__})")


def _window(ds) -> tuple[float, float] | None:
    """First Window Center/Width pair, as floats (the attributes may be multi-valued)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    c, w = ds.WindowCenter, ds.WindowWidth
    c = float(c[0] if hasattr(c, "__len__") and not isinstance(c, str) else c)
    w = float(w[0] if hasattr(w, "__len__") and not isinstance(w, str) else w)
    return (c, w) if w >= 1 else None


def _linear_window(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM 'LINEAR' VOI function (PS3.3 C.11.2.1.2.1), mapped to [0, 1]."""
    y = ((x - (centre - 0.5)) / (width - 1.0)) + 0.5
    return np.clip(y, 0.0, 1.0)


def _to_unit(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float64)
    return (x - lo) / (hi - lo)


def _grey_to_unit(arr: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    x = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if "VOILUTSequence" in ds:
        # The LUT's own output range defines black and white (its descriptor's bit depth).
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16
        y = np.asarray(apply_voi_lut(np.round(x).astype(np.int64), ds, index=0, prefer_lut=True), dtype=np.float64)
        return np.clip(y / float(2**bits - 1), 0.0, 1.0)
    window = _window(ds)
    if window is not None:
        return _linear_window(x, *window)
    return _to_unit(x)


def dicom_to_rgb(path: Path, max_pixels: int) -> Image.Image:
    """Decode one DICOM file to an 8-bit RGB PIL image (see the module docstring for every step)."""
    path = Path(path)
    return dataset_to_rgb(_read(path, stop_before_pixels=False), path, max_pixels)


def dataset_to_rgb(ds, where: str | Path, max_pixels: int) -> Image.Image:
    """Decode an already-read pydicom dataset (e.g. fetched over DICOMweb); ``where`` names it in errors."""
    path = where
    _check_size(ds, path, max_pixels)
    _ensure_transfer_syntax(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as e:
        raise _decode_failure(ds, path, e) from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    colour = photometric in _COLOUR or (arr.ndim == 3 + (frames > 1) and arr.shape[-1] == 3)
    if frames > 1:
        arr = arr[frames // 2]
    if colour:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        bits = int(ds.get("BitsStored", 8) or 8)
        unit = np.clip(arr.astype(np.float64) / float(2**bits - 1), 0.0, 1.0)
        return Image.fromarray(np.round(unit * 255).astype(np.uint8)).convert("RGB")
    unit = _grey_to_unit(arr, ds)
    if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white; invert so that all images read alike
        unit = 1.0 - unit
    grey = np.round(unit * 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
