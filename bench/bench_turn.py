"""An agent turn streamed to one viewer: events/s from `POST …/stream` to the turn's last event.

The path every agent event takes, end to end: the scripted agent (`deltas`, `delay_ms: 0`) reports
each text delta through `TurnIO`; agentwire journals it (SQLite, WAL) before the hub hands it to the
one subscription the POST opened, which frames it as SSE. Beside it, in the same run:

- baseline — FastAPI + sse-starlette, the turn's events put into one `asyncio.Queue` per client and
  encoded per event with `json.dumps` (what most agent dashboards do; no journal);
- limit — a bare asyncio server writing each event's pre-framed bytes straight to the socket.

Both references produce the same events as the scripted agent: a delta per loop iteration, yielding
to the loop after each (`asyncio.sleep(0)`, as the scripted agent does with no delay). The server
runs pinned to one core and this client to the other (taskset), when the machine has two or more.
The client reads the response over a raw socket and counts SSE events (`id:` lines).

    .venv/bin/python bench/bench_turn.py [--deltas 200000] [--repeats 3]   # prints the figures
    .venv/bin/python bench/run.py --cases turn                             # as a table of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import call_json, healthy_server, pin_clients, pinning, raise_nofile

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
TARGETS = ("agentwire", "baseline", "limit")
WORD = "journaled "  # about one word per delta, as the scripted agent streams


def _turn_events(deltas: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """The references' turn: as many events as the scripted agent's with thinking and tools off."""
    yield "turn.started", {"message": "bench"}
    yield "state", {"agent_state": "writing"}
    for index in range(deltas):
        yield "text.delta", {"block": 0, "text": WORD}
        if index == deltas - 1:
            yield "text.done", {"block": 0, "text": WORD * deltas}
    yield "turn.completed", {"stop_reason": "end_turn"}


# --------------------------------------------------------------------------- reference servers


def serve_baseline(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from sse_starlette.sse import EventSourceResponse

    app = FastAPI()
    state = {"seq": 0}

    @app.post("/api/konsole/{session}/stream")
    async def stream(session: str, body: dict[str, Any]) -> EventSourceResponse:
        deltas = int(body.get("deltas", 1000))
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def produce() -> None:
            for type_, data in _turn_events(deltas):
                state["seq"] += 1
                queue.put_nowait({"seq": state["seq"], "stream": f"konsole/{session}", "type": type_,
                                  "ts": time.time_ns() // 1_000_000, "turn": "t1", "lane": "main", "data": data})
                await asyncio.sleep(0)
            queue.put_nowait(None)

        async def events() -> AsyncIterator[dict[str, Any]]:
            producer = asyncio.create_task(produce())
            try:
                while (envelope := await queue.get()) is not None:
                    yield {"id": str(envelope["seq"]), "event": envelope["type"], "data": json.dumps(envelope)}
            finally:
                producer.cancel()

        return EventSourceResponse(events(), ping=15)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    uvicorn.run(app, host=HOST, port=port, loop="uvloop", http="httptools", log_level="warning", access_log=False)


def serve_limit(port: int) -> None:
    import orjson
    import uvloop

    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
            b"Connection: close\r\n\r\n")
    high_water = 256 * 1024

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in request.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = orjson.loads(await reader.readexactly(length)) if length else {}
            if request.startswith(b"GET /healthz"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}")
                return
            session = request.split(b" ", 2)[1].split(b"/")[3].decode()
            writer.write(head)
            transport = writer.transport
            seq = 0
            for type_, data in _turn_events(int(body.get("deltas", 1000))):
                seq += 1
                envelope = orjson.dumps({"seq": seq, "stream": f"konsole/{session}", "type": type_,
                                         "ts": time.time_ns() // 1_000_000, "turn": "t1", "lane": "main",
                                         "data": data})
                transport.write(b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type_.encode(), envelope))
                if transport.get_write_buffer_size() > high_water:
                    await writer.drain()
                else:
                    await asyncio.sleep(0)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, HOST, port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def serve_agentwire(port: int, journal: str) -> None:
    import uvicorn

    from agentwire.app import create_app
    from agentwire.config import Config
    from agentwire.server import uvicorn_options

    config = Config(host=HOST, port=port, journal=journal, no_auth=True, log_level="warning")
    # As `agentwire serve` runs: its own HTTP protocol, whose sink writes streams straight to the socket.
    options = {**uvicorn_options(config), "timeout_graceful_shutdown": 2}
    uvicorn.run(create_app(config), host=HOST, port=port, loop="uvloop", **options)


@contextmanager
def _server(target: str, workdir: Path) -> Iterator[tuple[int, int]]:
    """A target's server process, pinned to its core; yields (port, pid)."""
    argv = lambda port: [sys.executable, str(Path(__file__).resolve()), "serve", target, "--port", str(port),  # noqa: E731
                         "--journal", f"sqlite:///{workdir / f'turn-{port}.db'}"]
    with healthy_server(argv, workdir, target, cwd=BENCH_DIR) as (port, proc):
        yield port, proc.pid


# --------------------------------------------------------------------------- the viewer


def _read_turn(sock: socket.socket) -> tuple[int, int, bool]:
    """Count a stream's SSE events until the turn's terminal one: (events, last id, ended)."""
    events, last_id = 0, 0
    tail = b""
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return events, last_id, False
        # Frames may be split across reads: search the joined edge, count only what is new.
        window = tail + chunk
        events += window.count(b"\nid: ") - tail.count(b"\nid: ")
        at = window.rfind(b"\nid: ")
        if at >= 0 and window.find(b"\n", at + 5) > 0:
            last_id = int(window[at + 5 : window.index(b"\n", at + 5)])
        if b"event: turn.completed" in window or b"event: turn.failed" in window:
            return events, last_id, True
        tail = window[-64:]


def _request(port: int, head: str, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=120)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.sendall(f"{head}\r\nHost: {HOST}\r\nContent-Length: {len(data)}\r\n"
                 "Content-Type: application/json\r\n\r\n".encode() + data)
    return sock


def _turn(port: int, session: str, body: dict[str, Any]) -> tuple[int, float, int]:
    """POST a turn and read its stream to the end: (events, seconds from sending to the terminal
    event, resumes). A viewer cut off mid-turn (as "slow") resumes from its last id on the session's
    event stream, as the dashboard does; the time of that is counted."""
    started = time.perf_counter()
    with _request(port, f"POST /api/konsole/{session}/stream HTTP/1.1", json.dumps(body).encode()) as sock:
        events, last_id, ended = _read_turn(sock)
    resumes = 0
    while not ended and resumes < 10:
        resumes += 1
        with _request(port, f"GET /api/konsole/{session}/events HTTP/1.1\r\nLast-Event-ID: {last_id}") as sock:
            more, last, ended = _read_turn(sock)
        events += more
        last_id = last or last_id
    if not ended:
        raise RuntimeError(f"the turn did not end after {events} events and {resumes} resumes")
    return events, time.perf_counter() - started, resumes


def measure(target: str, deltas: int, repeats: int, workdir: Path, notes: list[str]) -> list[float]:
    """events/s of `repeats` turns of `deltas` deltas against a fresh server of `target`."""
    rates = []
    with _server(target, workdir) as (port, _pid):
        # One short turn first, not counted: the first request of a fresh process pays for imports
        # and caches the others do not.
        for index in range(-1, repeats):
            size = min(deltas, 2000) if index < 0 else deltas
            session = f"turn{index + 1}"
            if target == "agentwire":
                call_json(port, "POST", "/api/konsole", {"name": session, "provider": "scripted", "options": {
                    "deltas": size, "delay_ms": 0, "thinking": False, "tool_calls": 0}})
                body: dict[str, Any] = {"message": "bench"}
            else:
                body = {"message": "bench", "deltas": size}
            events, seconds, resumes = _turn(port, session, body)
            if events < size:
                raise RuntimeError(f"{target}: the turn ended after {events} events of at least {size}")
            if index < 0:
                continue
            rates.append(events / seconds)
            if resumes:
                notes.append(f"{target}, run {index + 1}: the viewer was cut and resumed {resumes}×")
    return rates


def run(deltas: int = 200_000, repeats: int = 3, targets: tuple[str, ...] = TARGETS,
        workdir: Path | None = None, notes: list[str] | None = None) -> dict[str, list[float]]:
    pin_clients()
    with tempfile.TemporaryDirectory(prefix="bench-turn-") as tmp:
        base = workdir or Path(tmp)
        return {target: measure(target, deltas, repeats, base, [] if notes is None else notes)
                for target in targets}


def case_turn(ctx: Any, table_class: Any) -> Any:
    """For `bench/run.py`."""
    deltas, repeats = (20_000, 1) if ctx.args.quick else (200_000, 3)
    table = table_class("turn", f"An agent turn streamed to one viewer: {deltas:,} deltas, events/s",
                        f"The scripted agent with `deltas: {deltas}, delay_ms: 0` (thinking and tools off), read "
                        "from `POST /api/konsole/{s}/stream` over a raw socket; events/s from sending the POST to the "
                        f"turn's last event, median of {repeats}. agentwire journals every event (SQLite, WAL) "
                        "before delivering it; the references hold nothing. "
                        + ("Server and client pinned to separate cores. " if pinning() else "")
                        + "Target: agentwire ≥ 2.5× baseline.")
    row = table.row("events/s")
    runs = table.row("runs", fmt="{}", ratio=False)
    selected = [t.name for t in ctx.targets if t.name in TARGETS]
    affinity = os.sched_getaffinity(0)
    try:
        for target in selected:
            try:
                rates = run(deltas, repeats, (target,), ctx.workdir, table.notes)[target]
            except Exception as exc:
                table.fail(target, exc)
                continue
            row.values[target] = statistics.median(rates)
            runs.values[target] = ", ".join(f"{r:,.0f}" for r in rates)
    finally:
        os.sched_setaffinity(0, affinity)
    a, b = row.values.get("agentwire"), row.values.get("baseline")
    ratio = a / b if isinstance(a, float) and isinstance(b, float) and b else None
    table.check("agent turn: agentwire ≥ 2.5× baseline", ratio, "{:.2f}×", lambda r: r >= 2.5)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve")
    serve.add_argument("target", choices=TARGETS)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--journal", default="memory://")
    parser.add_argument("--deltas", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args()
    if args.command == "serve":
        raise_nofile()
        if args.target == "agentwire":
            serve_agentwire(args.port, args.journal)
        elif args.target == "baseline":
            serve_baseline(args.port)
        else:
            serve_limit(args.port)
        return
    notes: list[str] = []
    results = run(args.deltas, args.repeats, tuple(args.targets.split(",")), notes=notes)
    for note in notes:
        print(note)
    for target, rates in results.items():
        print(f"{target:10s} median {statistics.median(rates):>10,.0f} events/s   runs "
              + ", ".join(f"{r:,.0f}" for r in rates))
    if "agentwire" in results and "baseline" in results:
        ratio = statistics.median(results["agentwire"]) / statistics.median(results["baseline"])
        print(f"agentwire : baseline = {ratio:.2f}x (pinned: {pinning()})")


if __name__ == "__main__":
    main()
