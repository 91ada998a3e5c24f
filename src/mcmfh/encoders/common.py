"""Helpers every encoder shares: reading images, batching with a progress bar, cache paths, weight digests.

Nothing here imports torch, so building an encoder object (and checking a feature cache against it) stays cheap.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from PIL import Image

from mcmfh.encoders.base import ImageInput
from mcmfh.errors import DataError

T = TypeVar("T")

_DIGEST_BLOCK = 1 << 20


def cache_root() -> Path:
    """Where derived, re-creatable files (ONNX exports, generated configs) live: $MCMFH_CACHE or ~/.cache/mcmfh."""
    env = os.environ.get("MCMFH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mcmfh"


def read_image(item: ImageInput) -> Image.Image:
    """An RGB PIL image from a path (PNG/JPEG/DICOM through the data package) or an image object."""
    if isinstance(item, Image.Image):
        return item if item.mode == "RGB" else item.convert("RGB")
    from mcmfh.data.images import load_image

    path = Path(item)
    try:
        return load_image(path)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from e


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def progress_bar(total: int, desc: str, enabled: bool):  # -> tqdm
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", disable=not enabled, dynamic_ncols=True, leave=False)


@lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_DIGEST_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a weights file; memoised per process on (path, size, mtime), so a replaced file is re-hashed."""
    st = Path(path).stat()
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def resolve_device(device: str | None) -> str:
    """'auto' picks CUDA when torch sees one; anything else is passed to torch as is."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
