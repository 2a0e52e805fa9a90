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
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentwire import agents_api, tasks, ws
from agentwire.auth import TokenAuth
from agentwire.config import Config
from agentwire.console import Console
from agentwire.console import api as console_api
from agentwire.hub import Hub
from agentwire.journal import Journal, open_journal
from agentwire.metrics import Metrics
from agentwire.sse import stream_response
from agentwire.types import TASKS_STREAM, AgentwireError

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


def ctx(request: Request) -> Context:
    context: Context = request.app.state.ctx
    return context


class BodyTooLarge(AgentwireError):
    status = 413
    code = "body_too_large"


class BodyLimit:
    """Refuse request bodies over the limit with 413, by Content-Length or by counting what arrives."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                response = JSONResponse(BodyTooLarge(f"request body over {self.limit} bytes").body(), 413)
                await response(scope, receive, send)
                return
        # No Content-Length (chunked): read the body here, up to the limit, and hand it on whole. An
        # error raised from inside `receive` would reach the route as "could not parse the body"
        # (400), not as the 413 it is.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.limit:
                response = JSONResponse(BodyTooLarge(f"request body over {self.limit} bytes").body(), 413)
                await response(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()  # after the body: the disconnect, as the route expects

        await self.app(scope, replay, send)


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


def _field_name(location: tuple[object, ...]) -> str:
    parts = [str(part) for part in location if part not in ("body",)]
    return ".".join(parts) or "body"


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
            hub.close()
            await console.close()
            await journal.close()

    app = FastAPI(title="agentwire", version="1", lifespan=lifespan, docs_url="/api/docs", redoc_url=None)
    app.state.ctx = context

    @app.exception_handler(AgentwireError)
    async def agentwire_error(request: Request, exc: AgentwireError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        # Malformed JSON is located at ("body", <offset>): the field is the body, not "0".
        field = "body" if first.get("type") == "json_invalid" else _field_name(tuple(first.get("loc", ())))
        message = f"{field}: {first.get('msg', 'invalid')}"
        errors = [{"field": _field_name(tuple(e.get("loc", ()))), "message": e.get("msg", "")}
                  for e in exc.errors()]
        return JSONResponse({"error": {"code": "validation_error", "message": message, "field": field,
                                       "errors": errors}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)

    app.include_router(tasks.router(lambda request: ctx(request).board))
    app.include_router(console_api.router(lambda request: ctx(request).console))
    app.include_router(agents_api.router(lambda request: ctx(request).console))
    app.router.routes.append(ws.route(hub, console, config))

    @app.get("/api/stream/tasks", tags=["streams"])
    async def stream_tasks(request: Request) -> Response:
        c = ctx(request)
        return await stream_response(request, c.hub, TASKS_STREAM, heartbeat=c.config.heartbeat,
                                     retry_ms=c.config.retry_ms, default_at_head=True)

    @app.get("/healthz", tags=["ops"])
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

    @app.get("/metrics", tags=["ops"])
    async def prometheus(request: Request) -> Response:
        return Response(ctx(request).metrics.render(), media_type="text/plain; version=0.0.4")

    web = resources.files("agentwire") / "web"

    @app.get("/", include_in_schema=False)
    async def dashboard() -> Response:
        index = web / "index.html"
        if not index.is_file():
            return JSONResponse({"error": {"code": "no_dashboard", "message": "dashboard not built"}}, 404)
        return FileResponse(str(index), headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(web), check_dir=False), name="static")

    app.add_middleware(BodyLimit, limit=config.max_body)
    app.add_middleware(TokenAuth, token=None if config.no_auth else config.token)
    return app
