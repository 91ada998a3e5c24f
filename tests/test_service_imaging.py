"""Decoding untrusted image bytes: type sniffing, DICOM rendering (rescale, window, MONOCHROME1), limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mcmfh.service.imaging import ImageRejected, decode_image, sniff, to_png
from service_fake import dicom_bytes, pattern_image, png_bytes


def grey(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)[..., 0].astype(int)


def test_sniff_reads_the_bytes() -> None:
    jpeg = io.BytesIO()
    pattern_image(0).save(jpeg, format="JPEG")
    assert sniff(png_bytes(pattern_image(0))) == "png"
    assert sniff(jpeg.getvalue()) == "jpeg"
    assert sniff(dicom_bytes(np.zeros((4, 4), dtype=np.uint16))) == "dicom"
    assert sniff(b"GIF89a" + bytes(200)) is None and sniff(b"") is None and sniff(bytes(127) + b"DICM") is None


def test_dicom_min_max_when_no_window() -> None:
    pixels = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    out = grey(decode_image(dicom_bytes(pixels), max_pixels=100))
    assert out.tolist() == [[0, 64], [128, 255]]


def test_dicom_rescale_then_window() -> None:
    # stored 0..400 -> HU -1000..-200 with slope 2, intercept -1000; window centre -600 width 400 = [-800, -400]
    pixels = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    out = grey(decode_image(dicom_bytes(pixels, window=(-600, 400), slope=2, intercept=-1000), max_pixels=100))
    assert out.tolist() == [[0, 0], [128, 255]]  # -1000, -800 clip to 0; -600 mid; -400 top


def test_monochrome1_is_inverted() -> None:
    pixels = np.array([[0, 1000]], dtype=np.uint16)
    mono2 = grey(decode_image(dicom_bytes(pixels), max_pixels=100))
    mono1 = grey(decode_image(dicom_bytes(pixels, photometric="MONOCHROME1"), max_pixels=100))
    assert mono2.tolist() == [[0, 255]] and mono1.tolist() == [[255, 0]]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the garbage it is given here
def test_dicom_errors() -> None:
    good = dicom_bytes(np.zeros((8, 8), dtype=np.uint16))
    with pytest.raises(ImageRejected, match="8x8x1 pixels, over the limit of 10") as e:
        decode_image(good, max_pixels=10)
    assert e.value.status == 413
    with pytest.raises(ImageRejected) as e:
        decode_image(good[:-40], max_pixels=100)  # pixel data cut short
    assert e.value.status in (415, 422)
    with pytest.raises(ImageRejected, match="uploaded DICOM: (DICOM file has no image|unreadable|not a DICOM)"):
        decode_image(bytes(128) + b"DICM" + b"\x02\x00garbage", max_pixels=100)


def test_png_limits_and_thumbnail() -> None:
    data = png_bytes(pattern_image(0, size=(300, 200)))
    with pytest.raises(ImageRejected, match="300x200") as e:
        decode_image(data, max_pixels=59_999)
    assert e.value.status == 413
    image = decode_image(data, max_pixels=60_000)
    thumb = Image.open(io.BytesIO(to_png(image, max_side=64)))
    assert thumb.size == (64, 43) and thumb.format == "PNG"
    assert Image.open(io.BytesIO(to_png(image))).size == (300, 200)


def test_grey_and_palette_png_become_rgb() -> None:
    for mode in ("L", "P", "RGBA", "I;16"):
        image = pattern_image(1).convert("L" if mode == "I;16" else mode)
        if mode == "I;16":
            image = Image.fromarray(np.asarray(image, dtype=np.uint16) * 200)
        out = decode_image(png_bytes(image), max_pixels=10_000)
        assert out.mode == "RGB" and np.asarray(out).std() > 20, mode  # contrast kept, not clipped to white


@pytest.mark.realdata
def test_real_medpix_images_decode_within_default_limits(shared_data) -> None:
    """The default pixel limit must not refuse a real archive: decode a spread of MedPix 2.0 images as uploads."""
    from mcmfh.service.settings import Settings

    files = sorted((shared_data / "medpix2" / "images").glob("*.jpg"))
    assert len(files) > 1000
    for path in files[:: len(files) // 60]:
        data = path.read_bytes()
        assert sniff(data) == "jpeg", path.name
        image = decode_image(data, Settings().max_pixels)
        assert image.mode == "RGB" and min(image.size) >= 64, path.name


def test_uploads_decode_from_memory_exactly_as_the_file_loader(tmp_path) -> None:
    """PNG/JPEG uploads skip the temporary file; the pixels must be those the archive's file loader gives."""
    from mcmfh.data.images import load_image

    base = pattern_image(2, size=(120, 90))
    grey16 = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 150)
    cases = {"rgb.png": png_bytes(base), "p.png": png_bytes(base.convert("P")), "i16.png": png_bytes(grey16)}
    buf = io.BytesIO()
    base.save(buf, format="JPEG", quality=80)
    cases["rgb.jpg"] = buf.getvalue()
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert np.array_equal(np.asarray(decode_image(data, 10**6)), np.asarray(load_image(tmp_path / name))), name
    with pytest.raises(ImageRejected, match="uploaded PNG") as e:
        decode_image(cases["rgb.png"][:200], 10**6)  # truncated body
    assert e.value.status == 422
