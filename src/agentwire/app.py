"""The ASGI application: REST API, SSE and WebSocket streams, the dashboard, health and metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from types import FrameType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from agentwire import agents_api, agui, aisdk, openapi, tasks, ws
from agentwire.auth import TokenAuth
from agentwire.body import RequestBody
from agentwire.config import Config
from agentwire.console import api as console_api
from agentwire.console.runtime import Console
from agentwire.hub import Hub
from agentwire.journal import Journal, open_journal
from agentwire.metrics import Metrics
from agentwire.openapi import errors, stream_responses
from agentwire.security import SecurityHeaders, SiteGuard
from agentwire.sse import EventStreamResponse, stream_response
from agentwire.types import TASKS_STREAM, AgentwireError, ValidationFailed

log = logging.getLogger("agentwire")


@dataclass
class Context:
    """Everything a request handler may need, built once per app."""

    config: Config
    journal: Journal
    hub: Hub
    metrics: Metrics
    board: tasks.Board
    console: Console


class Health(BaseModel):
    status: str
    journal: str
    streams_open: int
    pid: int | None = None


class HealthDown(BaseModel):
    status: str
    journal: str
    error: str


def ctx(request: Request) -> Context:
    context: Context = request.app.state.ctx
    return context


def _end_streams_on_signal(hub: Hub) -> None:
    """uvicorn waits for open responses before it stops, and an event stream never ends by itself:
    on SIGTERM/SIGINT end every stream first, then let uvicorn's own handler run (chained, so this
    holds for `agentwire serve` and for each `--workers` process alike)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(hub.close)
            previous(signum, frame)

        signal.signal(sig, handler)


def create_app(config: Config, journal: Journal | None = None) -> FastAPI:
    journal = journal or open_journal(config.journal, retention=config.retention)
    metrics = Metrics()
    hub = Hub(journal, metrics, buffer_limit=config.buffer_limit, heartbeat=config.heartbeat)
    board = tasks.Board(hub)
    console = Console(hub, board, config)
    context = Context(config, journal, hub, metrics, board, console)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await journal.start()
        await console.start()
        _end_streams_on_signal(hub)
        try:
            yield
        finally:
            # Streams end first (clients resume elsewhere), then turns record their end, then the
            # hub's own tasks are awaited, and the journal stores what is queued and closes.
            hub.close()
            await console.close()
            await hub.aclose()
            await journal.close()

    app = FastAPI(title="agentwire", version="1", lifespan=lifespan, docs_url="/api/docs", redoc_url=None)
    app.state.ctx = context

    @app.exception_handler(AgentwireError)
    async def agentwire_error(request: Request, exc: AgentwireError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = ValidationFailed(exc.errors())
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)

    openapi.install(app, auth=not config.no_auth)
    app.include_router(tasks.router(lambda request: ctx(request).board))
    app.include_router(console_api.router(lambda request: ctx(request).console))
    app.include_router(agui.router(lambda request: ctx(request).console))
    app.include_router(aisdk.router(lambda request: ctx(request).console))
    app.include_router(agents_api.router(lambda request: ctx(request).console))
    app.router.routes.append(ws.route(hub, console, config))

    @app.get("/api/stream/tasks", tags=["streams"], response_class=EventStreamResponse, status_code=200,
             responses={**stream_responses(), **errors(400)})
    async def stream_tasks(request: Request) -> Response:
        c = ctx(request)
        return await stream_response(request, c.hub, TASKS_STREAM,
                                     retry_ms=c.config.retry_ms)

    @app.get("/healthz", tags=["ops"], responses={
        200: {"model": Health, "description": "The journal answers"},
        503: {"model": HealthDown, "description": "The journal cannot be reached"}})
    async def healthz(request: Request) -> JSONResponse:
        c = ctx(request)
        try:
            await c.journal.ping()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "journal": c.journal.url.split("://")[0],
                                 "error": str(exc)}, status_code=503)
        health = {"status": "ok", "journal": c.journal.url.split("://")[0], "streams_open": c.hub.subscription_count}
        if c.config.workers > 1:  # which `--workers` process answered, for checks that must tell them apart
            health["pid"] = os.getpid()
        return JSONResponse(health)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text format 0.0.4"}})
    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(ctx(request).metrics.render(), media_type="text/plain; version=0.0.4")

    web = resources.files("agentwire") / "web"

    @app.get("/", include_in_schema=False)
    async def dashboard() -> Response:
        index = web / "index.html"
        if not index.is_file():
            return JSONResponse({"error": {"code": "no_dashboard", "message": "dashboard not built"}}, 404)
        return FileResponse(str(index), headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(web), check_dir=False), name="static")

    # Outermost last: headers on every answer, then Host/Origin before the token is even looked at.
    app.add_middleware(RequestBody, limit=config.max_body)
    app.add_middleware(TokenAuth, token=None if config.no_auth else config.token)
    app.add_middleware(SiteGuard, listen_host=config.host, allowed_hosts=config.allowed_hosts,
                       allowed_origins=config.allowed_origins, trust_forwarded=config.trust_forwarded)
    app.add_middleware(SecurityHeaders)
    return app
