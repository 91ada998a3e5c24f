"""Running the app under uvicorn with the service's log policy (no uvicorn access log: it prints raw paths) and
its connection limits (header timeout, keep-alive timeout, connection limit)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from mcmfh.service.settings import Settings


def log_config() -> dict:
    """uvicorn's own logging, plus the service's access and error loggers on stderr."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["mcmfh.service"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def header_timeout_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a header timeout, which this uvicorn lacks: its keep-alive timer only starts
    after a first response, so a client that connects and trickles (or never sends) headers holds a connection
    for ever (slowloris). Here a connection whose request headers are not complete ``timeout_s`` after its first
    byte of a request (or after connecting) is closed."""

    class HeaderTimeoutProtocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            self._served = 0  # responses completed on this connection: a timer armed for an earlier request is moot

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm()
            super().data_received(data)

        def on_response_complete(self) -> None:
            self._served += 1
            self._disarm()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(timeout_s, self._expire, self._served)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self, served: int) -> None:
            self._header_timer = None
            if served == self._served and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


def make_server(app: FastAPI, host: str, port: int, settings: Settings | None = None) -> uvicorn.Server:
    """A uvicorn server for ``app``; call ``.run()`` (blocks), or run it in a thread and set ``should_exit``."""
    settings = settings or Settings()
    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, log_config=log_config(), server_header=False,
        http=header_timeout_protocol(settings.header_timeout_s), timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
    )  # fmt: skip
    return uvicorn.Server(config)
