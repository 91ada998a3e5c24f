"""The HTTP API and the web page over a ``SearchEngine``.

Decoding and model inference are CPU-bound: they run in worker threads (never on the event loop, which keeps
answering other requests), at most ``Settings.search_threads`` at once. More threads than cores only fight over
the GIL and the cores, which under load turns into long tail latencies; waiting requests queue on the loop instead.
The light handlers (items, images, health) are plain ``def`` and use FastAPI's own thread pool.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware import Middleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from mcmfh import __version__
from mcmfh.errors import MCMFHError
from mcmfh.index.store import widen
from mcmfh.items import Hit, Item, StudyHit
from mcmfh.locking import LockTimeout
from mcmfh.service.engine import SearchEngine, StudyEngine, WritableEngine
from mcmfh.service.imaging import SNIFF_BYTES, ImageRejected, decode_image, read_image_file, sniff, to_png
from mcmfh.service.middleware import (
    AccessLogMiddleware,
    AuthMiddleware,
    BodyLimitMiddleware,
    SecurityHeadersMiddleware,
    error_logger,
)
from mcmfh.service.schemas import (
    PER_STUDY_HELP,
    PER_STUDY_MAX,
    TARGET_HELP,
    ErrorOut,
    FacetsOut,
    HealthOut,
    HitOut,
    ItemOut,
    SearchOut,
    StudyHitOut,
    StudyMemberOut,
    StudySearchOut,
    Target,
    TextQuery,
    WholeNumber,
    image_url,
    json_only,
)
from mcmfh.service.settings import Settings, viewer_link
from mcmfh.service.writes import write_routes

STATIC_DIR = Path(__file__).parent / "static"
_RAW_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
T = TypeVar("T")


class _WorkerPool:
    """Runs blocking calls in threads, at most ``size`` at a time (the limiter is made on first use, inside the
    event loop, as anyio requires)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.size)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)


def _image_url(item: Item) -> str | None:
    return None if item.image is None else image_url(item.id)


def _item_out(item: Item) -> ItemOut:
    return ItemOut(id=item.id, text=item.text, title=item.title, labels=list(item.labels),
                   image_url=_image_url(item), study_id=item.study_id)  # fmt: skip


def _member_out(item: Item) -> StudyMemberOut:
    return StudyMemberOut(id=item.id, text=item.text, title=item.title, labels=list(item.labels),
                          image_url=_image_url(item))  # fmt: skip


def _hit_out(hit: Hit, study: dict[str, str] | None, viewer_url: str | None) -> HitOut:
    it, study = hit.item, study or {}
    return HitOut(id=it.id, distance=hit.distance, score=hit.score, text=it.text, title=it.title,
                  labels=list(it.labels),
                  image_url=_image_url(it), modality=study.get("modality") or None,
                  body_part=study.get("body_part") or None, study_date=study.get("study_date") or None,
                  viewer_url=viewer_link(viewer_url, study) if viewer_url and study else None,
                  study_id=it.study_id, others=[_member_out(m) for m in hit.others],
                  duplicates=list(hit.duplicates))  # fmt: skip


def _study_out(hit: StudyHit) -> StudyHitOut:
    members = [_member_out(it) for it in hit.members]
    return StudyHitOut(study_id=hit.study_id, title=hit.title, distance=hit.distance, score=hit.score, members=members)


def _study_engine(engine: SearchEngine, filters: dict[str, str]) -> StudyEngine:
    """The engine, checked to search studies (422 otherwise: the request asks what this archive cannot do)."""
    if not isinstance(engine, StudyEngine) or not engine.info().studies:
        raise _fail(422, "target studies: this archive has no studies (build it from data with a study_id column)")
    if filters:
        raise _fail(422, "target studies: the modality / body_part filters apply to item search only")
    return engine


def _filtered(
    engine: SearchEngine, search: Callable[[int], list[Hit]], k: int, filters: dict[str, str]
) -> tuple[list[Hit], dict[str, dict[str, str]]]:
    """The k best hits whose PACS metadata matches ``filters`` (exact values), with every hit's metadata.

    Filtering after the search keeps results exact: the request widens (``mcmfh.index.store.widen``) until k hits
    match or every item has been ranked."""
    if not filters:
        hits = search(k)
        return hits, engine.study_metadata([h.item.id for h in hits])

    def matching(want: int) -> tuple[list[Hit], list[Hit], dict[str, dict[str, str]]]:
        hits = search(want)
        study = engine.study_metadata([h.item.id for h in hits])
        keep = [h for h in hits if all(study.get(h.item.id, {}).get(f) == v for f, v in filters.items())]
        return hits, keep, study

    hits, keep, study = widen(matching, lambda r, want: len(r[1]) >= k or len(r[0]) < want, k,
                              limit=max(1, engine.info().items))  # fmt: skip
    return keep[:k], study


# The parameters of POST /search/image.
IMAGE_FORM_FIELDS = ("file", "k", "modality", "body_part", "target", "per_study")


def _per_study(value: int | None) -> dict[str, int]:
    """The ``per_study`` keyword for the engine, only when the request gave one: an engine written before it (taking
    query and k) keeps working, with its own default."""
    return {} if value is None else {"per_study": value}


def _refuse_unknown_fields(form: Mapping[str, object]) -> None:
    """422 for a form field /search/image does not take, as JSON bodies refuse unknown fields (``extra="forbid"``):
    a misspelt filter (``bodypart=CHEST``) must not answer unfiltered results as if it had applied."""
    unknown = sorted({str(name) for name in form} - set(IMAGE_FORM_FIELDS))
    if unknown:
        names = "; ".join(f"{name[:64]!r}: Extra inputs are not permitted" for name in unknown[:5])
        raise _fail(422, f"{names} (the form fields are {', '.join(IMAGE_FORM_FIELDS)})")


def _filters(modality: str | None, body_part: str | None) -> dict[str, str]:
    return {k: v for k, v in (("modality", modality), ("body_part", body_part)) if v}


def _fail(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "form", "header"):  # where, not which field
            loc = loc[1:]
        loc = ".".join(str(p) for p in loc)
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


# An absolute path inside a message (e.g. "index /srv/archives/x/images: ..."): the client sees its last part only.
_ABS_PATH = re.compile(r"(?<![\w.~:/])/(?:[^\s'\":,/]+/)+([^\s'\":,/]+)")


def public_message(message: str) -> str:
    """An error message fit for a client: no server paths (the last component is kept, so it still says what)."""
    return _ABS_PATH.sub(r"\1", message)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.exception_handler(ImageRejected)
    def _image(_: Request, exc: ImageRejected) -> JSONResponse:
        return JSONResponse({"error": public_message(str(exc))}, status_code=exc.status)

    @app.exception_handler(LockTimeout)
    def _busy(_: Request, exc: LockTimeout) -> JSONResponse:
        # Another writer (a CLI add, a PACS sync) holds the archive: a retry will do.
        return JSONResponse({"error": "the archive is busy with another writer; retry shortly"}, status_code=503,
                            headers={"Retry-After": "5"})  # fmt: skip

    @app.exception_handler(MCMFHError)
    def _expected(_: Request, exc: MCMFHError) -> JSONResponse:
        # The engine's expected failures (e.g. a query it cannot encode) are the client's to fix.
        return JSONResponse({"error": public_message(str(exc))}, status_code=422)


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI from locally installed assets (package fastapi-offline); without them, /docs is off (the
    schema stays at /openapi.json), never a page that silently loads scripts from a CDN."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return
    assets = Path(spec.origin).parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="mcmfh search - API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )  # fmt: skip


_ENGINE_METHODS = ("info", "search_text", "search_image", "get_item", "image_path", "study_metadata", "facets")


def create_app(engine: SearchEngine, settings: Settings | None = None) -> FastAPI:
    """The service app; ``engine`` answers searches, ``settings`` bounds every input."""
    settings = settings or Settings()
    missing = [name for name in _ENGINE_METHODS if not callable(getattr(engine, name, None))]
    if missing:  # fail at start-up, not with a 500 on every request
        raise TypeError(f"{type(engine).__name__} is not a SearchEngine: it lacks {', '.join(missing)}")
    app = FastAPI(
        title="mcmfh search",
        version=__version__,
        description="Cross-modal (text or image) retrieval of medical images and reports by Hamming search.",
        docs_url=None,
        redoc_url=None,
        middleware=[  # outermost first: headers on every answer, log and catch everything, then auth, then body size
            Middleware(SecurityHeadersMiddleware),
            Middleware(AccessLogMiddleware, settings=settings),
            Middleware(AuthMiddleware, settings=settings),
            Middleware(BodyLimitMiddleware, settings=settings),
        ],
        responses={"4XX": {"model": ErrorOut, "description": "Bad request: {'error': message}"}},
    )
    _error_handlers(app)
    _mount_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def bounded_k(k: int | None) -> int:
        k = settings.default_k if k is None else k
        if not 1 <= k <= settings.max_k:
            raise _fail(422, f"k must be between 1 and {settings.max_k}, got {k}")
        return k

    def checked_id(item_id: str) -> str:
        if not settings.id_is_valid(item_id):
            raise _fail(400, "item id has control characters or a length that ids never have")
        return item_id

    def item_of(item_id: str) -> Item:
        item = engine.get_item(checked_id(item_id))
        if item is None:
            raise _fail(404, "no item with that id")  # the id is not echoed: it may be anything, e.g. a path
        return item

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/health", response_model=HealthOut)
    def health() -> HealthOut:
        info = engine.info()
        return HealthOut(
            status="ok",
            model=info.method,
            bits=info.bits,
            encoder=info.encoder,
            items=info.items,
            name=info.name,
            max_k=settings.max_k,
            studies=info.studies,
        )

    # Monitors probe with HEAD; one operation in the schema (GET) keeps the operation ids unique.
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)
    workers = _WorkerPool(settings.search_threads)

    @app.post("/search/text", response_model=SearchOut | StudySearchOut, dependencies=[Depends(json_only)])
    async def search_text(body: TextQuery) -> SearchOut | StudySearchOut:
        k, query = bounded_k(body.k), body.query.strip()
        if not query:
            raise _fail(422, "query is empty")
        if len(query) > settings.max_query_chars:
            raise _fail(422, f"query is {len(query)} characters, over the limit of {settings.max_query_chars}")
        start = time.perf_counter()
        filters = _filters(body.modality, body.body_part)
        hybrid = () if body.hybrid is None else (body.hybrid,)  # engines written before the field are called as before
        if body.target == "studies":
            studies = _study_engine(engine, filters)
            found = await workers.run(studies.search_studies_text, query, k, *hybrid)
            return StudySearchOut(results=[_study_out(h) for h in found], took_ms=(time.perf_counter() - start) * 1000)
        opts = {**_per_study(body.per_study), **({} if body.hybrid is None else {"hybrid": body.hybrid})}
        hits, study = await workers.run(_filtered, engine, lambda n: engine.search_text(query, n, **opts), k,
                                       filters)  # fmt: skip
        return SearchOut(results=[_hit_out(h, study.get(h.item.id), settings.viewer_url) for h in hits],
                         took_ms=(time.perf_counter() - start) * 1000)  # fmt: skip

    @app.post("/search/image", response_model=SearchOut | StudySearchOut)
    async def search_image(
        request: Request,
        file: UploadFile = File(description="PNG, JPEG or DICOM; the type is read from the bytes."),
        k: WholeNumber | None = Form(default=None),
        modality: str | None = Form(default=None, max_length=64),
        body_part: str | None = Form(default=None, max_length=64),
        target: Target | None = Form(default=None, description=TARGET_HELP),
        per_study: WholeNumber | None = Form(default=None, ge=0, le=PER_STUDY_MAX, description=PER_STUDY_HELP),
    ) -> SearchOut | StudySearchOut:
        _refuse_unknown_fields(await request.form())
        k = bounded_k(k)
        start = time.perf_counter()
        data = await file.read()  # already bounded by BodyLimitMiddleware
        if not data:
            raise _fail(422, "file is empty")
        filters = _filters(modality, body_part)
        if target == "studies":
            studies = _study_engine(engine, filters)
            found = await workers.run(lambda: studies.search_studies_image(decode_image(data, settings.max_pixels), k))
            return StudySearchOut(results=[_study_out(h) for h in found], took_ms=(time.perf_counter() - start) * 1000)

        def run() -> tuple[list[Hit], dict[str, dict[str, str]]]:
            image = decode_image(data, settings.max_pixels)
            per = _per_study(per_study)
            return _filtered(engine, lambda n: engine.search_image(image, n, **per), k, filters)

        hits, study = await workers.run(run)
        return SearchOut(results=[_hit_out(h, study.get(h.item.id), settings.viewer_url) for h in hits],
                         took_ms=(time.perf_counter() - start) * 1000)  # fmt: skip

    @app.get("/facets", response_model=FacetsOut)
    def facets() -> FacetsOut:
        """Values results can be filtered by (from a PACS sync); empty lists for an archive built from files."""
        values = engine.facets()
        return FacetsOut(modality=values.get("modality", []), body_part=values.get("body_part", []))

    # ``:path`` so an id with "/" (percent-encoded by clients, decoded before routing) still names one item. Images
    # live under their own prefix: "/items/{id}/image" could not tell id "x/image" from the image of "x".
    @app.get("/items/{item_id:path}", response_model=ItemOut)
    def get_item(item_id: str) -> ItemOut:
        return _item_out(item_of(item_id))

    @app.get("/images/{item_id:path}", responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}})
    def get_image(
        item_id: str,
        max_side: WholeNumber | None = Query(default=None, ge=16, le=settings.max_thumbnail_side, description="Thumb"),
    ) -> Response:
        path = _image_file(engine, settings, item_of(item_id))
        with path.open("rb") as f:
            kind = sniff(f.read(SNIFF_BYTES))
        headers = {"Cache-Control": "private, max-age=300"}
        if kind in _RAW_MEDIA_TYPES and max_side is None:
            return FileResponse(path, media_type=_RAW_MEDIA_TYPES[kind], headers=headers)
        image = read_image_file(path, settings.max_pixels)  # DICOM (rendered), another format, or a thumbnail
        return Response(content=to_png(image, max_side), media_type="image/png", headers=headers)

    if settings.allow_writes:
        if not isinstance(engine, WritableEngine):
            raise MCMFHError(f"write endpoints are on but the engine ({type(engine).__name__}) cannot write")
        app.include_router(write_routes(engine, settings))
    return app


def _image_file(engine: SearchEngine, settings: Settings, item: Item) -> Path:
    """The item's image file, re-checked here to lie inside the configured root whatever the engine says."""
    path = engine.image_path(item.id)
    if path is None or settings.image_root is None:
        raise _fail(404, "the item has no image")
    resolved, root = Path(path).resolve(), settings.image_root.resolve()
    if not resolved.is_relative_to(root):
        error_logger.warning("engine gave an image path outside the image root; refused")
        raise _fail(403, "the item's image is outside the served image folder")
    if not resolved.is_file():
        raise _fail(404, "the item's image file is missing")
    return resolved
