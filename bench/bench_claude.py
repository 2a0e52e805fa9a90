"""Claude Code turns: time to the first text event, cold start against a live process.

The real Claude Code (the CLI claude-agent-sdk bundles) against the project's Anthropic fake, which
answers at once, so the figures are agentwire's and Claude Code's own overhead, not a model's:

- main turn, cold: a session's first turn (its Claude Code process starts for it);
- main turn, live: the next turns of that session (its process waits between turns);
- quick turn, cold: a server without a warm pool (the process starts for the turn);
- quick turn, warm: a warm worker was started before the turn and waited for it;
- bare `claude -p`: the same CLI run once per prompt, no agentwire (process start → first
  `text_delta` line), measured in the same run.

Each figure is the median of `--samples` (default 5) turns; a turn is timed from sending its POST to
reading its first `text.delta` event on the response (a raw socket, no client library). The server is
its own process (`bench_claude.py serve`: the app as `agentwire serve` serves it, with the warm pool
size given); the fake and the measuring client share this process.

    .venv/bin/python bench/bench_claude.py            # prints the figures
    .venv/bin/python bench/run.py --cases claude      # as a table of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # the checkout, for tests.fakes and tests.support

from common import call_json, healthy_server  # noqa: E402
from tests.fakes.llm_servers import FakeLLMServer, text  # noqa: E402
from tests.support.claude_code import BUNDLED, MODEL, VERSION, agents, claude_env, make_home, processes  # noqa: E402
from tests.support.eventually import eventually  # noqa: E402

HOST = "127.0.0.1"
TARGET = "agentwire"  # the column of run.py's tables these figures go in
ANSWER = "The journal keeps every event, in order, exactly once."


@contextmanager
def _server(workdir: Path, env: dict[str, str], quick_pool: int) -> Iterator[int]:
    argv = lambda port: [sys.executable, str(Path(__file__).resolve()), "serve", "--port", str(port),  # noqa: E731
                         "--quick-pool", str(quick_pool), "--journal", f"sqlite:///{workdir / f'claude-{port}.db'}"]
    # Not pinned: the agent CLIs it starts share the machine with it, as they do in use.
    with healthy_server(argv, workdir, "claude", env={**os.environ, **env}, pin=False) as (port, _):
        yield port


def _first_text_ms(port: int, session: str, message: str, lane: str = "main") -> float:
    """POST a turn; milliseconds to its first `text.delta` event; then read on to its end."""
    body = json.dumps({"message": message}).encode()
    path = f"/api/konsole/{session}/{'quick' if lane == 'quick' else 'stream'}"
    with socket.create_connection((HOST, port), timeout=60) as sock:
        started = time.perf_counter()
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received, elapsed = b"", None
        while not any(end in received for end in (b"event: turn.completed", b"event: turn.failed")):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the turn's stream ended early: {received[-300:]!r}")
            received += chunk
            if elapsed is None and b"event: text.delta" in received:
                elapsed = (time.perf_counter() - started) * 1000
    if b"event: turn.failed" in received or elapsed is None:
        raise RuntimeError(f"the turn failed: {received[-500:]!r}")
    return elapsed


def _create(port: int, session: str, cwd: Path) -> None:
    cwd.mkdir(exist_ok=True)
    call_json(port, "POST", "/api/konsole", {"name": session, "provider": "claude", "model": MODEL,
                                            "options": {"cwd": str(cwd)}})


def _bare(env: dict[str, str], cwd: Path) -> float:
    """`claude -p` with the prompt on stdin: process start → its first text_delta line."""
    started = time.perf_counter()
    proc = subprocess.Popen([str(BUNDLED), "-p", "--output-format", "stream-json", "--include-partial-messages",
                             "--verbose", "--model", MODEL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, **env}, cwd=cwd)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"Say it")
    proc.stdin.close()
    elapsed = None
    for line in proc.stdout:
        if elapsed is None and b'"text_delta"' in line:
            elapsed = (time.perf_counter() - started) * 1000
    proc.wait(30)
    if elapsed is None:
        raise RuntimeError("claude -p printed no text")
    return elapsed


def run(samples: int = 5, workdir: Path | None = None) -> dict[str, Any]:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="agentwire-bench-claude-"))
    home = make_home(workdir / "home")
    figures: dict[str, list[float]] = {}
    with FakeLLMServer() as fake:
        env = claude_env(fake, home)
        fake.enqueue(*[text(ANSWER) for _ in range(samples * 6 + 2)])
        figures["bare"] = [_bare(env, workdir) for _ in range(samples)]
        with _server(workdir, env, quick_pool=0) as port:
            figures["main_cold"] = []
            for n in range(samples):
                _create(port, f"cold-{n}", workdir / f"cold-{n}")
                figures["main_cold"].append(_first_text_ms(port, f"cold-{n}", "First question"))
            _first_text_ms(port, "cold-0", "Warming up the live process")
            figures["main_live"] = [_first_text_ms(port, "cold-0", f"Question {n}") for n in range(samples)]
            figures["quick_cold"] = [_first_text_ms(port, "cold-1", f"Quick {n}", "quick") for n in range(samples)]
        with _server(workdir, env, quick_pool=1) as port:
            cwd = workdir / "warm"
            _create(port, "warm", cwd)
            figures["quick_warm"] = []
            for n in range(samples):
                eventually(lambda: len(agents(home, cwd)) == 1)  # the pool's worker is up and waiting
                time.sleep(1.0)  # and idle for a while, as between a person's questions
                figures["quick_warm"].append(_first_text_ms(port, "warm", f"Quick {n}", "quick"))
        eventually(lambda: not processes(home), timeout=20)
    return {name: {"median_ms": statistics.median(values), "runs_ms": [round(v) for v in values]}
            for name, values in figures.items()}


ROWS = (("main turn, cold start (ms)", "main_cold"), ("main turn, live process (ms)", "main_live"),
        ("quick turn, cold start (ms)", "quick_cold"), ("quick turn, warm worker (ms)", "quick_warm"),
        ("bare `claude -p`, no agentwire (ms)", "bare"))


def case_claude(ctx: Any, table_class: Any) -> Any:
    """For `bench/run.py`."""
    samples = 2 if ctx.args.quick else 5
    table = table_class("claude", f"Claude Code: time to the first text event, median of {samples}",
                        f"The real Claude Code {VERSION} (the CLI claude-agent-sdk bundles) against the project's "
                        "Anthropic fake (answers at once); POST of a turn → its first `text.delta` event. Cold: "
                        "the turn starts Claude Code; live/warm: its process was up and waiting. Beside it, the "
                        "same CLI run bare as `claude -p` (process start → first text_delta line).")
    rows = {key: table.row(label, "{:,.0f}", ratio=False) for label, key in ROWS}
    try:
        result = run(samples, ctx.workdir)
    except Exception as exc:
        table.fail(TARGET, exc)
        return table
    for key, row in rows.items():
        row.values[TARGET] = result[key]["median_ms"]
    table.notes.append("each run (ms): " + "; ".join(f"{key} {result[key]['runs_ms']}" for _, key in ROWS))
    table.notes.append("main turns: one process per session, each user message into it (stream-json input); "
                       "quick turns: a worker of the warm pool, closed after its turn.")
    return table


def serve(port: int, journal: str, quick_pool: int) -> None:
    import uvicorn

    from agentwire.app import create_app
    from agentwire.config import Config

    config = Config(host=HOST, port=port, journal=journal, no_auth=True, provider="claude", model=MODEL,
                    quick_pool=quick_pool, log_level="warning")
    uvicorn.run(create_app(config), host=HOST, port=port, loop="uvloop", http="httptools", lifespan="on",
                log_level="warning", access_log=False, timeout_graceful_shutdown=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("serve")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--journal", required=True)
    server.add_argument("--quick-pool", type=int, default=2)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port, args.journal, args.quick_pool)
        return
    result = run(args.samples)
    for label, key in ROWS:
        print(f"{label:40} {result[key]['median_ms']:8.0f}   {result[key]['runs_ms']}")


if __name__ == "__main__":
    main()
