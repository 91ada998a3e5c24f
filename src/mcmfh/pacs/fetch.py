"""WADO-RS retrieval of one instance's image: the server's rendered frame where offered, else its pixel data.

The pixel-data path decodes with ``mcmfh.data.dicom.dataset_to_rgb`` (the same viewer-like pipeline as DICOM files:
modality LUT, VOI window, MONOCHROME1 inversion, middle frame). The fetched dataset stays in memory.
"""

from __future__ import annotations

import io
import threading

from PIL import Image

from mcmfh.data.dicom import DecodeError, dataset_to_rgb
from mcmfh.data.images import pixel_limit
from mcmfh.errors import MCMFHError
from mcmfh.pacs.query import InstanceRef

FETCH_MODES = ("auto", "rendered", "pixels")
# Answers meaning "this server does not render": fall back to pixel data (auto mode) for the rest of the run.
NOT_OFFERED = frozenset({400, 404, 406, 415, 501})


class ImageFetcher:
    """Thread-safe: one instance is shared by the sync's worker threads."""

    def __init__(self, client, mode: str = "auto", max_pixels: int | None = None) -> None:
        if mode not in FETCH_MODES:
            raise MCMFHError(f"--fetch {mode!r}: expected one of {', '.join(FETCH_MODES)}")
        self.client, self.mode, self.max_pixels = client, mode, pixel_limit(max_pixels)
        self._rendered = mode != "pixels"
        self._lock = threading.Lock()
        self.rendered = 0  # images that came as the server's rendered frame

    def __call__(self, ref: InstanceRef) -> Image.Image:
        if self._rendered:
            try:
                image = self._fetch_rendered(ref)
                with self._lock:
                    self.rendered += 1
                return image
            except Exception as e:
                status = getattr(getattr(e, "response", None), "status_code", None)
                if self.mode == "rendered" or status not in NOT_OFFERED:
                    raise
                with self._lock:
                    self._rendered = False
        return self._fetch_pixels(ref)

    def _fetch_rendered(self, ref: InstanceRef) -> Image.Image:
        frame = ref.frames // 2 + 1  # the middle frame, as the DICOM reader picks (frame numbers are 1-based)
        data = self.client.retrieve_instance_frames_rendered(
            ref.study_uid, ref.series_uid, ref.sop_uid, frame_numbers=[frame], media_types=("image/png",)
        )
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > self.max_pixels:
            raise DecodeError(f"instance {ref.sop_uid}", "too_large", f"rendered image has {image.width}x"
                              f"{image.height} pixels, over the limit of {self.max_pixels}")  # fmt: skip
        return image.convert("RGB")

    def _fetch_pixels(self, ref: InstanceRef) -> Image.Image:
        ds = self.client.retrieve_instance(ref.study_uid, ref.series_uid, ref.sop_uid)
        return dataset_to_rgb(ds, f"instance {ref.sop_uid}", self.max_pixels)
