"""Why one instance (or report) could not be indexed: one mapping from every fetch or decode failure to a short
reason, with the remedy where there is one. Reasons never carry a header value (the DICOM header holds patient
identifiers): only an HTTP status, an exception class, pixel dimensions or a transfer syntax.

A fetch that worked but gave no image is a *decode* failure (``mcmfh.data.dicom.DecodeError``); the reasons name
it so, with what to do: a decoder package or the server's rendered frame for a compressed transfer syntax, the pixel
limit for an oversize header. An object without pixel data (or without Rows/Columns) is no failure but *not an
image* (``not_an_image``): the sync remembers it and never fetches it again.
"""

from __future__ import annotations

from mcmfh.data.dicom import DecodeError

RENDERED_REMEDY = "or let the PACS render it (--fetch auto, the default)"


def failure_reason(e: BaseException, pixels_forced: bool = False) -> str:
    """The reason a fetch (WADO-RS) or the decode of its answer failed, e.g. ``fetch failed (HTTP 503)`` or
    ``decode failed: transfer syntax ... has no decoder installed here (install ...)``. ``pixels_forced``: the run
    asked for pixel data (--fetch pixels), so the server's rendered frame is a remedy too."""
    if isinstance(e, DecodeError):
        remedy = e.remedy
        if e.reason == "no_decoder" and pixels_forced:
            remedy = f"{remedy}, {RENDERED_REMEDY}" if remedy else RENDERED_REMEDY.removeprefix("or ")
        elif e.reason == "too_large":
            remedy = "MCMFH_MAX_IMAGE_PIXELS raises the limit"
        return f"decode failed: {e.detail}" + (f" ({remedy})" if remedy else "")
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status:
        return f"fetch failed (HTTP {status})"
    if type(e).__name__ == "UnidentifiedImageError":
        return "decode failed: the rendered frame is not an image Pillow reads"
    return f"fetch failed ({type(e).__name__})"


def not_an_image(e: BaseException) -> bool:
    """The object was read and is not an image (no pixel data, no dimensions): trying again cannot change that."""
    return isinstance(e, DecodeError) and e.reason in ("no_pixel_data", "no_image")
