"""A small, real test double of ``mcmfh.service.engine.SearchEngine`` for the service tests (never used in src).

It does what the real engine does, only with trivial encoders: SimHash of the words of a text, SimHash of an 8x8
grey thumbnail of an image, then exact Hamming ranking with the project's packed codes. Searching an item's own
text or image therefore finds that item at distance 0, which the tests check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from mcmfh.diversify import diversify, others_not_shown, study_key
from mcmfh.index.codes import hamming_matrix, pack_codes
from mcmfh.items import Hit, Item, StudyHit
from mcmfh.service.engine import EngineInfo

BITS = 16
THUMB = 8


def _word_vector(word: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=BITS)


def text_code(text: str) -> np.ndarray:
    words = text.lower().split()
    total = sum((_word_vector(w) for w in words), np.zeros(BITS))
    return pack_codes((total > 0)[None])[0]


_IMAGE_PLANES = np.random.default_rng(7).normal(size=(THUMB * THUMB, BITS))


def image_code(image: Image.Image) -> np.ndarray:
    grey = np.asarray(image.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.float64)
    centred = grey.ravel() - grey.mean()
    return pack_codes(((centred @ _IMAGE_PLANES) > 0)[None])[0]


def pattern_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A distinct picture per seed (random blocks), so image codes differ between items."""
    blocks = np.random.default_rng(seed).integers(0, 256, size=(6, 8), dtype=np.uint8)
    return Image.fromarray(blocks, mode="L").resize(size, Image.Resampling.NEAREST).convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def dicom_bytes(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
) -> bytes:
    """An uncompressed single-frame DICOM file (with the 128-byte preamble and DICM) holding ``pixels`` (uint16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = str(window[0]), str(window[1])
    ds.PixelData = pixels.astype("<u2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


TEXTS = [
    "axial CT of the brain showing an acute hemorrhage",
    "ring enhancing lesion in the right frontal lobe on MR",
    "chest radiograph with a left lower lobe pneumonia",
    "sagittal MR of the lumbar spine with disc herniation",
    "abdominal CT showing a liver abscess",
    "coronal CT of the sinuses with mucosal thickening",
]


class FakeEngine:
    """Items 0..len(TEXTS)-1; item 1 is a JPEG, item 2 a DICOM, the last one has no image. Thread-safe: read-only
    arrays, and a lock only around the call counter the tests read."""

    def __init__(self, root: Path, escape_path: Path | None = None) -> None:
        self.root = root
        images = root / "images"
        images.mkdir(parents=True, exist_ok=True)
        self.items: dict[str, Item] = {}
        self.paths: dict[str, Path] = {}
        text_codes, image_codes = [], []
        for i, text in enumerate(TEXTS):
            item_id = f"MPX{i:04d}_synpic{i}"
            has_image = i < len(TEXTS) - 1
            labels = (f"loc:region{i % 3}", f"cat:kind{i % 2}")
            text_codes.append(text_code(text))
            image = pattern_image(i)
            image_codes.append(image_code(image))
            if not has_image:
                self.items[item_id] = Item(item_id, None, text, labels, source="fake", key=i)
                continue
            if i == 1:
                path = images / f"{item_id}.jpg"
                image.save(path, format="JPEG", quality=95)
            elif i == 2:
                path = images / f"{item_id}.dcm"
                path.write_bytes(dicom_bytes(np.asarray(image.convert("L"), dtype=np.uint16)))
            else:
                path = images / f"{item_id}.png"
                path.write_bytes(png_bytes(image))
            self.paths[item_id] = path
            self.items[item_id] = Item(item_id, path, text, labels, source="fake", key=i)
        if escape_path is not None:  # an engine bug the service must catch: a path outside the image root
            self.items["escape"] = Item("escape", escape_path, "outside", source="fake", key=len(TEXTS))
            self.paths["escape"] = escape_path
            text_codes.append(text_code("outside"))
            image_codes.append(image_code(pattern_image(99)))
        self.ids = list(self.items)
        self.text_codes, self.image_codes = np.stack(text_codes), np.stack(image_codes)
        self.calls = 0
        self.hybrid: list[bool | None] = []  # the hybrid argument of each text search (tests read it)
        self._lock = threading.Lock()
        self.study: dict[str, dict[str, str]] = {}  # PACS metadata by item id (tests fill it)

    def add(self, item_id: str, text: str, image_seed: int | None = None) -> None:
        """One more item (for id tests): its image, if any, under a file name of its own, never the id."""
        path = None
        if image_seed is not None:
            path = self.root / "images" / f"extra-{len(self.ids)}.png"
            path.write_bytes(png_bytes(pattern_image(image_seed)))
            self.paths[item_id] = path
        self.items[item_id] = Item(item_id, path, text, source="fake", key=len(self.ids))
        self.ids.append(item_id)
        self.text_codes = np.vstack([self.text_codes, text_code(text)])
        self.image_codes = np.vstack([self.image_codes, image_code(pattern_image(image_seed or 0))])

    def info(self) -> EngineInfo:
        return EngineInfo(method="fake-simhash", bits=BITS, encoder="words+8x8", items=len(self.ids), name="fake")

    def _rank(self, code: np.ndarray, database: np.ndarray, k: int) -> list[Hit]:
        with self._lock:
            self.calls += 1
        distances = hamming_matrix(code[None], database)[0]
        order = np.argsort(distances, kind="stable")[:k]
        return [Hit(self.items[self.ids[j]], int(distances[j])) for j in order]

    def search_text(self, query: str, k: int, per_study: int | None = None, hybrid: bool | None = None) -> list[Hit]:
        self.hybrid.append(hybrid)
        return self._shown(self._rank(text_code(query), self.text_codes, len(self.ids)), k, per_study)

    def search_image(self, image: Image.Image, k: int, per_study: int | None = None) -> list[Hit]:
        assert image.mode == "RGB", "the service must hand engines RGB images"
        return self._shown(self._rank(image_code(image), self.image_codes, len(self.ids)), k, per_study)

    def _shown(self, ranking: list[Hit], k: int, per_study: int | None) -> list[Hit]:
        """The fake's default is the raw ranking; a request's per_study folds it as an archive does."""
        self.per_study_asked = per_study
        if not per_study:
            return ranking[:k]
        members: dict[str, list[Item]] = {}
        for item_id in self.ids:
            members.setdefault(study_key(self.items[item_id]), []).append(self.items[item_id])
        ranking = [replace(h, others=tuple(m for m in members[study_key(h.item)] if m.id != h.item.id))
                   for h in ranking]  # fmt: skip
        return others_not_shown(diversify(ranking, per_study)[:k])

    def get_item(self, item_id: str) -> Item | None:
        return self.items.get(item_id)

    def image_path(self, item_id: str) -> Path | None:
        return self.paths.get(item_id)

    def study_metadata(self, item_ids: list[str]) -> dict[str, dict[str, str]]:
        return {i: self.study[i] for i in item_ids if i in self.study}

    def facets(self) -> dict[str, list[str]]:
        return {f: sorted({m[f] for m in self.study.values() if m.get(f)}) for f in ("modality", "body_part")}


class StudyFakeEngine(FakeEngine):
    """FakeEngine whose items form studies of two (``case0`` = items 0 and 1, ...), ranked by their nearest member
    (the no-fusion rule): enough to drive the page's study cards."""

    def __init__(self, root: Path, escape_path: Path | None = None) -> None:
        super().__init__(root, escape_path)
        self.items = {i: dataclasses.replace(it, study_id=f"case{it.key // 2}") for i, it in self.items.items()}

    def info(self) -> EngineInfo:
        return dataclasses.replace(super().info(), studies=True)

    def _rank(self, code: np.ndarray, database: np.ndarray, k: int) -> list[Hit]:
        # Scored like two-stage hits (a similarity per hit, in rank order) so the page shows one.
        return [dataclasses.replace(h, score=1.0 - 2.0 * h.distance / BITS) for h in super()._rank(code, database, k)]

    def _studies(self, hits: list[Hit], k: int) -> list[StudyHit]:
        members: dict[str, list[Item]] = {}
        for item_id in self.ids:
            members.setdefault(f"case{self.items[item_id].key // 2}", []).append(self.items[item_id])
        best: dict[str, Hit] = {}
        for h in hits:
            best.setdefault(f"case{h.item.key // 2}", h)
        return [StudyHit(s, h.distance, tuple(members[s]), h.score) for s, h in list(best.items())[:k]]

    def search_studies_text(self, query: str, k: int, hybrid: bool | None = None) -> list[StudyHit]:
        return self._studies(self.search_text(query, len(self.ids), hybrid), k)

    def search_studies_image(self, image: Image.Image, k: int) -> list[StudyHit]:
        return self._studies(self.search_image(image, len(self.ids)), k)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app, start_timeout_s: float = 10.0, settings=None) -> Iterator[str]:
    """A real uvicorn server for ``app`` in a thread on a free loopback port; yields its base URL, stops (bounded)."""
    from mcmfh.service.server import make_server

    port = free_port()
    server = make_server(app, "127.0.0.1", port, settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start within {start_timeout_s} s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout_s)
        if thread.is_alive():
            raise RuntimeError("uvicorn did not stop")
