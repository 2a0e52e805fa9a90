"""`make bench`: agentwire beside two reference servers, measured in the same run.

Targets (each a server process of its own, started fresh for every case):

- agentwire — the real app (`bench/agentwire_server.py`: `create_app` + a bench-only publish route);
- baseline  — the usual FastAPI + sse-starlette server, one asyncio.Queue per client (`ref_baseline.py`);
- limit     — a bare asyncio server writing pre-encoded SSE frames (`ref_limit.py`).

Load clients are separate processes (`sse_client.py`); everything runs on 127.0.0.1, is bounded in
time and cleans up its processes. Nothing here asserts a timing: it measures and reports.

    .venv/bin/python bench/run.py                 # every case, writes bench/RESULTS.md
    .venv/bin/python bench/run.py --quick         # smoke run of a few seconds, prints only
    .venv/bin/python bench/run.py --cases fanout --targets agentwire,limit

A case is one function `(Context) -> Table` registered in `CASES`; add new ones there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from common import (
    HttpStatusError,
    PublishSpec,
    cpu_seconds,
    die_with_parent,
    pin_clients,
    raise_nofile,
    request_json,
    rss_bytes,
    server_argv,
)
from load_clients import Clients
from sse_client import ClientSpec, latencies_from

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
Value = float | str | None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- targets and servers


@dataclass(frozen=True)
class Target:
    name: str
    script: str
    stream_path: Callable[[int | None], str]  # the SSE path, from an optional `from` position
    replay: bool  # can serve a stream from an old position (journal or in-memory history)
    extra_args: Callable[[Path], list[str]] = lambda workdir: []


def _from(path: str, position: int | None) -> str:
    return path if position is None else f"{path}?from={position}"


TARGETS = [
    Target("agentwire", "agentwire_server.py", lambda p: _from("/api/stream/tasks", p), replay=True,
           extra_args=lambda workdir: ["--journal", f"sqlite:///{workdir / 'bench.db'}"]),
    Target("baseline", "ref_baseline.py", lambda p: "/stream", replay=False),
    Target("limit", "ref_limit.py", lambda p: _from("/stream", p), replay=True),
]


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A target's server process, in its own session so that it and anything it starts can be ended."""

    def __init__(self, target: Target, workdir: Path) -> None:
        self.target = target
        self.workdir = workdir / f"{target.name}-{time.monotonic_ns()}"
        self.workdir.mkdir()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "server.log"

    def __enter__(self) -> Server:
        argv = server_argv([sys.executable, str(BENCH_DIR / self.target.script), "--host", HOST,
                            "--port", str(self.port), *self.target.extra_args(self.workdir)])
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=BENCH_DIR, start_new_session=True, preexec_fn=die_with_parent)
        try:
            self._wait_ready(30.0)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.target.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.request("GET", "/bench/stats", timeout=2.0)
                return
            except (OSError, ServerError, HttpStatusError):
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"{self.target.name} not ready after {timeout:.0f} s: {self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def request(self, method: str, path: str, timeout: float) -> dict[str, Any]:
        return request_json(self.port, method, path, timeout)

    def publish(self, spec: PublishSpec, timeout: float) -> dict[str, Any]:
        return self.request("POST", f"/bench/publish?{spec.query()}", timeout)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)


# --------------------------------------------------------------------------- load client processes


def split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    label: str
    values: dict[str, Value]
    fmt: str = "{:,.0f}"
    ratio: bool = True  # show agentwire : baseline


@dataclass
class Table:
    case: str
    title: str
    goal: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    goals: list[tuple[str, str, bool | None]] = field(default_factory=list)  # goal, measured, met

    def row(self, label: str, fmt: str = "{:,.0f}", ratio: bool = True) -> Row:
        row = Row(label, {}, fmt, ratio)
        self.rows.append(row)
        return row

    def check(self, goal: str, value: Value, fmt: str, met: Callable[[float], bool]) -> None:
        """A target of the issue, checked against agentwire's figure (reported, never asserted)."""
        ok = met(value) if isinstance(value, float | int) else None
        self.goals.append((goal, fmt_value(value, fmt), ok))

    def fail(self, target: str, error: BaseException) -> None:
        for row in self.rows:
            row.values.setdefault(target, "error")
        message = str(error).strip().replace("\n", " ⏎ ")
        self.notes.append(f"{target}: error: {type(error).__name__}: {message[:600]}")


def fmt_value(value: Value, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return fmt.format(value)


def render(table: Table, targets: list[str]) -> str:
    columns = [*targets, "agentwire : baseline"] if {"agentwire", "baseline"} <= set(targets) else targets
    lines = [f"### {table.title}", "", table.goal, "",
             "| metric | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row in table.rows:
        cells = [fmt_value(row.values.get(t), row.fmt) for t in targets]
        if len(columns) > len(targets):
            r = ratio(row, "agentwire", "baseline") if row.ratio else None
            cells.append("" if r is None else f"{r:.2f}×")
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    if table.notes:
        lines.append("")
        lines.extend(f"- {note}" for note in table.notes)
    return "\n".join(lines) + "\n"


def ratio(row: Row, a: str, b: str) -> float | None:
    x, y = row.values.get(a), row.values.get(b)
    return x / y if isinstance(x, float | int) and isinstance(y, float | int) and y else None


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(sorted_values: list[int], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return float(sorted_values[index])


# --------------------------------------------------------------------------- cases


@dataclass
class Context:
    args: argparse.Namespace
    workdir: Path
    targets: list[Target]

    def each_target(self, table: Table, body: Callable[[Target, Server], None], *,
                    only_replay: bool = False) -> None:
        """Run `body` with each selected target's server, fresh; a failing target is marked on the
        table (and its server ended), not fatal to the run."""
        for target in self.targets:
            if only_replay and not target.replay:
                for row in table.rows:
                    row.values[target.name] = None
                continue
            log(f"{table.case}: {target.name}")
            try:
                with Server(target, self.workdir) as server:
                    body(target, server)
            except Exception as exc:
                log(f"{table.case}: {target.name} failed: {type(exc).__name__}: {exc}")
                table.fail(target.name, exc)


def one_stream(server: Server, target: Target, batch: int, seconds: float) -> tuple[float | None, str]:
    """One client, one unpaced publisher for `seconds`: events/s from first publish to last receive."""
    spec = ClientSpec(HOST, server.port, target.stream_path(None), 1, "count", deadline=seconds + 30)
    with Clients([spec]) as clients:
        clients.ready(30)
        published = server.publish(PublishSpec(n=10**12, batch=batch, seconds=seconds), timeout=seconds + 60)
        [result] = clients.results(60)
    if not result["finished"]:
        return None, f"stream ended early: {result['errors']} ({result['received']:,} of {published['published']:,})"
    elapsed = (result["last_recv_ns"] - result["first_bts"]) / 1e9
    note = "" if result["received"] == published["published"] else (
        f"received {result['received']:,} of {published['published']:,}")
    return result["received"] / elapsed, note


def case_single(ctx: Context) -> Table:
    args = ctx.args
    table = Table("single", "1. Single stream, one client: events/s delivered",
                  f"An unpaced publisher in the server process for {args.single_seconds:g} s, one SSE client; "
                  f"events/s from the first event's publish to the last event's receipt, median of {args.repeats}. "
                  "Target: agentwire ≥ 3× baseline.")
    batches = [100, 1]
    rows = {b: table.row(f"events/s, {b} event{'s' if b > 1 else ''} per publish call") for b in batches}
    runs = {b: table.row(f"runs, {b} per call", fmt="{}", ratio=False) for b in batches}

    def measure(target: Target, server: Server) -> None:
        for batch in batches:
            rates = []
            for _ in range(args.repeats):
                rate, note = one_stream(server, target, batch, args.single_seconds)
                if rate is not None:
                    rates.append(rate)
                if note:
                    table.notes.append(f"{target.name}, {batch} per call: {note}")
            rows[batch].values[target.name] = median(rates)
            runs[batch].values[target.name] = ", ".join(f"{r:,.0f}" for r in rates) or "failed"

    ctx.each_target(table, measure)
    table.check("single stream: agentwire ≥ 3× baseline (100 per call)",
               ratio(rows[100], "agentwire", "baseline"), "{:.2f}×", lambda r: r >= 3)
    table.notes.append("agentwire appends through its hub into the SQLite journal (one transaction per publish "
                       "call) before delivering; the references only hold events in memory.")
    return table


def case_fanout(ctx: Context) -> Table:
    args = ctx.args
    subs, rate, seconds = args.fanout_subscribers, args.fanout_rate, args.fanout_seconds
    table = Table("fanout", f"2. Fan-out: {subs:,} subscribers × {rate:g} events/s for {seconds:g} s",
                  f"One stream, {subs:,} SSE clients over {args.client_processes} client processes; publish→receive "
                  "latency of every delivery; server CPU from /proc/<pid>/stat. "
                  "Target (issue 13): p99 ≤ 50 ms pinned, CPU per delivery ≤ 0.35× baseline, 0 lost.")
    r_open = table.row("subscribers connected", ratio=False)
    r_p50 = table.row("latency p50 (ms)", fmt="{:,.2f}")
    r_p99 = table.row("latency p99 (ms)", fmt="{:,.2f}")
    r_max = table.row("latency max (ms)", fmt="{:,.1f}")
    r_cpu = table.row("server CPU-s per 100k deliveries", fmt="{:,.3f}")
    r_busy = table.row("server CPU busy (% of one core)", fmt="{:,.0f}")
    r_deliv = table.row("deliveries", ratio=False)
    r_lost = table.row("events lost", ratio=False)
    grace = args.drain_seconds
    wanted = max(1, round(rate * seconds))
    # A server that cannot keep the pace stops publishing at twice the planned time.
    limit = 2 * seconds + 5

    def measure(target: Target, server: Server) -> None:
        specs = [ClientSpec(HOST, server.port, target.stream_path(None), n, "latency",
                            deadline=limit + grace + 10) for n in split(subs, args.client_processes)]
        with Clients(specs) as clients:
            ready = clients.ready(120)
            opened = sum(r["open"] for r in ready)
            cpu0, wall0 = server.cpu(), time.monotonic()
            run = server.publish(PublishSpec(n=wanted, rate=rate, seconds=limit), timeout=limit + 60)
            published = run["published"]
            if published < wanted:
                table.notes.append(f"{target.name}: could not keep the pace: published {published} of {wanted} "
                                   f"events in {run['seconds']:.1f} s")
            results = clients.results(grace + 30)
            cpu = server.cpu() - cpu0
            wall = time.monotonic() - wall0
        received = sum(r["received"] for r in results)
        lat = sorted(v for r in results for v in latencies_from(r))
        r_open.values[target.name] = opened
        if lat:
            r_p50.values[target.name] = percentile(lat, 0.50) / 1e6
            r_p99.values[target.name] = percentile(lat, 0.99) / 1e6
            r_max.values[target.name] = lat[-1] / 1e6
        r_cpu.values[target.name] = cpu * 100_000 / received if received else None
        r_busy.values[target.name] = 100 * cpu / wall
        r_deliv.values[target.name] = received
        r_lost.values[target.name] = published * opened - received
        gaps = sum(r["gaps"] for r in results)
        repeats = sum(r["repeats"] for r in results)
        errors = sum(r["error_count"] for r in results)
        client_cpu = sum(r["cpu_seconds"] for r in results)
        extra = f"; gaps in ids {gaps}, repeated ids {repeats}, connections ended early {errors}" \
            if gaps or repeats or errors else ""
        table.notes.append(f"{target.name}: {published} events published, clients used {client_cpu:.1f} CPU-s"
                           f"{extra}" + (f" ({results[0]['errors'][:2]})" if errors else ""))

    ctx.each_target(table, measure)
    table.check("fan-out: p99 latency ≤ 50 ms", r_p99.values.get("agentwire"), "{:,.1f} ms", lambda v: v <= 50)
    table.check("fan-out: CPU per delivery ≤ 0.35× baseline", ratio(r_cpu, "agentwire", "baseline"), "{:.2f}×",
               lambda r: r <= 0.35)
    table.check("fan-out: 0 events lost", r_lost.values.get("agentwire"), "{:,.0f}", lambda v: v == 0)
    table.notes.append(f"Lost = published × connected − received within {grace:g} s after the last publish.")
    return table


def case_catchup(ctx: Context) -> Table:
    args = ctx.args
    count = args.catchup_events
    table = Table("catchup", f"3. Catch-up: one client replays {count:,} events",
                  f"The stream is filled with {count:,} events first; a client then subscribes with `from=0` and "
                  f"reads to the end; events/s from connecting to the last event, median of {args.repeats}. "
                  "Target: agentwire ≥ 200,000 events/s from SQLite.")
    r_rate = table.row("replay events/s")
    r_runs = table.row("runs", fmt="{}", ratio=False)
    r_fill = table.row("fill: events/s appended (1,000 per call)", ratio=False)

    def measure(target: Target, server: Server) -> None:
        fill = server.publish(PublishSpec(n=count, batch=1000), timeout=300)
        r_fill.values[target.name] = fill["published"] / fill["seconds"]
        rates = []
        for _ in range(args.repeats):
            spec = ClientSpec(HOST, server.port, target.stream_path(0), 1, "count", deadline=120)
            with Clients([spec]) as clients:
                clients.ready(120)
                [result] = clients.results(150)
            if result["finished"] and result["received"] == fill["published"]:
                rates.append(result["received"] / ((result["last_recv_ns"] - result["started_ns"]) / 1e9))
            else:
                table.notes.append(f"{target.name}: replay got {result['received']:,} of {fill['published']:,} "
                                   f"({result['errors']})")
        r_rate.values[target.name] = median(rates)
        r_runs.values[target.name] = ", ".join(f"{r:,.0f}" for r in rates) or "failed"

    ctx.each_target(table, measure, only_replay=True)
    table.check("catch-up: ≥ 200,000 events/s from SQLite", r_rate.values.get("agentwire"), "{:,.0f}/s",
               lambda v: v >= 200_000)
    table.notes.append("agentwire replays from its SQLite journal; limit replays a list of pre-encoded frames in "
                       "memory (the ceiling); baseline has no journal (n/a).")
    return table


def case_idle(ctx: Context) -> Table:
    args = ctx.args
    count = args.idle_connections
    table = Table("idle", f"4. Idle connections: memory per open SSE connection at {count:,}",
                  f"Server RSS (from /proc/<pid>/statm) after {count:,} open, idle SSE connections minus RSS before "
                  "them (after a 10-connection warm-up), divided by the connections. Target (issue 13): ≤ 16 KiB.")
    r_per = table.row("KiB per connection", fmt="{:,.1f}")
    r_open = table.row("connections open", ratio=False)
    r_base = table.row("RSS before (MiB)", fmt="{:,.1f}", ratio=False)
    r_after = table.row("RSS with connections (MiB)", fmt="{:,.1f}", ratio=False)

    def measure(target: Target, server: Server) -> None:
        warm = ClientSpec(HOST, server.port, target.stream_path(None), 10, "idle", deadline=30)
        with Clients([warm]) as clients:
            clients.ready(60)
            clients.stop()
            clients.results(30)
        time.sleep(1.0)
        before = server.rss()
        specs = [ClientSpec(HOST, server.port, target.stream_path(None), n, "idle", deadline=300,
                            connect_concurrency=200) for n in split(count, args.client_processes)]
        with Clients(specs) as clients:
            ready = clients.ready(240)
            opened = sum(r["open"] for r in ready)
            time.sleep(args.settle_seconds)
            after = server.rss()
            subscribers = server.request("GET", "/bench/stats", timeout=30)["subscribers"]
            clients.stop()
            clients.results(60)
        r_open.values[target.name] = opened
        r_base.values[target.name] = before / 2**20
        r_after.values[target.name] = after / 2**20
        r_per.values[target.name] = (after - before) / opened / 1024 if opened else None
        if subscribers != opened:
            table.notes.append(f"{target.name}: server counted {subscribers} subscribers, clients {opened}")
        failed = sum(r["error_count"] for r in ready)
        if failed:
            table.notes.append(f"{target.name}: {failed} connections failed: {ready[0]['errors'][:2]}")

    ctx.each_target(table, measure)
    table.check("idle: ≤ 16 KiB per open SSE connection", r_per.values.get("agentwire"), "{:,.1f} KiB",
               lambda v: v <= 16)
    return table


def case_console(ctx: Context) -> Table:
    """Issue 3: many sessions streaming scripted turns to several viewers each (agentwire only)."""
    import bench_console

    sessions, seconds = (10, 4.0) if ctx.args.quick else (100, 10.0)
    table = Table("console", f"Console: {sessions} sessions × 5 viewers, scripted turns at 50 deltas/s",
                  "One `agentwire serve` (SQLite); every session streams a scripted turn, each watched by 5 SSE "
                  "viewers in client processes; a quick turn is asked 5 times mid-load. Latency is the event's "
                  "`ts` (stamped when the server builds it) to its arrival at a viewer.")
    log("console: agentwire")
    try:
        result = bench_console.run(sessions=sessions, viewers=5, rate=50, seconds=seconds)
    except Exception as exc:
        table.fail("agentwire", exc)
        return table
    for label, key, fmt in (("delta latency p50 (ms)", "delta_p50_ms", "{:,.1f}"),
                            ("delta latency p99 (ms)", "delta_p99_ms", "{:,.1f}"),
                            ("server CPU-s per 100k deliveries", "cpu_s_per_100k", "{:,.3f}"),
                            ("deliveries", "deliveries", "{:,.0f}"), ("events lost", "lost", "{:,.0f}"),
                            ("viewers that saw their turn end", "viewers_completed", "{:,.0f}"),
                            ("quick turn: first event, median (ms)", "quick_first_event_median_ms", "{:,.1f}")):
        table.row(label, fmt, ratio=False).values["agentwire"] = result[key]
    table.notes.append(f"quick turn first event, each of 5 (ms): {result['quick_first_event_ms']}")
    table.check("quick turn first event during load ≤ 100 ms", result["quick_first_event_median_ms"], "{:,.1f} ms",
                lambda v: v <= 100)
    # Issue 13: half of the 4.2 CPU-s per 100k deliveries measured before its delivery work.
    table.check("console: CPU-s per 100k deliveries ≤ 2.1 (half of 4.2)", result["cpu_s_per_100k"], "{:,.3f}",
                lambda v: v <= 2.1)
    return table


def _multinode(name: str) -> Callable[[Context], Table]:
    def case(ctx: Context) -> Table:
        import bench_multinode

        return getattr(bench_multinode, f"case_{name}")(ctx, Table)  # type: ignore[no-any-return]

    return case


def _claude(ctx: Context) -> Table:
    import bench_claude

    return bench_claude.case_claude(ctx, Table)  # type: ignore[no-any-return]


def _bench_ws() -> Any:
    import bench_ws

    return bench_ws


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Context], Table]


CASES = [
    Case("single", case_single),
    Case("fanout", case_fanout),
    Case("catchup", case_catchup),
    Case("idle", case_idle),
    Case("console", case_console),
    Case("redis_append", _multinode("redis_append")),
    Case("crossnode", _multinode("crossnode")),
    Case("fanout3", _multinode("fanout3")),
    Case("ws_fanout", lambda ctx: _bench_ws().case_ws_fanout(ctx, Table)),
    Case("ws_multiplex", lambda ctx: _bench_ws().case_ws_multiplex(ctx, Table)),
    Case("claude", _claude),
    Case("turn", lambda ctx: __import__("bench_turn").case_turn(ctx, Table)),
]


# --------------------------------------------------------------------------- report


def load_average() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def _busy(load: str) -> bool:
    """A 1-minute load average over half the cores: others compete with the benchmark for the CPU."""
    try:
        return float(load.split()[0]) > 0.5 * (os.cpu_count() or 1)
    except (ValueError, IndexError):
        return False


def machine() -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    versions = []
    for package in ("agentwire", "fastapi", "starlette", "sse-starlette", "uvicorn", "uvloop", "httptools", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{package} {metadata.version(package)}")
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores",
        f"- RAM: {ram}",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()}",
        f"- Packages: {', '.join(versions)}",
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def command_line() -> str:
    python = os.path.relpath(sys.executable)
    if python.startswith(".."):
        python = "python"
    script = os.path.relpath(sys.argv[0])
    if script.startswith(".."):
        script = "bench/run.py"
    return shlex.join([python, script, *sys.argv[1:]])


def report(tables: list[Table], targets: list[str], elapsed: float, load_before: str, pinned: str) -> str:
    parts = [
        "# agentwire benchmark results", "",
        "Produced by `bench/run.py`; every figure beside the two references measured in the same run: "
        "**baseline** = FastAPI + sse-starlette + one asyncio.Queue per client (uvicorn, uvloop, httptools); "
        "**limit** = a bare asyncio server writing pre-encoded SSE frames. "
        "Servers and load clients are separate processes on 127.0.0.1 of the same machine, so the clients "
        "compete with the server for the cores.", "",
        "Command:", "", "```", command_line(), "```", "",
        "Machine:", "", *machine(),
        f"- Load average (1, 5, 15 min) before the run: {load_before}; after: {load_average()}",
        f"- Total run time: {elapsed:.0f} s",
        f"- CPUs: {pinned}", "",
        *([f"**Caution:** the machine was busy with other work (load average {load_before} on "
           f"{os.cpu_count()} cores), so every process got a fraction of a core: wall-clock figures (events/s, "
           "latency) are noisy and low; CPU-seconds and memory per connection are the more robust figures. "
           "Rerun on a quiet machine before comparing against the goals.", ""]
          if _busy(load_before) else []),
        "## Goals (agentwire)", "",
        "| goal | measured | met |", "|---|---:|:---:|",
        *(f"| {goal} | {value} | {'n/a' if met is None else ('yes' if met else '**no**')} |"
          for table in tables for goal, value, met in table.goals),
        "",
        "## Results", "",
    ]
    for table in tables:
        parts.append(render(table, targets))
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="agentwire benchmark beside two reference servers")
    names = [c.name for c in CASES]
    parser.add_argument("--cases", default=",".join(names), help=f"comma-separated, of: {', '.join(names)}")
    parser.add_argument("--targets", default=",".join(t.name for t in TARGETS),
                        help="comma-separated, of: " + ", ".join(t.name for t in TARGETS))
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds; prints, writes no file")
    parser.add_argument("--repeats", type=int, help="runs per figure where cheap (default 3)")
    parser.add_argument("--single-seconds", type=float, help="publishing time per single-stream run (default 2)")
    parser.add_argument("--fanout-subscribers", type=int, help="default 1000")
    parser.add_argument("--fanout-rate", type=float, help="events/s (default 50)")
    parser.add_argument("--fanout-seconds", type=float, help="default 10")
    parser.add_argument("--catchup-events", type=int, help="default 100000")
    parser.add_argument("--idle-connections", type=int, help="default 5000")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--drain-seconds", type=float, default=5.0,
                        help="how long fan-out clients may still receive after the last publish")
    parser.add_argument("--settle-seconds", type=float, default=2.0, help="idle: wait before reading RSS")
    parser.add_argument("--output", type=Path, help="results file (default bench/RESULTS.md; none with --quick)")
    parser.add_argument("--no-write", action="store_true", help="print the results only")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server logs and journals")
    args = parser.parse_args(argv)
    full = {"repeats": 3, "single_seconds": 2.0, "fanout_subscribers": 1000, "fanout_rate": 50.0,
            "fanout_seconds": 10.0, "catchup_events": 100_000, "idle_connections": 5000}
    quick = {"repeats": 1, "single_seconds": 0.5, "fanout_subscribers": 100, "fanout_rate": 50.0,
             "fanout_seconds": 2.0, "catchup_events": 10_000, "idle_connections": 300}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.drain_seconds = min(args.drain_seconds, 2.0)
        args.settle_seconds = min(args.settle_seconds, 0.5)
    if args.output is None and not args.quick:
        args.output = BENCH_DIR / "RESULTS.md"
    if args.no_write:
        args.output = None
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    args.pinned = pin_clients()
    log(args.pinned)
    signal.signal(signal.SIGTERM, _terminate)  # end servers and clients on the way out, as on Ctrl-C
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    cases = [c for c in CASES if c.name in wanted]
    targets = [t for t in TARGETS if t.name in {x.strip() for x in args.targets.split(",")}]
    unknown = set(wanted) - {c.name for c in CASES}
    if unknown or not cases or not targets:
        print(f"nothing to run (unknown cases: {sorted(unknown)})", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="agentwire-bench-"))
    ctx = Context(args, workdir, targets)
    started = time.monotonic()
    load_before = load_average()
    if _busy(load_before):
        log(f"warning: the machine is busy (load average {load_before}): figures will be noisy")
    tables = []
    try:
        for case in cases:
            tables.append(case.run(ctx))
            print(render(tables[-1], [t.name for t in targets]), flush=True)
    finally:
        if args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    text = report(tables, [t.name for t in targets], elapsed, load_before, args.pinned)
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
        log(f"wrote {os.path.relpath(args.output)}")
    log(f"done in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
