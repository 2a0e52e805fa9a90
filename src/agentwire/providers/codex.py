"""The `codex` provider: OpenAI's Codex CLI (`codex exec --json`), one process per turn, with the user's
own `CODEX_HOME` configuration (model provider, key, model).

Command: `codex exec --json --skip-git-repo-check -C <cwd> [approval] [-m <model>]
[-c developer_instructions=<system>] [--ephemeral] [MCP overrides] [resume <thread_id>] -`, the prompt on
stdin (no argument length limit, and a message that starts with "-" stays a message). `-m` only when
the session names a model ("default" keeps the configured one). Quick turns are `--ephemeral`: their
own context, no session file left behind.

Approval (session option `approval`): "read-only" (default) is `sandbox_mode="read-only"` with
`approval_policy="never"` — Codex's own headless mode, stated explicitly so a config file that asks for
more cannot widen it; "full" is `--dangerously-bypass-approvals-and-sandbox` (no sandbox, never asks).

Mapping of its JSON lines:

| Codex line                                   | our events                                              |
|----------------------------------------------|---------------------------------------------------------|
| `thread.started {thread_id}`                 | `agent.info` (`remember`, `resume_id` = thread id)      |
| `turn.started`                               | a model call is outstanding (`state`)                   |
| item `agent_message {text}` (whole)          | `text.delta` with the whole text, `text.done`           |
| item `reasoning {text}`                      | `thinking.delta`, `thinking.done`                       |
| item `command_execution`                     | `tool.call exec_command {command}`; `tool.result` (its  |
|                                              | output; an error if it failed or exited non-zero)       |
| item `file_change {changes}`                 | `tool.call apply_patch {changes}`; `tool.result`        |
| item `mcp_tool_call {server, tool, …}`       | `tool.call mcp__<server>__<tool>`; `tool.result`        |
| item `web_search {query}`                    | `tool.call web_search {query}`; `tool.result`           |
| item `todo_list {items}`                     | `todo.updated` (an item is completed or pending)        |
| item `error {message}`                       | a warning kept in the usage (`warnings`)                |
| `error {message}` "Reconnecting…"            | `state {agent_state: "retrying", message}`              |
| `turn.completed {usage}`                     | usage; the turn completes                               |
| `turn.failed {error}` (after an `error`)     | `turn.failed` with its message, once                    |
"""

from __future__ import annotations

import contextlib
import logging
import tomllib

from agentwire.providers import TurnIO, agent_mcp, agents
from agentwire.providers.jsonl_agent import CliAgentProvider, LineMapping, as_text, count
from agentwire.types import JSON

log = logging.getLogger("agentwire.providers.codex")

class CodexProvider(CliAgentProvider):
    name = "codex"
    label = "Codex CLI"

    def shown_model(self) -> str | None:
        return self.named_model or configured_model()  # Codex never prints the model it uses

    def command(self, path: str, io: TurnIO, resume: str | None) -> list[str]:
        args = [path, "exec", "--json", "--skip-git-repo-check", "-C", io.cwd]
        if self.approval == "full":
            args.append("--dangerously-bypass-approvals-and-sandbox")
        else:
            args += ["-c", 'sandbox_mode="read-only"', "-c", 'approval_policy="never"']
        if self.named_model:
            args += ["-m", self.named_model]
        if io.system:
            args += ["-c", f"developer_instructions={agent_mcp.toml(io.system)}"]
        if io.lane != "main":
            args.append("--ephemeral")
        server = agent_mcp.board_server(io)
        if server is not None:
            args += agent_mcp.codex_overrides(server)
        if resume is not None:
            args += ["resume", resume]
        return [*args, "-"]

    def mapping(self, io: TurnIO, record: JSON) -> CodexMapping:
        return CodexMapping(io, record)

    def environment(self, io: TurnIO) -> contextlib.AbstractContextManager[dict[str, str]]:
        return contextlib.nullcontext(agent_mcp.codex_environment(agent_mcp.board_server(io)))


def configured_model() -> str | None:
    """The `model` of the user's Codex configuration, for the session header (None: Codex's default)."""
    path = agents.codex_home() / "config.toml"
    try:
        model = tomllib.loads(path.read_text()).get("model")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    return model if isinstance(model, str) else None


class CodexMapping(LineMapping):
    def __init__(self, io: TurnIO, record: JSON) -> None:
        super().__init__(io, record)
        self._todos: list[JSON] | None = None

    async def handle(self, line: JSON) -> None:
        kind = line["type"]
        self.lines += 1
        if kind == "thread.started":
            self.started = True
            await self.io.remember({**self.record, "resume_id": as_text(line.get("thread_id"))})
        elif kind == "turn.started":
            await self.say.model_waiting()
        elif kind in ("item.started", "item.updated", "item.completed"):
            item = line.get("item")
            if isinstance(item, dict):
                await self._item(item, done=kind == "item.completed")
        elif kind == "turn.completed":
            self._usage(line.get("usage"))
            self.finished = True
        elif kind == "turn.failed":
            error = line.get("error")
            message = as_text(error.get("message") if isinstance(error, dict) else error)
            self.error = f"codex: {message or self.error or 'the turn failed'}"
            self.finished = True
        elif kind == "error":
            message = as_text(line.get("message"))
            if message.startswith("Reconnecting"):
                await self.io.state("retrying", message=message)
            else:
                self.error = f"codex: {message}"
        else:
            self.lines -= 1
            log.debug("codex: unknown line type %r", kind)

    async def _item(self, item: JSON, *, done: bool) -> None:
        kind = item.get("type")
        call_id = as_text(item.get("id"))
        if kind == "agent_message" and done:
            await self.say.whole("text", as_text(item.get("text")))
        elif kind == "reasoning" and done:
            await self.say.whole("thinking", as_text(item.get("text")))
        elif kind == "todo_list":
            await self._todo_list(item.get("items"))
        elif kind == "error":
            self.warn(as_text(item.get("message")))
        elif kind in _TOOLS:
            name, tool_input = _TOOLS[kind](item)
            await self.say.call(call_id, name, tool_input)
            if done:
                output, is_error = _outcome(item)
                await self.say.result(call_id, output, is_error)
        else:
            log.debug("codex: unknown item type %r", kind)

    async def _todo_list(self, items: object) -> None:
        todos = [{"content": as_text(i.get("text")), "status": "completed" if i.get("completed") else "pending",
                  "activeForm": as_text(i.get("text"))}
                 for i in (items if isinstance(items, list) else []) if isinstance(i, dict)]
        if todos != self._todos:
            self._todos = todos
            await self.io.todos(todos)

    def _usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        self.io.usage.add(count(usage.get("input_tokens")), count(usage.get("output_tokens")))
        for name in ("cached_input_tokens", "reasoning_output_tokens"):
            if name in usage:
                self.io.usage.extra[name] = count(usage.get(name))


def _command(item: JSON) -> tuple[str, JSON]:
    return "exec_command", {"command": as_text(item.get("command"))}


def _file_change(item: JSON) -> tuple[str, JSON]:
    return "apply_patch", {"changes": _list(item.get("changes"))}


def _mcp(item: JSON) -> tuple[str, JSON]:
    arguments = item.get("arguments")
    name = f"mcp__{as_text(item.get('server'))}__{as_text(item.get('tool'))}"
    return name, arguments if isinstance(arguments, dict) else {"arguments": arguments}


def _search(item: JSON) -> tuple[str, JSON]:
    return "web_search", {"query": as_text(item.get("query"))}


_TOOLS = {"command_execution": _command, "file_change": _file_change, "mcp_tool_call": _mcp,
          "web_search": _search}


def _outcome(item: JSON) -> tuple[str, bool]:
    """What a finished tool item shows: its output, and whether it failed."""
    kind = item.get("type")
    failed = item.get("status") in ("failed", "declined")
    if kind == "command_execution":
        output = as_text(item.get("aggregated_output"))
        code = item.get("exit_code")
        if isinstance(code, int) and code != 0:
            output += f"{'' if not output or output.endswith(chr(10)) else chr(10)}[exit code {code}]"
            failed = True
        return output, failed
    if kind == "file_change":
        lines = [f"{c.get('kind', 'update')} {c.get('path', '')}" for c in _list(item.get("changes"))
                 if isinstance(c, dict)]
        return "\n".join(lines), failed
    if kind == "mcp_tool_call":
        error = item.get("error")
        if isinstance(error, dict) and error.get("message"):
            return as_text(error.get("message")), True
        result = item.get("result")
        parts = _list(result.get("content")) if isinstance(result, dict) else []
        return "\n".join(as_text(p.get("text")) for p in parts if isinstance(p, dict) and "text" in p), failed
    return "", failed


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []
