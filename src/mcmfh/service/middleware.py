"""ASGI middlewares: access log without request data, JSON 500s, bearer auth, request-body size limits.

Pure ASGI (not BaseHTTPMiddleware) so bodies are streamed through, counted as they arrive, never buffered here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mcmfh.service.security import bearer_matches
from mcmfh.service.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_logger = logging.getLogger("mcmfh.service.access")
error_logger = logging.getLogger("mcmfh.service.error")

# The page shell and API docs hold no data; everything else (search, items, images, health) needs the token.
PUBLIC_PATHS = frozenset({"/", "/favicon.ico", "/docs", "/openapi.json"})
PUBLIC_PREFIXES = ("/static/", "/docs-assets/")
UPLOAD_PATHS = frozenset({"/search/image"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def send_json(send: Send, status: int, payload: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    # path_format: "/items/{item_id}" without the ":path" convertor; an unmatched raw path may carry data: not logged
    return getattr(route, "path_format", None) or getattr(route, "path", None) or "<no route>"


class AccessLogMiddleware:
    """Logs method, route template, status and duration (policy in Settings.access_log) and turns any escaped
    exception into a JSON 500 without internals, so one bad request never takes the server down."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, state = time.perf_counter(), {"status": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as e:
            error_logger.error(
                "server error on %s %s: %s", scope["method"], _route_template(scope), type(e).__name__,
                exc_info=self.settings.debug,
            )  # fmt: skip
            if not state["started"]:
                await send_json(send_wrapper, 500, {"error": "internal server error"})
        finally:
            self._log(scope, state["status"], (time.perf_counter() - start) * 1000)

    def _log(self, scope: Scope, status: int, ms: float) -> None:
        policy = self.settings.access_log
        if policy == "off":
            return
        where = _route_template(scope)
        if policy == "full":
            where += f" path={scope['path']}"
        access_logger.info("%s %s %d %.1fms", scope["method"], where, status, ms)


class AuthMiddleware:
    """Bearer-token check (constant time) on every non-public path when a token is configured."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.token = app, settings.token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if not bearer_matches(authorization, self.token):
            await send_json(send, 401, {"error": "missing or invalid bearer token"}, [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuses bodies over the limit: early from Content-Length, and by counting the bytes as they stream in (a
    client can lie or send chunked). The app may turn the interruption into its own error; the 413 replaces it."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def _limit(self, path: str) -> int:
        return self.settings.max_upload_bytes if path in UPLOAD_PATHS else self.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        too_large = {"error": f"request body is over the limit of {limit} bytes"}
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                declared_n = int(declared)
            except ValueError:
                await send_json(send, 400, {"error": "Content-Length header is not a number"})
                return
            if declared_n > limit:
                await send_json(send, 413, too_large)
                return
        state = {"seen": 0, "exceeded": False, "replaced": False}

        async def receive_counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    state["exceeded"] = True
                    raise _BodyTooLarge
            return message

        async def send_checked(message: Message) -> None:
            if not state["exceeded"]:
                await send(message)
            elif message["type"] == "http.response.start" and not state["replaced"]:
                state["replaced"] = True
                await send_json(send, 413, too_large)
            # else: drop the app's own body for the replaced response

        try:
            await self.app(scope, receive_counted, send_checked)
        except _BodyTooLarge:
            if not state["replaced"]:
                await send_json(send, 413, too_large)


# The page loads only its own files; images come as blob: URLs (fetched with the token). Swagger UI needs an inline
# bootstrap script and data: icons, so /docs gets a slightly wider policy.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeadersMiddleware:
    """No MIME sniffing, no referrer leaking ids to other sites, no framing, and a same-origin content policy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"] == "/docs" else PAGE_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", csp.encode()),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
