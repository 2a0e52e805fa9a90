"""Reference server "baseline": the usual FastAPI + sse-starlette server.

What most agent dashboards do today: one unbounded `asyncio.Queue` per client, the publisher puts
each event into every queue, and each client's generator encodes it (stdlib `json.dumps`) and
yields it to `EventSourceResponse`, which writes one chunk per event. No journal, no resume.
Served by uvicorn with uvloop and httptools, access log off.

    python bench/ref_baseline.py --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from sse_starlette.sse import EventSourceResponse

from common import EVENT_TYPE, STREAM, PublishSpec, publish_loop, raise_nofile

app = FastAPI()
queues: set[asyncio.Queue[dict[str, Any]]] = set()
state = {"seq": 0}


@app.get("/stream")
async def stream() -> EventSourceResponse:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    queues.add(queue)

    async def events() -> AsyncIterator[dict[str, Any]]:
        try:
            opened = {"stream": STREAM, "type": "stream.open", "data": {"head": state["seq"]}}
            yield {"event": "stream.open", "data": json.dumps(opened)}
            while True:
                envelope = await queue.get()
                yield {"id": str(envelope["seq"]), "event": envelope["type"], "data": json.dumps(envelope)}
        finally:
            queues.discard(queue)

    return EventSourceResponse(events(), ping=15)


@app.post("/bench/publish")
async def publish(request: Request) -> dict[str, Any]:
    async def emit(items: list[dict[str, Any]]) -> None:
        for data in items:
            state["seq"] += 1
            envelope = {"seq": state["seq"], "stream": STREAM, "type": EVENT_TYPE,
                        "ts": data["bts"] // 1_000_000, "data": data}
            for queue in tuple(queues):
                queue.put_nowait(envelope)

    return await publish_loop(PublishSpec.from_query(request.query_params), emit)


@app.get("/bench/stats")
async def stats() -> dict[str, Any]:
    return {"subscribers": len(queues), "published": state["seq"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    raise_nofile()
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False, backlog=4096)


if __name__ == "__main__":
    main()
