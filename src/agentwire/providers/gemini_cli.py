"""The `gemini-cli` provider: Google's Gemini CLI (`gemini --output-format stream-json`), one process per
turn, with the user's own `~/.gemini` settings and keys.

Command: `gemini --output-format stream-json --skip-trust --approval-mode <mode> -p "" [-m <model>]
[--resume <session_id>]`, the prompt on stdin (`-p` is appended to it, so an empty `-p` makes the run
headless with the message as it is), `GEMINI_CLI_NO_RELAUNCH=1` in its environment: otherwise it
re-spawns itself, and a SIGTERM to the first process does not reach the one that works. `-m` only
when the session names a model (without one, Gemini CLI's `auto` routing makes extra model calls).
`--skip-trust`: the session's working directory is the one the user chose for this agent, and a
headless run in an untrusted folder refuses to start; the trust is for that run only, nothing is
written. Resume is by session id, from the same working directory (where Gemini CLI keeps it).
Gemini CLI has no option to add to its system prompt, so a session's `system` is not passed to it.

Approval (session option `approval`): "read-only" (default) is `--approval-mode default`, which in a
headless run offers only the tools that need no confirmation (read, list, search); "full" is `yolo`
(shell, file writes, `write_todos`, all approved).

Mapping of its JSON lines (stream-json does not carry the model's thoughts):

| Gemini CLI line                                  | our events                                         |
|--------------------------------------------------|----------------------------------------------------|
| `init {session_id, model}`                       | `agent.info` (`remember`, `resume_id` = session id)|
| `message {role: "assistant", content, delta}`    | `text.delta`; `text.done` when a tool call or the end comes |
| `tool_use {tool_name, tool_id, parameters}`      | `tool.call`                                        |
| `tool_result {tool_id, status, output\\|error}`  | `tool.result` (error when `status` is "error")     |
| `write_todos` call, its result a success         | `todo.updated` (`description` is the `content`)    |
| `error {severity: "warning"}`                    | a warning kept in the usage (`warnings`)           |
| `result {status: "success", stats}`              | usage; the turn completes                          |
| `result {status: "error", error}`                | `turn.failed` with the API's own message, once     |
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

import orjson

from agentwire.providers import TurnIO, agent_mcp
from agentwire.providers.jsonl_agent import CliAgentProvider, LineMapping, as_text, count
from agentwire.types import JSON

log = logging.getLogger("agentwire.providers.gemini_cli")

_API_ERROR = re.compile(r"^\[API Error: (.*)\]$", re.S)


class GeminiCliProvider(CliAgentProvider):
    name = "gemini-cli"
    label = "Gemini CLI"

    def command(self, path: str, io: TurnIO, resume: str | None) -> list[str]:
        args = [path, "--output-format", "stream-json", "--skip-trust",
                "--approval-mode", "yolo" if self.approval == "full" else "default", "-p", ""]
        if self.named_model:
            args += ["-m", self.named_model]
        if resume is not None:
            args += ["--resume", resume]
        return args

    def mapping(self, io: TurnIO, record: JSON) -> GeminiMapping:
        return GeminiMapping(io, record)

    @contextlib.contextmanager
    def environment(self, io: TurnIO) -> Iterator[dict[str, str]]:
        env = {"GEMINI_CLI_NO_RELAUNCH": "1"}
        server = agent_mcp.board_server(io)
        if server is None:
            yield env
        else:  # the settings file goes on top of the system defaults the server's environment names
            with agent_mcp.gemini_settings(server, {**os.environ, **env}) as with_server:
                yield with_server


class GeminiMapping(LineMapping):
    def __init__(self, io: TurnIO, record: JSON) -> None:
        super().__init__(io, record)
        self._todos: dict[str, list[JSON]] = {}  # write_todos calls waiting for their result

    async def handle(self, line: JSON) -> None:
        kind = line["type"]
        self.lines += 1
        if kind == "init":
            self.started = True
            await self.io.remember({**self.record, "model": as_text(line.get("model")) or None,
                                    "resume_id": as_text(line.get("session_id"))})
            await self.say.model_waiting()
        elif kind == "message":
            if line.get("role") == "assistant":
                text = as_text(line.get("content"))
                await (self.say.delta("text", text) if line.get("delta") else self.say.whole("text", text))
        elif kind == "tool_use":
            await self._tool_use(line)
        elif kind == "tool_result":
            await self._tool_result(line)
        elif kind == "error":
            message = as_text(line.get("message"))
            if line.get("severity") == "error":
                self.error = f"gemini-cli: {_readable(message)}"
            else:
                self.warn(message)
        elif kind == "result":
            self._result(line)
        else:
            self.lines -= 1
            log.debug("gemini-cli: unknown line type %r", kind)

    async def _tool_use(self, line: JSON) -> None:
        call_id, name = as_text(line.get("tool_id")), as_text(line.get("tool_name")) or "tool"
        parameters = line.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else {"parameters": parameters}
        await self.say.call(call_id, name, parameters)
        todos = parameters.get("todos")
        if name == "write_todos" and isinstance(todos, list):
            self._todos[call_id] = [
                {"content": as_text(t.get("description")), "status": as_text(t.get("status")) or "pending",
                 "activeForm": as_text(t.get("description"))} for t in todos if isinstance(t, dict)]

    async def _tool_result(self, line: JSON) -> None:
        call_id = as_text(line.get("tool_id"))
        failed = line.get("status") == "error"
        error = line.get("error")
        output = as_text(line.get("output"))
        if failed and isinstance(error, dict) and error.get("message"):
            output = as_text(error.get("message"))
        await self.say.result(call_id, output, failed)
        todos = self._todos.pop(call_id, None)
        if todos is not None and not failed:  # a rejected write_todos changed nothing
            await self.io.todos(todos)

    def _result(self, line: JSON) -> None:
        self.finished = True
        stats = line.get("stats")
        if isinstance(stats, dict):
            self.io.usage.add(count(stats.get("input_tokens")), count(stats.get("output_tokens")))
            for name, ours in (("cached", "cached_input_tokens"), ("duration_ms", "duration_ms"),
                               ("tool_calls", "num_tool_calls")):
                if name in stats:
                    self.io.usage.extra[ours] = count(stats.get(name))
        if line.get("status") != "success":
            error = line.get("error")
            message = as_text(error.get("message") if isinstance(error, dict) else error)
            self.error = f"gemini-cli: {_readable(message) or 'the turn failed'}"


def _readable(message: str) -> str:
    """Gemini CLI wraps the API's error body in `[API Error: {json}]`: keep its code, status and message."""
    found = _API_ERROR.match(message.strip())
    if found is None:
        return message
    try:
        body = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return found.group(1)
    error = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(error, dict) or not error.get("message"):
        return found.group(1)
    status = " ".join(as_text(error.get(k)) for k in ("code", "status") if error.get(k) is not None)
    return f"API error {status}: {error['message']}" if status else f"API error: {error['message']}"
