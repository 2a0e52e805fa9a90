"""Helpers for the protocol views (AG-UI, AI SDK): run the node clients, and put what a client built
and what the journal holds into one comparable shape.

The shape is the assistant side of one turn, in order: ("thinking", text), ("text", text) and
("tool", name, input, output, is_error), with the ids left out (each protocol names things its own
way); the journal's side comes from the same `Transcript` fold the server and dashboard use.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from agentwire.console.transcript import TERMINAL
from tests.support.paths import ROOT, TESTS
from tests.support.server import running_app
from tests.support.turns import follow_until, transcript_of

JSON = dict[str, Any]
TOKEN = "protocols-test-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
NODE_DIR = TESTS / "node"
Part = tuple[Any, ...]


@contextlib.contextmanager
def served(directory: Path) -> Iterator[str]:
    """A server with a token (the clients send it as their own transports do) and a SQLite journal."""
    with running_app(journal=f"sqlite:///{directory / 'journal.db'}", token=TOKEN) as (url, _):
        yield url


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def unique(prefix: str) -> str:
    return f"{prefix}-{random.randrange(10**9)}"


def node_command(script: str, *args: str) -> list[str]:
    node = shutil.which("node")
    assert node is not None, "node is not installed (make test installs it)"
    return [node, str(NODE_DIR / script), *args]


def run_node(script: str, *args: str, timeout: float = 120) -> tuple[JSON, str]:
    """Run a helper under tests/node to its end; returns its JSON line and its stderr."""
    done = subprocess.run(node_command(script, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} failed ({done.returncode}): {done.stderr[-3000:]}"
    result: JSON = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result, done.stderr


def start_node(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(node_command(script, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish_node(process: subprocess.Popen[str], timeout: float = 120) -> tuple[JSON, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"node failed ({process.returncode}): {stderr[-3000:]}"
    result: JSON = orjson.loads(stdout.strip().splitlines()[-1])
    return result, stderr


def config(**values: Any) -> str:
    return orjson.dumps(values).decode()


def turn_events(url: str, session: str, turn: str, headers: dict[str, str]) -> list[JSON]:
    """The session's events from the start through the end of `turn` (from `GET …/events`)."""
    return follow_until(url, session, 0, lambda e: e.get("turn") == turn and e["type"] in TERMINAL,
                        headers=headers)


def journal_parts(events: list[JSON], turn: str) -> list[Part]:
    parts: list[Part] = []
    for entry in transcript_of(events).entries:
        if entry["turn"] != turn or entry["role"] != "assistant":
            continue
        if entry["kind"] == "tool":
            parts.append(("tool", entry["name"], entry["input"], entry["output"], entry["is_error"]))
        else:
            parts.append((entry["kind"], entry["text"]))
    return parts


def agui_parts(messages: list[JSON]) -> list[Part]:
    """What HttpAgent built: reasoning and assistant messages, each tool call with its tool message."""
    results = {message["toolCallId"]: message for message in messages if message["role"] == "tool"}
    parts: list[Part] = []
    for message in messages:
        if message["role"] == "reasoning":
            parts.append(("thinking", message["content"]))
        elif message["role"] == "assistant":
            if message.get("content"):
                parts.append(("text", message["content"]))
            for call in message.get("toolCalls") or []:
                result = results[call["id"]]
                parts.append(("tool", call["function"]["name"], orjson.loads(call["function"]["arguments"]),
                              result["content"], result["metadata"]["agentwire"]["is_error"]))
    return parts


def ui_message_parts(message: JSON) -> list[Part]:
    """What readUIMessageStream (or useChat) built: the message's reasoning, text and tool parts."""
    parts: list[Part] = []
    for part in message["parts"]:
        if part["type"] in ("reasoning", "text"):
            parts.append(("thinking" if part["type"] == "reasoning" else "text", part["text"]))
        elif part["type"] == "dynamic-tool":
            failed = part["state"] == "output-error"
            parts.append(("tool", part["toolName"], part["input"], part["errorText"] if failed else part["output"],
                          failed))
    return parts


def data_parts(message: JSON, name: str) -> list[JSON]:
    return [part for part in message["parts"] if part["type"] == f"data-{name}"]
