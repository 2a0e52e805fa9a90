"""WebSocket benchmarks of agentwire: fan-out over `/api/ws` beside SSE, and one socket carrying many streams.

- `fanout`: one stream (`tasks`), N subscribers over SSE and then over WebSocket, the same publisher
  (M events/s for S seconds); publish→receive latency of every delivery, server CPU per 100k deliveries,
  lost events (published × connected − received);
- `multiplex`: one WebSocket subscribed to K console streams, every stream published to at R events/s;
  latency, deliveries, gaps or repeats per stream, server CPU.

Each case starts the agentwire bench server (`agentwire_server.py`'s app and routes, plus one route of
this file that publishes to many streams) as a process of its own; load clients are forked processes
that speak raw HTTP/WebSocket, as cheap per event as Python allows (the SSE one is `sse_client.py`).
Nothing asserts a timing: it measures and reports.

    .venv/bin/python bench/bench_ws.py                 # both cases, full size
    .venv/bin/python bench/bench_ws.py --quick         # a smoke run of a few seconds
    .venv/bin/python bench/bench_ws.py --cases multiplex --streams 100

For `bench/run.py`: `case_ws_fanout(ctx, table_class)` and `case_ws_multiplex(ctx, table_class)` take
run.py's `Context` (they read `ctx.args` and `ctx.workdir`) and its `Table` class, and return a table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    PublishSpec,
    cpu_seconds,
    free_port,
    percentile,
    pin_clients,
    publish_loop,
    raise_nofile,
    request_json,
    server_argv,
    split,
)
from load_clients import Clients
from sse_client import ClientSpec, client_process, latencies_from
from ws_client import WsSpec, ws_client_process

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
SESSION_PREFIX = "bench-"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the server


def serve(argv: list[str]) -> None:
    """`bench_ws.py serve`: the agentwire bench server, plus `POST /bench/ws/publish?streams=K&…`
    (one event to each of K console streams per round, one journal call per round) and
    `POST /bench/ws/setup?streams=K` (creates the K sessions `bench-0` … `bench-<K-1>`)."""
    import uvicorn
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.routing import Route

    from agentwire.app import create_app
    from agentwire.config import Config
    from agentwire.console.sessions import SessionIn
    from agentwire.server import uvicorn_options
    from agentwire.types import Append, Conflict, session_stream
    from agentwire_server import add_bench_routes

    parser = argparse.ArgumentParser(prog="bench_ws.py serve")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", default="memory://")
    args = parser.parse_args(argv)

    async def setup(request: Request) -> JSONResponse:
        console = request.app.state.ctx.console
        streams = int(request.query_params.get("streams", "1"))
        for index in range(streams):
            with contextlib.suppress(Conflict):
                await console.create_session(SessionIn(name=f"{SESSION_PREFIX}{index}"))
        return JSONResponse({"streams": streams})

    async def publish(request: Request) -> JSONResponse:
        hub = request.app.state.ctx.hub
        names = [session_stream(f"{SESSION_PREFIX}{i}") for i in range(int(request.query_params.get("streams", "1")))]

        async def emit(items: list[dict[str, Any]]) -> None:
            await hub.append_many([Append(name, "bench", data) for data in items for name in names])

        result = await publish_loop(PublishSpec.from_query(request.query_params), emit)
        result["published"] *= len(names)
        return JSONResponse(result)

    raise_nofile()
    config = Config(host=args.host, port=args.port, journal=args.journal, no_auth=True, log_level="warning",
                    quick_pool=0)
    app = create_app(config)
    add_bench_routes(app)
    app.router.routes[0:0] = [Route("/bench/ws/publish", publish, methods=["POST"]),
                              Route("/bench/ws/setup", setup, methods=["POST"])]
    # As `agentwire serve` runs it (its own httptools protocol included), except that permessage-deflate
    # is accepted when offered, as uvicorn does by default, for the "ws+deflate" row; the plain
    # WebSocket client does not offer it, so its frames go uncompressed as they do in production.
    options = {**uvicorn_options(config), "timeout_graceful_shutdown": 2, "ws_per_message_deflate": True}
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", backlog=4096, **options)


class Server:
    """The bench server process, in its own session so that it can be ended whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port(HOST)
        self.log_path = workdir / f"ws-server-{self.port}.log"
        argv = server_argv([sys.executable, str(BENCH_DIR / "bench_ws.py"), "serve", "--port", str(self.port),
                            "--journal", f"sqlite:///{workdir / f'ws-{self.port}.db'}"])
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=BENCH_DIR, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench server exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                self.request("GET", "/bench/stats", 2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def request(self, method: str, path: str, timeout: float) -> dict[str, Any]:
        return request_json(self.port, method, path, timeout)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()



# --------------------------------------------------------------------------- measurements


@dataclass
class Result:
    connected: int = 0
    published: int = 0
    received: int = 0
    lost: int = 0
    gaps: int = 0
    repeats: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    cpu_per_100k: float | None = None
    busy_pct: float = 0.0
    client_cpu: float = 0.0
    notes: list[str] = field(default_factory=list)


def _measure(server: Server, jobs: list[tuple[Any, Any]], publish: str, spec: PublishSpec,
             expected_per_connection: int, drain: float) -> Result:
    result = Result()
    with Clients(jobs) as clients:
        ready = clients.receive("ready", 180)
        result.connected = sum(r["open"] for r in ready)
        failed = sum(r["error_count"] for r in ready)
        if failed:
            result.notes.append(f"{failed} connections failed to open: {ready[0]['errors'][:2]}")
        cpu0, wall0 = server.cpu(), time.monotonic()
        timeout = spec.n / spec.rate + 120 if spec.rate else 300
        result.published = server.request("POST", f"{publish}{spec.query()}", timeout)["published"]
        results = clients.receive("result", drain + 60)
        cpu, wall = server.cpu() - cpu0, time.monotonic() - wall0
    result.received = sum(r["received"] for r in results)
    result.lost = expected_per_connection * result.connected - result.received
    result.gaps = sum(r["gaps"] for r in results)
    result.repeats = sum(r["repeats"] for r in results)
    result.errors = sum(r["error_count"] for r in results)
    result.client_cpu = sum(r["cpu_seconds"] for r in results)
    if result.errors:
        result.notes.append(f"connections ended early: {result.errors} ({results[0]['errors'][:2]})")
    latencies = sorted(v for r in results for v in latencies_from(r))
    if latencies:
        result.p50_ms = percentile(latencies, 0.50) / 1e6
        result.p99_ms = percentile(latencies, 0.99) / 1e6
        result.max_ms = latencies[-1] / 1e6
    result.cpu_per_100k = cpu * 100_000 / result.received if result.received else None
    result.busy_pct = 100 * cpu / wall
    return result


def fanout(workdir: Path, transport: str, subscribers: int, rate: float, seconds: float, processes: int,
           drain: float) -> Result:
    """N subscribers of the `tasks` stream over `transport` ("sse", "ws", or "ws+deflate": WebSocket
    with permessage-deflate negotiated, as browsers do), `rate` events/s."""
    with Server(workdir) as server:
        counts = split(subscribers, processes)
        deadline = seconds + drain + 10
        if transport == "sse":
            jobs: list[tuple[Any, Any]] = [(client_process, ClientSpec(HOST, server.port, "/api/stream/tasks", n,
                                                                       "latency", deadline=deadline)) for n in counts]
        else:
            jobs = [(ws_client_process, WsSpec(HOST, server.port, ("tasks",), n, deadline,
                                               deflate=transport == "ws+deflate")) for n in counts]
        n = max(1, round(rate * seconds))
        return _measure(server, jobs, "/bench/publish?", PublishSpec(n=n, rate=rate), n, drain)


def multiplex(workdir: Path, streams: int, rate: float, seconds: float, drain: float) -> Result:
    """One WebSocket subscribed to `streams` console streams, each published to at `rate` events/s."""
    with Server(workdir) as server:
        server.request("POST", f"/bench/ws/setup?streams={streams}", 120)
        names = tuple(f"konsole/{SESSION_PREFIX}{i}" for i in range(streams))
        # Each stream starts with its `session.created` event, which the subscription replays first.
        spec = WsSpec(HOST, server.port, names, 1, deadline=seconds + drain + 10)
        rounds = max(1, round(rate * seconds))
        result = _measure(server, [(ws_client_process, spec)], f"/bench/ws/publish?streams={streams}&",
                          PublishSpec(n=rounds, rate=rate), rounds * streams + streams, drain)
        result.published += streams  # the session.created events
        return result


# --------------------------------------------------------------------------- tables (run.py) and __main__


COLUMN = "agentwire"  # run.py renders one column per target; these cases measure agentwire alone
METRICS = [  # key, label, format
    ("connected", "connected", "{:,.0f}"),
    ("p50", "latency p50 (ms)", "{:,.2f}"),
    ("p99", "latency p99 (ms)", "{:,.2f}"),
    ("max", "latency max (ms)", "{:,.1f}"),
    ("cpu", "server CPU-s per 100k deliveries", "{:,.3f}"),
    ("busy", "server CPU busy (% of one core)", "{:,.0f}"),
    ("deliveries", "deliveries", "{:,.0f}"),
    ("lost", "events lost", "{:,.0f}"),
]
LABELS = {"sse": "SSE", "ws": "WebSocket", "ws+deflate": "WebSocket + deflate"}


def _rows(table: Any, transports: list[str]) -> dict[tuple[str, str], Any]:
    """One row per metric and transport, so that the table renders in run.py's one-column-per-target form."""
    return {(key, t): table.row(f"{label}, {LABELS[t]}", fmt=fmt, ratio=False)
            for key, label, fmt in METRICS for t in transports}


def _fill(table: Any, transport: str, result: Result, rows: dict[tuple[str, str], Any]) -> None:
    values = {"connected": result.connected, "p50": result.p50_ms, "p99": result.p99_ms, "max": result.max_ms,
              "cpu": result.cpu_per_100k, "busy": result.busy_pct, "deliveries": result.received,
              "lost": result.lost}
    for (key, t), row in rows.items():
        if t == transport:
            row.values[COLUMN] = values[key]
    label = LABELS[transport]
    for note in result.notes:
        table.notes.append(f"{label}: {note}")
    if result.gaps or result.repeats:
        table.notes.append(f"{label}: gaps in seqs {result.gaps}, repeated seqs {result.repeats}")
    table.notes.append(f"{label}: {result.published:,} events published; load clients used "
                       f"{result.client_cpu:.1f} CPU-s")


def case_ws_fanout(ctx: Any, table_class: Any) -> Any:
    """For run.py: `Case("ws_fanout", lambda ctx: bench_ws.case_ws_fanout(ctx, Table))`."""
    args = ctx.args
    subs, rate, seconds = args.fanout_subscribers, args.fanout_rate, args.fanout_seconds
    transports = ["sse", "ws", "ws+deflate"]
    table = table_class("ws_fanout", f"WebSocket fan-out: {subs:,} subscribers × {rate:g} events/s for {seconds:g} s",
                        "The agentwire server alone, one stream (`tasks`); the same run over SSE "
                        "(`/api/stream/tasks`) and over WebSocket (`/api/ws`, one subscribe per socket), "
                        "without and with permessage-deflate (which browsers always offer and uvicorn accepts "
                        "by default). Latency publish→receive of every delivery; server CPU from /proc/<pid>/stat.")
    rows = _rows(table, transports)
    for transport in transports:
        log(f"ws_fanout: {transport}")
        try:
            result = fanout(ctx.workdir, transport, subs, rate, seconds, args.client_processes, args.drain_seconds)
        except Exception as exc:
            table.notes.append(f"{LABELS[transport]}: error: {type(exc).__name__}: {exc}"[:600])
            continue
        _fill(table, transport, result, rows)
    sse, ws = rows[("cpu", "sse")].values.get(COLUMN), rows[("cpu", "ws")].values.get(COLUMN)
    relative = ws / sse if isinstance(ws, float | int) and isinstance(sse, float | int) and sse else None
    table.row("server CPU per delivery, WebSocket : SSE", fmt="{:.2f}×", ratio=False).values[COLUMN] = relative
    if hasattr(table, "check"):
        table.check("WebSocket CPU per delivery ≤ 1.2× SSE", relative, "{:.2f}×", lambda r: r <= 1.2)
    table.notes.append(f"Lost = published × connected − received within {args.drain_seconds:g} s after the last "
                       "publish (late, not dropped: the clients check seqs for gaps).")
    return table


def case_ws_multiplex(ctx: Any, table_class: Any) -> Any:
    """For run.py: `Case("ws_multiplex", lambda ctx: bench_ws.case_ws_multiplex(ctx, Table))`."""
    args = ctx.args
    streams = getattr(args, "ws_streams", None) or (20 if args.quick else 100)
    rate = getattr(args, "ws_stream_rate", None) or 10.0
    seconds = args.fanout_seconds
    table = table_class("ws_multiplex", f"One WebSocket, {streams} streams × {rate:g} events/s for {seconds:g} s",
                        f"One socket subscribed to {streams} console streams; every stream gets {rate:g} events/s "
                        f"({streams * rate:,.0f} events/s on the socket), published {streams} per journal call.")
    rows = _rows(table, ["ws"])
    log("ws_multiplex")
    try:
        _fill(table, "ws", multiplex(ctx.workdir, streams, rate, seconds, args.drain_seconds), rows)
    except Exception as exc:
        table.notes.append(f"ws: error: {type(exc).__name__}: {exc}"[:600])
    return table


@dataclass
class _Row:
    label: str
    fmt: str = "{:,.0f}"
    ratio: bool = True
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Table:
    """Enough of run.py's `Table` to run the cases on their own."""

    case: str
    title: str
    goal: str
    rows: list[_Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, label: str, fmt: str = "{:,.0f}", ratio: bool = True) -> _Row:
        self.rows.append(_Row(label, fmt, ratio))
        return self.rows[-1]

    def render(self) -> str:
        lines = [f"### {self.title}", "", self.goal, "", f"| metric | {COLUMN} |", "|---|---:|"]
        for row in self.rows:
            value = row.values.get(COLUMN)
            lines.append(f"| {row.label} | {'n/a' if value is None else row.fmt.format(value)} |")
        lines += [""] + [f"- {note}" for note in self.notes] if self.notes else []
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="fanout,multiplex")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fanout-subscribers", type=int)
    parser.add_argument("--fanout-rate", type=float, default=50.0)
    parser.add_argument("--fanout-seconds", type=float)
    parser.add_argument("--ws-streams", type=int)
    parser.add_argument("--ws-stream-rate", type=float)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--drain-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.fanout_subscribers is None:
        args.fanout_subscribers = 100 if args.quick else 1000
    if args.fanout_seconds is None:
        args.fanout_seconds = 2.0 if args.quick else 10.0
    raise_nofile()
    print(pin_clients(), flush=True)

    @dataclass
    class Ctx:
        args: argparse.Namespace
        workdir: Path

    with tempfile.TemporaryDirectory(prefix="agentwire-wsbench-") as tmp:
        ctx = Ctx(args, Path(tmp))
        wanted = {c.strip() for c in args.cases.split(",")}
        if "fanout" in wanted:
            print(case_ws_fanout(ctx, _Table).render(), flush=True)
        if "multiplex" in wanted:
            print(case_ws_multiplex(ctx, _Table).render(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
