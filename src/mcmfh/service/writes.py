"""The optional write endpoints: ``POST /items`` and ``DELETE /items/{id}`` (``Settings.allow_writes``, token only).

They go through the served archive itself (``WritableEngine``): each change takes the archive's writer lock, so API
writes and CLI writers (``mcmfh index add``, a PACS sync) never overlap; a write that waits longer than the engine's
lock timeout (``mcmfh serve --lock-timeout``) answers 503 with Retry-After (see ``mcmfh.service.app``). The live
reload then shows the change to every reader, in this process and in other ``mcmfh serve`` processes on the archive.
"""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter, Depends, Response
from starlette.exceptions import HTTPException

from mcmfh.items import Item
from mcmfh.service.engine import WritableEngine
from mcmfh.service.schemas import NewItem, WriteOut, item_url, json_only
from mcmfh.service.settings import Settings


def _image_file(settings: Settings, given: str | None) -> Path | None:
    """The new item's image: a file inside the image root, named relative to it (never outside, symlinks too)."""
    if given is None:
        return None
    if settings.image_root is None:
        raise HTTPException(422, "image: this server has no image root, so items cannot have images")
    root = settings.image_root.resolve()
    path = (root / given).resolve()
    if Path(given).is_absolute() or not path.is_relative_to(root):
        raise HTTPException(422, "image: give a path relative to the image root, inside it")
    if not path.is_file():
        raise HTTPException(422, "image: no such file under the image root")
    return path


def write_routes(engine: WritableEngine, settings: Settings) -> APIRouter:
    """The routes, bound to ``engine``."""
    router = APIRouter()

    def checked_id(item_id: str, status: int) -> str:
        # Refused at ingest what the read routes would refuse: every id the API adds stays reachable through it.
        if not settings.id_is_valid(item_id):
            raise HTTPException(status, "id: control characters or a length that ids never have")
        return item_id

    @router.post("/items", response_model=WriteOut, status_code=201, dependencies=[Depends(json_only)])
    async def add_item(body: NewItem, response: Response) -> WriteOut:
        item_id = checked_id(body.id, 422)
        record = Item(id=item_id, image=_image_file(settings, body.image), text=body.text, labels=tuple(body.labels),
                      split="train", study_id=body.study_id or None, title=body.title)  # fmt: skip
        added = await anyio.to_thread.run_sync(engine.add_records, [record])
        if not added:
            response.status_code = 200  # already there: nothing changed (ids are unique; remove first to replace)
        return WriteOut(id=item_id, changed=bool(added), url=item_url(item_id))

    @router.delete("/items/{item_id:path}", response_model=WriteOut)
    async def remove_item(item_id: str) -> WriteOut:
        checked_id(item_id, 400)
        removed = await anyio.to_thread.run_sync(engine.remove, [item_id])
        if not removed:
            raise HTTPException(404, "no item with that id")
        return WriteOut(id=item_id, changed=True, url=item_url(item_id))

    return router
