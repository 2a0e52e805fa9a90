"""Scale-out on the Redis journal: append throughput per process, cross-node latency, fan-out from three nodes.

- `append`: events/s one process appends through `RedisJournal` (its one writer sends everything
  queued as one pipeline of script calls), one process alone and three at once on one stream: one
  appender with one event per call (a round trip each), 64 concurrent appenders with one event per
  call (their calls share round trips), one appender with 100 events per call. Calls
  `bench_redis.py`'s appender.
- `crossnode`: two agentwire nodes on one Redis; node A publishes 1,000 events/s into the `tasks`
  stream (`/bench/paced` below: `hub.append`, one event per call, each on its schedule; journal
  first, then fan-out), SSE subscribers on A (same node) and on B (cross-node: B's one XREAD loop
  brings them); publish→receive latency of every delivery, lost events.
- `fanout3`: three nodes, 300 SSE subscribers spread evenly over them, node A publishes 50 events/s;
  latency per node and overall, lost events, CPU of each node.

Every node is a process of its own (`bench_multinode.py serve --journal redis://…`: the real app with
`agentwire_server.py`'s bench routes and `/bench/paced`), load clients are forked
processes (`sse_client.py`), redis-server is a fresh one on a free port (appendonly, fsync every
second, as deploy.md suggests), all on 127.0.0.1. Nothing asserts a timing: it measures and prints.

    .venv/bin/python bench/bench_multinode.py               # every case, full size
    .venv/bin/python bench/bench_multinode.py --quick       # a smoke run of a few seconds
    .venv/bin/python bench/bench_multinode.py --cases crossnode --crossnode-rate 2000

For `bench/run.py`: `case_redis_append(ctx, Table)`, `case_crossnode(ctx, Table)` and
`case_fanout3(ctx, Table)` take run.py's `Context` (they read `ctx.args`, with defaults for the options
only this file has, and `ctx.workdir`) and its `Table` class, and return a table whose figures sit in
the `agentwire` column.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # the checkout, for tests.support (as bench_redis.py does)

from bench_redis import _append  # noqa: E402
from common import PublishSpec, cpu_seconds, die_with_parent, percentile, raise_nofile, request_json, stop_group  # noqa: E402
from load_clients import Clients  # noqa: E402
from sse_client import ClientSpec, latencies_from  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

HOST = "127.0.0.1"
TARGET = "agentwire"  # the column of run.py's tables these figures go in


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- the node's server


async def _paced_publish(request: Any) -> Any:
    """`POST /bench/paced?n=&rate=`: append `n` events to `tasks` at `rate` events/s, one journal call per
    event, each started on its schedule without waiting for the one before (as many agents append at
    once; the journal's writer sends what is waiting together). `bts` is taken just before each append."""
    from starlette.responses import JSONResponse

    from agentwire.types import Append
    from common import EVENT_TYPE, STREAM, TEXT

    hub = request.app.state.ctx.hub
    spec = PublishSpec.from_query(request.query_params)
    started = time.perf_counter()
    pending: set[asyncio.Task[Any]] = set()
    for i in range(spec.n):
        delay = started + i / spec.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        data: dict[str, Any] = {"bts": time.time_ns(), "i": i, "text": TEXT}
        if i == spec.n - 1:
            data["last"] = 1
        task = asyncio.create_task(hub.append(Append(STREAM, EVENT_TYPE, data)))
        pending.add(task)
        task.add_done_callback(pending.discard)
    results = await asyncio.gather(*pending, return_exceptions=True)
    failed = sum(1 for result in results if isinstance(result, BaseException))
    return JSONResponse({"published": spec.n - failed, "seconds": time.perf_counter() - started,
                         "failed": failed})


def serve(argv: list[str]) -> None:
    """A node: `agentwire_server.py`'s app (the real app plus its bench routes) and `/bench/paced`."""
    import uvicorn
    from starlette.routing import Route

    from agentwire.app import create_app
    from agentwire.config import Config
    from agentwire_server import add_bench_routes

    parser = argparse.ArgumentParser(prog="bench_multinode.py serve")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", required=True)
    args = parser.parse_args(argv)
    die_with_parent()
    raise_nofile()
    app = create_app(Config(host=args.host, port=args.port, journal=args.journal, no_auth=True, log_level="warning"))
    add_bench_routes(app)
    app.router.routes.insert(0, Route("/bench/paced", _paced_publish, methods=["POST"]))
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", ws="websockets-sansio",
                lifespan="on", log_level="warning", access_log=False, timeout_graceful_shutdown=2, backlog=4096)


# --------------------------------------------------------------------------- processes


class Node:
    """A node process (`serve` below) on the shared Redis journal."""

    def __init__(self, workdir: Path, journal: str, name: str) -> None:
        self.name = name
        self.port = _free_port()
        self.log_path = workdir / f"node-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.journal = journal

    def start(self) -> Node:
        argv = [sys.executable, str(Path(__file__).resolve()), "serve", "--host", HOST, "--port", str(self.port),
                "--journal", self.journal]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=BENCH_DIR, start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.request("GET", "/bench/stats", 2)
                return self
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"node {self.name} not ready in 60 s: {self.log_tail()}") from None
                time.sleep(0.1)

    def request(self, method: str, path: str, timeout: float) -> dict[str, Any]:
        return request_json(self.port, method, path, timeout)

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def log_tail(self) -> str:
        try:
            return " ⏎ ".join(self.log_path.read_text(errors="replace").splitlines()[-10:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_group(self.proc)


@contextlib.contextmanager
def cluster(workdir: Path, count: int) -> Iterator[tuple[RedisServer, list[Node]]]:
    """A fresh redis-server (AOF, fsync every second) and `count` nodes on it."""
    directory = Path(tempfile.mkdtemp(prefix="redis-", dir=workdir))
    redis = RedisServer(directory, appendonly=True, appendfsync="everysec").start()
    nodes: list[Node] = []
    try:
        for i in range(count):
            nodes.append(Node(workdir, redis.url, "ABCDEFGH"[i]).start())
        yield redis, nodes
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


# --------------------------------------------------------------------------- measurements


def append_throughput(redis_url: str, processes: int, batch: int, tasks: int, events: int) -> dict[str, Any]:
    """`processes` processes append `events` events each to one stream at once; events/s per process."""
    stream = f"bench/append-{processes}-{batch}-{tasks}-{time.monotonic_ns()}"
    if processes == 1:
        rates = [asyncio.run(_append(redis_url, stream, events, batch, tasks))]
    else:
        mp = multiprocessing.get_context("fork")
        out: multiprocessing.Queue[tuple[float, float]] = mp.Queue()
        procs = [mp.Process(target=_append_process, args=(redis_url, stream, events, batch, tasks, out))
                 for _ in range(processes)]
        for proc in procs:
            proc.start()
        rates = [out.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join(30)
    return {"per_process": [rate for rate, _ in rates], "per_cpu_second": [cpu for _, cpu in rates],
            "total": sum(rate for rate, _ in rates)}


def _append_process(url: str, stream: str, events: int, batch: int, tasks: int,
                    out: multiprocessing.Queue[tuple[float, float]]) -> None:
    die_with_parent()
    out.put(asyncio.run(_append(url, stream, events, batch, tasks)))


@dataclass
class Latency:
    subscribers: int = 0
    received: int = 0
    published: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    gaps: int = 0
    repeats: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.published * self.subscribers - self.received


def published_latency(publisher: Node, groups: dict[str, tuple[Node, int]], rate: float, seconds: float,
                      client_processes: int = 1, drain: float = 5.0) -> tuple[dict[str, Latency], dict[str, Any]]:
    """Subscribe `n` SSE clients to `tasks` on each group's node, then publish `rate` events/s on
    `publisher` for `seconds`; publish→receive latency per group (and "all")."""
    specs: list[tuple[str, ClientSpec]] = []
    limit = 2 * seconds + 5  # how long the publisher may take
    for name, (node, count) in groups.items():
        per = [count // client_processes + (1 if i < count % client_processes else 0) for i in range(client_processes)]
        specs += [(name, ClientSpec(HOST, node.port, "/api/stream/tasks", n, "latency", deadline=limit + drain + 10))
                  for n in per if n]
    nodes = {node.name: node for node, _ in groups.values()} | {publisher.name: publisher}
    with Clients([spec for _, spec in specs]) as clients:
        ready = clients.receive("ready", 120)
        cpu0 = {name: node.cpu() for name, node in nodes.items()}
        wall0 = time.monotonic()
        wanted = max(1, round(rate * seconds))
        run = publisher.request("POST", f"/bench/paced?{PublishSpec(n=wanted, rate=rate).query()}",
                                timeout=limit + 60)
        results = clients.receive("result", limit + drain + 30)
        wall = time.monotonic() - wall0
        busy = {name: 100 * (node.cpu() - cpu0[name]) / wall for name, node in nodes.items()}
    out: dict[str, Latency] = {}
    everything: list[int] = []
    for name in [*groups, "all"]:
        picked = [(r, o) for (group, _), r, o in zip(specs, results, ready, strict=True) if name in (group, "all")]
        latency = Latency(subscribers=sum(o["open"] for _, o in picked), received=sum(r["received"] for r, _ in picked),
                          published=run["published"], gaps=sum(r["gaps"] for r, _ in picked),
                          repeats=sum(r["repeats"] for r, _ in picked))
        values = sorted(v for r, _ in picked for v in latencies_from(r))
        if name != "all":
            everything += values
        if values:
            latency.p50_ms = percentile(values, 0.50) / 1e6
            latency.p99_ms = percentile(values, 0.99) / 1e6
            latency.max_ms = values[-1] / 1e6
        latency.errors = [e for r, o in picked for e in (*o["errors"], *r["errors"])][:3]
        out[name] = latency
    return out, {"published": run["published"], "publish_seconds": run["seconds"], "cpu_busy_percent": busy,
                 "wanted": wanted, "failed": run["failed"]}


# --------------------------------------------------------------------------- cases (run.py's interface)


def _option(args: Any, name: str, full: Any, quick: Any) -> Any:
    value = getattr(args, name, None)
    return value if value is not None else (quick if getattr(args, "quick", False) else full)


APPEND_RUNS = [(1, 1, "1 appender, 1 event per call"), (1, 64, "64 concurrent appenders, 1 event per call"),
               (100, 1, "1 appender, 100 events per call")]


def case_redis_append(ctx: Any, table_class: Any) -> Any:
    """run.py: `Case("redis_append", lambda ctx: bench_multinode.case_redis_append(ctx, Table))`."""
    events = _option(ctx.args, "append_events", 50_000, 5_000)
    table = table_class(
        "redis_append", "Redis journal: append throughput per process",
        f"`RedisJournal.append_many` into one stream, {events:,} events per process and run (a tenth with one "
        "appender and one event per call); one process alone, then three processes on the same stream at once. "
        "Each process's one writer sends everything queued as one pipeline of script calls (group commit); "
        "Redis with appendonly, fsync every second.")
    with tempfile.TemporaryDirectory(prefix="redis-", dir=ctx.workdir) as directory:
        redis = RedisServer(directory, appendonly=True, appendfsync="everysec").start()
        try:
            for processes in (1, 3):
                for batch, tasks, label in APPEND_RUNS:
                    n = events // 10 if (batch, tasks) == (1, 1) else events
                    log(f"redis_append: {processes} process(es), {label}")
                    try:
                        result = append_throughput(redis.url, processes, batch, tasks, n)
                    except Exception as exc:
                        table.notes.append(f"{processes} × {label}: error: {type(exc).__name__}: {exc}"[:600])
                        continue
                    who = "one process" if processes == 1 else f"each of {processes} processes"
                    table.row(f"events/s, {who}: {label}", ratio=False).values[TARGET] = (
                        result["total"] / processes)
                    if processes > 1:
                        table.row(f"events/s, all {processes} processes together: {label}",
                                  ratio=False).values[TARGET] = result["total"]
                        table.notes.append(f"{processes} × {label}: per process "
                                           + ", ".join(f"{r:,.0f}" for r in result["per_process"]) + " events/s")
        finally:
            redis.stop()
    return table


def _latency_rows(table: Any, label: str, latency: Latency) -> None:
    table.row(f"{label}: subscribers", ratio=False).values[TARGET] = latency.subscribers
    table.row(f"{label}: latency p50 (ms)", fmt="{:,.2f}", ratio=False).values[TARGET] = latency.p50_ms
    table.row(f"{label}: latency p99 (ms)", fmt="{:,.2f}", ratio=False).values[TARGET] = latency.p99_ms
    table.row(f"{label}: latency max (ms)", fmt="{:,.1f}", ratio=False).values[TARGET] = latency.max_ms
    table.row(f"{label}: events lost", ratio=False).values[TARGET] = latency.lost
    if latency.gaps or latency.repeats or latency.errors:
        table.notes.append(f"{label}: gaps in ids {latency.gaps}, repeated ids {latency.repeats}, "
                           f"errors {latency.errors}")


def case_crossnode(ctx: Any, table_class: Any) -> Any:
    """run.py: `Case("crossnode", lambda ctx: bench_multinode.case_crossnode(ctx, Table))`."""
    rate = _option(ctx.args, "crossnode_rate", 1000.0, 1000.0)
    seconds = _option(ctx.args, "crossnode_seconds", 10.0, 2.0)
    subscribers = _option(ctx.args, "crossnode_subscribers", 10, 5)
    drain = getattr(ctx.args, "drain_seconds", 5.0)
    table = table_class(
        "crossnode", f"Two nodes on Redis: publish on A, receive on B, {rate:,.0f} events/s for {seconds:g} s",
        f"Node A appends {rate:,.0f} events/s to `tasks` (one event per journal call, as an agent's deltas "
        f"come); {subscribers} SSE subscribers on A itself and {subscribers} on node B, which gets the events "
        "from its one XREAD loop over Redis. Publish→receive latency of every delivery (the publish time is "
        "taken just before the append), lost = published × subscribers − received.")
    log("crossnode")
    try:
        with cluster(ctx.workdir, 2) as (_, (a, b)):
            result, run = published_latency(a, {"same node (A → A)": (a, subscribers),
                                                 "cross-node (A → B)": (b, subscribers)},
                                            rate, seconds, drain=drain)
        for label in ("same node (A → A)", "cross-node (A → B)"):
            _latency_rows(table, label, result[label])
        table.row("events published", ratio=False).values[TARGET] = run["published"]
        table.row("publish rate achieved (events/s)", ratio=False).values[TARGET] = (
            run["published"] / run["publish_seconds"])
        table.notes.append(f"published {run['published']:,} of {run['wanted']:,} events in "
                           f"{run['publish_seconds']:.1f} s ({run['failed']} appends failed); node CPU busy "
                           + ", ".join(f"{n} {v:.0f} %" for n, v in run["cpu_busy_percent"].items()))
    except Exception as exc:
        table.notes.append(f"error: {type(exc).__name__}: {exc}"[:600])
    return table


def case_fanout3(ctx: Any, table_class: Any) -> Any:
    """run.py: `Case("fanout3", lambda ctx: bench_multinode.case_fanout3(ctx, Table))`."""
    subscribers = _option(ctx.args, "fanout3_subscribers", 300, 90)
    rate = _option(ctx.args, "fanout3_rate", 50.0, 50.0)
    seconds = _option(ctx.args, "fanout3_seconds", 10.0, 2.0)
    drain = getattr(ctx.args, "drain_seconds", 5.0)
    table = table_class(
        "fanout3", f"Fan-out from three nodes: {subscribers} subscribers × {rate:g} events/s for {seconds:g} s",
        f"Three nodes on one Redis, {subscribers} SSE subscribers of `tasks` spread evenly over them (one client "
        f"process per node); node A publishes {rate:g} events/s. Latency per node and over all, lost events, "
        "CPU of each node (% of one core over the run).")
    log("fanout3")
    try:
        with cluster(ctx.workdir, 3) as (_, nodes):
            share = [subscribers // 3 + (1 if i < subscribers % 3 else 0) for i in range(3)]
            groups = {f"node {node.name}" + (" (publisher)" if i == 0 else ""): (node, share[i])
                      for i, node in enumerate(nodes)}
            result, run = published_latency(nodes[0], groups, rate, seconds, drain=drain)
        for label in [*groups, "all"]:
            _latency_rows(table, "all nodes" if label == "all" else label, result[label])
        for name, busy in run["cpu_busy_percent"].items():
            table.row(f"node {name}: CPU busy (% of one core)", ratio=False).values[TARGET] = busy
        table.row("events published", ratio=False).values[TARGET] = run["published"]
    except Exception as exc:
        table.notes.append(f"error: {type(exc).__name__}: {exc}"[:600])
    return table


# --------------------------------------------------------------------------- on its own


@dataclass
class _Row:
    label: str
    fmt: str = "{:,.0f}"
    ratio: bool = False
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
        lines = [f"### {self.title}", "", self.goal, "", "| metric | value |", "|---|---:|"]
        for row in self.rows:
            value = row.values.get(TARGET)
            text = "n/a" if value is None else (value if isinstance(value, str) else row.fmt.format(value))
            lines.append(f"| {row.label} | {text} |")
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"


CASES = {"append": case_redis_append, "crossnode": case_crossnode, "fanout3": case_fanout3}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--append-events", type=int, help="events per process and run (default 50000)")
    parser.add_argument("--crossnode-rate", type=float, help="events/s (default 1000)")
    parser.add_argument("--crossnode-seconds", type=float, help="default 10")
    parser.add_argument("--crossnode-subscribers", type=int, help="per node (default 10)")
    parser.add_argument("--fanout3-subscribers", type=int, help="over all three nodes (default 300)")
    parser.add_argument("--fanout3-rate", type=float, help="events/s (default 50)")
    parser.add_argument("--fanout3-seconds", type=float, help="default 10")
    parser.add_argument("--drain-seconds", type=float, default=5.0,
                        help="how long clients may still receive after the last publish")
    args = parser.parse_args(argv)
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(wanted) - set(CASES)
    if unknown or not wanted:
        print(f"nothing to run (unknown cases: {sorted(unknown)})", file=sys.stderr)
        return 2
    raise_nofile()

    @dataclass
    class Ctx:
        args: argparse.Namespace
        workdir: Path

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    log(f"load average before: {load} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="agentwire-multinode-") as tmp:
        ctx = Ctx(args, Path(tmp))
        for name in wanted:
            print(CASES[name](ctx, _Table).render(), flush=True)
    log(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
