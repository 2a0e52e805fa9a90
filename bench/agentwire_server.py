"""agentwire under benchmark: the real app, served as `agentwire serve` serves it, plus two bench-only routes.

- `POST /bench/publish?n=&rate=&batch=&seconds=`: an in-process publisher that appends events to the
  `tasks` stream through the hub (`hub.append_many`, one call per batch), exactly the path an agent's
  events take: journal first, then fan-out to every subscriber;
- `GET /bench/stats`: open subscriptions and the stream's head.

Everything else is `agentwire.app.create_app(config)`, served on uvicorn with the settings of
`agentwire serve` (uvloop, httptools, no access log).

    python bench/agentwire_server.py --port 8000 --journal sqlite:///bench.db
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import Route

from agentwire.app import Context, create_app
from agentwire.config import Config
from agentwire.server import uvicorn_options
from agentwire.types import Append
from common import EVENT_TYPE, STREAM, PublishSpec, publish_loop, raise_nofile


def _context(request: Request) -> Context:
    context: Context = request.app.state.ctx
    return context


async def bench_publish(request: Request) -> JSONResponse:
    hub = _context(request).hub

    async def emit(items: list[dict[str, Any]]) -> None:
        await hub.append_many([Append(STREAM, EVENT_TYPE, data) for data in items])

    return JSONResponse(await publish_loop(PublishSpec.from_query(request.query_params), emit))


async def bench_stats(request: Request) -> JSONResponse:
    context = _context(request)
    position = await context.journal.position(STREAM)
    return JSONResponse({"subscribers": context.hub.subscription_count, "published": position.head})


def add_bench_routes(app: FastAPI) -> None:
    # In front of every other route, so that no catch-all of the app can shadow them.
    app.router.routes[0:0] = [
        Route("/bench/publish", bench_publish, methods=["POST"]),
        Route("/bench/stats", bench_stats, methods=["GET"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--journal", default="memory://")
    parser.add_argument("--heartbeat", type=float, default=15.0)
    args = parser.parse_args()
    raise_nofile()
    config = Config(host=args.host, port=args.port, journal=args.journal, no_auth=True,
                    heartbeat=args.heartbeat, log_level="warning")
    app = create_app(config)
    add_bench_routes(app)
    # The protocols and settings of `agentwire serve` (its own httptools protocol included).
    options = {**uvicorn_options(config), "timeout_graceful_shutdown": 2}
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", backlog=4096,  # the references' backlog
                **options)

if __name__ == "__main__":
    main()
