"""Running the app under uvicorn with the service's log policy (no uvicorn access log: it prints raw paths)."""

from __future__ import annotations

import copy

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG


def log_config() -> dict:
    """uvicorn's own logging, plus the service's access and error loggers on stderr."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["mcmfh.service"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def make_server(app: FastAPI, host: str, port: int, timeout_keep_alive: int = 5) -> uvicorn.Server:
    """A uvicorn server for ``app``; call ``.run()`` (blocks), or run it in a thread and set ``should_exit``."""
    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, log_config=log_config(), server_header=False,
        timeout_keep_alive=timeout_keep_alive,
    )  # fmt: skip
    return uvicorn.Server(config)
