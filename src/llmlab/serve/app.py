"""The playground application: the OpenAI-compatible API, the playground's routes and the web UI.

    create_app(registry, ...)  -> a FastAPI app (tests and the benchmark start it on a free port)
    run_server(app, host, port) -> serve it with uvicorn until interrupted
    BackgroundServer(app)       -> the same in a thread, on 127.0.0.1 and a free port, as a context manager
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from llmlab import __version__
from llmlab.serve import history, openai_api, playground_api
from llmlab.serve.api_errors import install_handlers
from llmlab.serve.dispatch import Generator
from llmlab.serve.history import HistoryStore
from llmlab.serve.limits import BodySizeLimit, Limits
from llmlab.serve.registry import ModelRegistry
from llmlab.serve.security import HostAllowList, allowed_hosts, check_key
from llmlab.serve.worker import GenerationWorker

STATIC = Path(__file__).parent / "static"


def create_app(registry: ModelRegistry, limits: Limits | None = None, history_path: str | os.PathLike = ":memory:",
               api_key: str | None = None, hosts: set[str] | None = None) -> FastAPI:
    """The whole playground as one ASGI app; `api_key` None leaves the API open (as on 127.0.0.1).

    `hosts`: the Host header names it answers (default: loopback names only; see `security.allowed_hosts`).
    """
    registry.require_models()
    limits = limits or Limits()
    worker = GenerationWorker(limits.max_batch, limits.max_queued, limits.step_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.shutdown()
        app.state.history.close()

    app = FastAPI(title="llmlab playground", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)  # Swagger UI would load from a CDN
    app.state.generator = Generator(registry, worker, limits)
    app.state.history = HistoryStore(history_path)
    app.state.api_key = api_key or None
    install_handlers(app)
    guarded = [Depends(check_key)]
    app.include_router(openai_api.router, dependencies=guarded)
    app.include_router(playground_api.router, dependencies=guarded)
    app.include_router(history.router, dependencies=guarded)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}  # open to load balancers, so it names nothing (models are in /v1/models)

    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(HostAllowList, hosts=hosts if hosts is not None else allowed_hosts())
    return app


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=3)


class BackgroundServer:
    """Serve `app` from a thread on 127.0.0.1 (port 0: a free one); `url` is known once entered."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="llmlab-serve", daemon=True)
        self.url = ""

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the playground server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
