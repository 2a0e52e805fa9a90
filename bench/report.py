"""What a run writes: result tables (agentwire beside the baseline and the limit of the same run),
the goals checked against them, and `bench/RESULTS.md` with the command and the machine that made it."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata

Value = float | str | None


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



# --------------------------------------------------------------------------- report


def load_average() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def busy(load: str) -> bool:
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
        "Why the figures are what they are — the profiles behind them and the targets missed: "
        "[NOTES.md](NOTES.md).", "",
        "Command:", "", "```", command_line(), "```", "",
        "Machine:", "", *machine(),
        f"- Load average (1, 5, 15 min) before the run: {load_before}; after: {load_average()}",
        f"- Total run time: {elapsed:.0f} s",
        f"- CPUs: {pinned}", "",
        *([f"**Caution:** the machine was busy with other work (load average {load_before} on "
           f"{os.cpu_count()} cores), so every process got a fraction of a core: wall-clock figures (events/s, "
           "latency) are noisy and low; CPU-seconds and memory per connection are the more robust figures. "
           "Rerun on a quiet machine before comparing against the goals.", ""]
          if busy(load_before) else []),
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
