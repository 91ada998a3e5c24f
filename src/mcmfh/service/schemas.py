"""The JSON shapes of the HTTP API (pydantic, only here at the edge) and the input rules every field shares."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, field_validator
from starlette.exceptions import HTTPException


def item_url(item_id: str) -> str:
    """The item's API path; the id is percent-encoded whole ("/" too), so any id ingest accepts round-trips."""
    return "/items/" + quote(item_id, safe="")


def image_url(item_id: str) -> str:
    return "/images/" + quote(item_id, safe="")


def json_only(request: Request) -> None:
    """415 for a body that is not declared JSON (FastAPI would try to parse it anyway and answer 422)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
        raise HTTPException(415, f"the body must be JSON (content-type application/json), not {kind[:60] or 'none'}")


def valid_unicode(text: str) -> str:
    """JSON may carry a lone surrogate ("\\ud800"), which Python decodes but no encoder or tokenizer can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (it holds a lone surrogate)") from None
    return text


def _whole_number(value: object) -> object:
    # Form fields and query parameters arrive as text; pydantic's lax int would take "1.0", " 3" or "1_000".
    if isinstance(value, str) and not re.fullmatch(r"-?[0-9]{1,18}", value):
        raise ValueError("must be a whole number")
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


Target = Literal["items", "studies"]
TARGET_HELP = (
    "items (default): single items of the other modality; studies: whole studies (exams, cases), each with its "
    "images and report(s), where the archive has studies (`/health` says `studies: true`)."
)


PER_STUDY_HELP = (
    "Items shown per study (case), the study's other members listed under each (`others`) and repeated texts "
    "folded (`duplicates`); 0: the raw item ranking. Default: the engine's (one per study for an archive)."
)
PER_STUDY_MAX = 1000  # a bound, not a tuning: no study holds more members than this on one page


class TextQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(description="Free text, e.g. 'axial CT, ring-enhancing lesion in the right frontal lobe'.")
    # Strict: JSON true or 1.5 is not a count (lax pydantic reads true as 1).
    k: StrictInt | None = Field(default=None, description="How many results (1..max_k; default from the settings).")
    modality: str | None = Field(default=None, max_length=64, description="Only items of this modality (PACS sync).")
    body_part: str | None = Field(default=None, max_length=64, description="Only items of this body part.")
    target: Target | None = Field(default=None, description=TARGET_HELP)
    per_study: StrictInt | None = Field(default=None, ge=0, le=PER_STUDY_MAX, description=PER_STUDY_HELP)
    hybrid: StrictBool | None = Field(
        default=None,
        description="Also look the query's words up in the stored reports (BM25) and fuse both rankings; hits' "
        "score is then the fused score. Default: off (docs/hybrid.md).",
    )

    _unicode = field_validator("query")(valid_unicode)


TITLE_HELP = "The case title or diagnosis, where the source has one (null: none)."


class StudyMemberOut(BaseModel):
    id: str
    text: str
    title: str | None = Field(None, description=TITLE_HELP)
    labels: list[str]
    image_url: str | None


class HitOut(BaseModel):
    id: str
    distance: int = Field(description="Hamming distance between the query code and the item code.")
    score: float | None = Field(
        None,
        description="Two-stage search: the re-scored similarity (cosine of the stored payload and the query's "
        "own relaxed output, -1 to 1) the results are ordered by; null for one-stage (Hamming order).",
    )
    text: str
    title: str | None = Field(None, description=TITLE_HELP)
    labels: list[str]
    image_url: str | None
    modality: str | None = Field(None, description="From the PACS (items synced with `mcmfh index sync`).")
    body_part: str | None = None
    study_date: str | None = None
    viewer_url: str | None = Field(None, description="The study in the PACS viewer (`mcmfh serve --viewer-url`).")
    study_id: str | None = Field(None, description="The study (exam, case) the item belongs to, if any.")
    others: list[StudyMemberOut] = Field(
        default_factory=list, description="Grouped results: the study's other items, not shown themselves."
    )
    duplicates: list[str] = Field(
        default_factory=list,
        description="Grouped results: ids of lower-ranked items with the same text, or the same stored "
        "code and payload (one image stored twice), folded.",
    )


class StudyHitOut(BaseModel):
    study_id: str
    title: str | None = Field(None, description="The study's case title: the first of its members' titles.")
    distance: int = Field(
        description="Hamming distance between the query code and the study's code (its fused "
        "study code, or the nearest of its members' codes for a model without a study head)."
    )
    score: float | None = Field(
        None,
        description="Two-stage study search: the re-scored similarity (cosine of the study's stored relaxed output "
        "and the query's own) the studies are ordered by; null for one-stage (Hamming order).",
    )
    members: list[StudyMemberOut] = Field(description="The study's items (images and reports), in archive order.")


class StudySearchOut(BaseModel):
    target: Literal["studies"] = "studies"
    results: list[StudyHitOut]
    took_ms: float


class FacetsOut(BaseModel):
    modality: list[str]
    body_part: list[str]


class SearchOut(BaseModel):
    results: list[HitOut]
    took_ms: float


class ItemOut(BaseModel):
    id: str
    text: str
    title: str | None = Field(None, description=TITLE_HELP)
    labels: list[str]
    image_url: str | None
    study_id: str | None = Field(None, description="The study (exam, case) it belongs to; null: a study of its own.")


class HealthOut(BaseModel):
    status: str
    model: str
    bits: int
    encoder: str
    items: int
    name: str
    max_k: int
    studies: bool = Field(False, description="Whether studies can be searched (target 'studies').")


class ErrorOut(BaseModel):
    error: str


class NewItem(BaseModel):
    """``POST /items``: one item to add. The image is a file already on the server, named relative to the served
    image root (uploading image files is left to the data pipeline: it keeps one copy of each study)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=1024, description="Unique item id; any text without control characters.")
    text: str = Field(min_length=1, max_length=100_000, description="The report or caption text.")
    image: str | None = Field(default=None, description="Image file path relative to the image root, e.g. 'a/b.png'.")
    labels: list[str] = Field(default_factory=list, max_length=1000)
    study_id: str | None = Field(
        default=None, min_length=1, max_length=1024, description="The study (exam, case) it joins (re-coded)."
    )
    title: str | None = Field(default=None, min_length=1, max_length=1024, description=TITLE_HELP)

    _unicode = field_validator("id", "text", "image", "study_id", "title")(valid_unicode)

    @field_validator("labels")
    @classmethod
    def _labels_unicode(cls, labels: list[str]) -> list[str]:
        return [valid_unicode(x) for x in labels]


class WriteOut(BaseModel):
    id: str
    changed: bool = Field(description="Whether the archive changed (false: the id was already there / not there).")
    url: str = Field(description="The item's API path (percent-encoded id).")
