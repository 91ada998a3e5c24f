"""Image reading: format by bytes, DICOM display pipeline, bomb limit, corrupt files, no patient identifiers leaked."""

from __future__ import annotations

import logging
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from data_fixtures import PHI, write_dicom, write_png
from mcmfh.data import check_image, load_image
from mcmfh.errors import DataError


def test_png_and_jpeg_detected_by_bytes_not_extension(tmp_path):
    png = write_png(tmp_path / "a.png", (10, 6), 200)
    disguised = tmp_path / "scan.dat"
    shutil.copy(png, disguised)
    Image.new("RGB", (7, 5), (10, 20, 30)).save(tmp_path / "b.png", format="JPEG")  # JPEG bytes, .png name
    for p in (png, disguised):
        img = load_image(p)
        assert img.mode == "RGB" and img.size == (10, 6)
        assert np.asarray(img)[0, 0].tolist() == [200, 200, 200]
    jpg = load_image(tmp_path / "b.png")
    assert jpg.size == (7, 5) and jpg.mode == "RGB"


def test_16bit_png_is_stretched_not_clipped(tmp_path):
    a = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "x.png")
    out = np.asarray(load_image(tmp_path / "x.png"))[..., 0]
    assert out.tolist() == [[0, 64], [128, 255]]


def test_dicom_monochrome1_window_and_rescale(tmp_path):
    stored = np.array([[0, 500], [1000, 1500]], dtype=np.uint16)
    # HU = 2 * stored - 1000 -> [[-1000, 0], [1000, 2000]]; window centre 500, width 1001 -> [0, 1000] to [0, 1]
    p = write_dicom(tmp_path / "a.dcm", stored, "MONOCHROME1", slope=2, intercept=-1000, window=(500, 1001))
    out = np.asarray(load_image(p))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    grey = out[..., 0]
    # MONOCHROME1 inverts: below the window -> white, above -> black, 0 HU (window bottom) -> white
    assert grey.tolist() == [[255, 255], [0, 0]]
    p2 = write_dicom(tmp_path / "b.dcm", stored, "MONOCHROME2", slope=2, intercept=-1000, window=(500, 1001))
    assert np.asarray(load_image(p2))[..., 0].tolist() == [[0, 0], [255, 255]]


def test_dicom_window_midpoint_is_mid_grey(tmp_path):
    stored = np.array([[399, 500, 600]], dtype=np.uint16)
    p = write_dicom(tmp_path / "w.dcm", stored, window=(500, 201))
    assert np.asarray(load_image(p))[0, :, 0].tolist() == [0, 128, 255]


def test_dicom_voi_lut_sequence_takes_precedence(tmp_path):
    stored = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    lut = np.array([65535, 43690, 21845, 0])  # an inverting 16-bit LUT
    p = write_dicom(tmp_path / "l.dcm", stored, window=(1, 10), voi_lut=lut)
    assert np.asarray(load_image(p))[0, :, 0].tolist() == [255, 170, 85, 0]


def test_dicom_without_window_uses_full_range_and_multiframe_takes_middle(tmp_path):
    frames = np.stack([np.full((3, 3), v, dtype=np.uint16) for v in (10, 20, 30)])
    frames[1, 0, 0] = 0  # the middle frame has a range; the others are flat
    p = write_dicom(tmp_path / "m.dcm", frames)
    grey = np.asarray(load_image(p))[..., 0]
    assert grey[0, 0] == 0 and grey[1, 1] == 255  # min-max of the middle frame (values 0 and 20)


def test_dicom_without_preamble_is_detected_by_parse(tmp_path):
    p = write_dicom(tmp_path / "bare", np.array([[0, 4095]], dtype=np.uint16), preamble=False)
    assert p.read_bytes()[128:132] != b"DICM"
    check_image(p)
    assert np.asarray(load_image(p))[0, :, 0].tolist() == [0, 255]


def test_dicom_errors_never_show_patient_identifiers(tmp_path, caplog, capsys):
    good = write_dicom(tmp_path / "ok.dcm", np.zeros((4, 4), dtype=np.uint16))
    data = good.read_bytes()
    truncated = tmp_path / "trunc.dcm"
    truncated.write_bytes(data[: len(data) - 20])  # pixel data cut short
    header_cut = tmp_path / "cut.dcm"
    header_cut.write_bytes(data[: data.index(b"SECRET") + 3])  # cut in the middle of PatientID
    nopix = write_dicom(tmp_path / "nopix.dcm", np.zeros((4, 4), dtype=np.uint16))
    from pydicom import dcmread

    ds = dcmread(nopix)
    del ds.PixelData
    ds.PatientName = "Doe^Jane\\Other"  # odd multi-valued name: pydicom warns quoting values when validating
    ds.save_as(nopix)
    caplog.set_level(logging.DEBUG)
    messages = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for p in (truncated, header_cut, nopix):
            with pytest.raises(DataError) as e:
                load_image(p)
            assert str(p) in str(e.value)
            assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)
            messages.append(str(e.value))
    out = capsys.readouterr()
    seen = "\n".join(messages + [caplog.text, out.out, out.err] + [str(w.message) for w in caught])
    for value in [*PHI.values(), "Doe", "SECRET", "Jane"]:
        assert value not in seen


def test_corrupt_and_unsupported_files_name_the_file(tmp_path):
    png = write_png(tmp_path / "a.png", (64, 64))
    bad = tmp_path / "trunc.png"
    bad.write_bytes(png.read_bytes()[:60])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for p in (bad, text, empty, tmp_path / "absent.png"):
        with pytest.raises(DataError, match=str(p.name)):
            load_image(p)
    for p in (text, empty, tmp_path / "absent.png"):
        with pytest.raises(DataError):
            check_image(p)


def test_pixel_limit_refuses_decompression_bombs(tmp_path):
    p = write_png(tmp_path / "big.png", (300, 300))
    with pytest.raises(DataError, match="over the limit"):
        load_image(p, max_pixels=300 * 299)
    with pytest.raises(DataError, match="over the limit"):
        check_image(p, max_pixels=1000)
    assert load_image(p, max_pixels=300 * 300).size == (300, 300)
    d = write_dicom(tmp_path / "big.dcm", np.zeros((20, 20), dtype=np.uint16))
    with pytest.raises(DataError, match="over the limit"):
        load_image(d, max_pixels=399)
