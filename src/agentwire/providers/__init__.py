"""Agent providers: what runs a turn. Chosen by name, imported lazily (no SDK import cost unused).

A provider gets a `TurnIO` and reports the turn through it; the console runtime turns those calls
into journaled events, tracks state and timing, and owns cancellation (it cancels the task running
`Provider.run`, so a provider must let `asyncio.CancelledError` through after closing its stream or
subprocess). A failure the user should read is raised as `ProviderError(message)`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentwire.types import JSON, AgentwireError
from agentwire.types import Message as Message  # the providers' API: the context they get


class ProviderError(AgentwireError):
    """A turn failed for a reason to show the user (the provider's own message where it has one)."""

    status = 502
    code = "provider_error"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    input_schema: JSON


@dataclass(slots=True)
class ToolOutcome:
    output: str
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class Permission:
    """A person's answer to an agent's request to use a tool (`TurnIO.ask_permission`)."""

    allowed: bool
    message: str = ""  # why it was denied, for the agent to read
    by: str = "user"  # "user", "rule" (allowed for the session earlier), "timeout", "cancel", "turn_end"
    # The turn is being cancelled: an agent that can stop at once (Claude Code) should.
    interrupt: bool = False


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    extra: JSON = field(default_factory=dict)

    def add(self, input_tokens: int = 0, output_tokens: int = 0, cost_usd: float | None = None) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        if cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost_usd

    def as_json(self) -> JSON:
        body: JSON = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.cost_usd is not None:
            body["cost_usd"] = round(self.cost_usd, 6)
        body.update(self.extra)
        return body


class TurnIO(Protocol):
    """How a provider reports one turn. Calls become journaled events in the order they are made;
    all of them are stored before the turn's terminal event."""

    turn_id: str
    session: str
    lane: str
    message: str
    history: list[Message]  # the lane's earlier messages, oldest first, not including `message`
    model: str
    provider: str  # the session's provider, by name (the agent's name on the cards it publishes)
    system: str
    options: JSON  # the session's options (scripted: deltas, delay_ms, …; cli: command)
    tools: list[ToolSpec]  # the built-in tools offered to the model
    usage: Usage
    stop_reason: str
    # What the agent kept for this session with `remember` (e.g. its own session id to resume), as
    # stored in the journal: it survives restarts and is the same on every node. {} on the quick
    # lane, which has a context of its own, and before the session's first `remember`.
    resume: JSON
    cwd: str  # the directory an agent that runs tools works in (session option `cwd`, else the server's)
    # The todo list as this lane last set it (items `{content, status, activeForm, id?}`), read from the
    # journal: an agent that edits its list item by item (Claude Code's TaskUpdate) starts from it.
    # [] on the quick lane, whose context is its own.
    todo_list: list[JSON]
    # Fields the provider adds to its turn's terminal event (e.g. `permission_denials`).
    finish_data: JSON

    async def thinking(self, block: int, text: str) -> None: ...

    async def thinking_done(self, block: int, text: str) -> None: ...

    async def text(self, block: int, text: str) -> None: ...

    async def text_done(self, block: int, text: str) -> None: ...

    async def tool_call(self, call_id: str, name: str, input: JSON, parent_call_id: str | None = None) -> None:
        """A tool the agent runs itself (a CLI agent's own tools): shown, not executed here.
        `parent_call_id`: the call this one was made under (a subagent's tool, under its Task/Agent
        call); its `tool.call` and `tool.result` carry it."""
        ...

    async def tool_result(self, call_id: str, output: str, is_error: bool = False,
                          duration_ms: float | None = None) -> None: ...

    async def run_tool(self, call_id: str, name: str, input: JSON) -> ToolOutcome:
        """Run a built-in tool the model asked for: emits `tool.call`, runs it, emits `tool.result`."""
        ...

    async def todos(self, todos: list[JSON]) -> None:
        """`todo.updated`: the whole list (a CLI agent's todo tool, which it ran itself)."""
        ...

    def llm_call(self) -> AbstractAsyncContextManager[None]:
        """Wrap each model request: counts outstanding LLM calls in `state` events."""
        ...

    async def state(self, agent_state: str, **extra: Any) -> None:
        """An agent-state change worth showing (e.g. "rate_limited" with `retry_in_s`)."""
        ...

    async def ask_permission(self, tool: str, input: JSON, *, call_id: str | None = None,
                             title: str | None = None) -> Permission:
        """Ask the person whether the agent may run `tool` with `input`, and wait for the answer:
        journaled as `permission.requested`, answered by `POST …/permissions/{id}` or the WebSocket
        op `decide` on any node (`permission.decided`). A tool (or Bash command prefix) the person
        allowed for the session earlier is allowed at once; no answer in time is a deny."""
        ...

    def mcp_command(self) -> tuple[list[str], dict[str, str]]:
        """How an agent process of this turn starts `agentwire mcp` — the board tools as an MCP server on
        stdio, its cards in this session, `createdBy` the provider's name: the command line, and the
        environment to add (the server's URL and token)."""
        ...

    async def board_tool(self, name: str, input: JSON, agent: str) -> ToolOutcome:
        """Run one of agentwire's board tools (`task_create`, `task_update`) for an agent that calls
        it itself over MCP: the card belongs to this session and is `createdBy` `agent`. No events:
        the agent reports its own call."""
        ...

    async def remember(self, agent: JSON) -> None:
        """What the agent is (`name`, `version`, `model`, `cwd`, …, shown in the session header) and
        what it needs to continue this session later (`resume_id`): journaled as `agent.info`; on the
        main lane also kept as the session's `resume` for its next turns."""
        ...


class Provider(Protocol):
    name: str

    async def run(self, io: TurnIO) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    target: str  # "module:Class"
    key_env: str | None  # the SDK's usual environment variable for its key
    default_model: str
    # Keeps its agent process between turns: the console hands one instance every main turn of a
    # session (`console/agents.py`) and closes it after an idle time; it resumes from `io.resume`
    # whenever its process is new.
    live: bool = False
    # The Python package it needs (pip's name), installed by agentwire's extra `extra` (default: the
    # provider's name).
    requires: str | None = None
    extra: str | None = None
    # "module:function(name, options) -> str | None": what is missing for it to run here with these
    # options (its session's, with the server's settings for it: `Console._options`), e.g. an agent
    # CLI's binary or credentials; None when nothing is. Imported only when asked.
    check: str | None = None


PROVIDERS: dict[str, ProviderInfo] = {
    "scripted": ProviderInfo("agentwire.providers.scripted:ScriptedProvider", None, "scripted-1"),
    "cli": ProviderInfo("agentwire.providers.cli_agent:CliProvider", None, "cli"),
    # Agent CLIs with the user's own configuration and keys (no key check: Claude Code may be logged in
    # to an account instead of using ANTHROPIC_API_KEY); "default" runs the model that configuration names.
    "claude": ProviderInfo("agentwire.providers.claude:ClaudeProvider", None, "default", live=True,
                           requires="claude-agent-sdk", check="agentwire.providers.agents:cli_missing"),
    "codex": ProviderInfo("agentwire.providers.codex:CodexProvider", None, "default",
                          check="agentwire.providers.agents:cli_missing"),
    "gemini-cli": ProviderInfo("agentwire.providers.gemini_cli:GeminiCliProvider", None, "default",
                               check="agentwire.providers.agents:cli_missing"),
    "anthropic": ProviderInfo("agentwire.providers.anthropic:AnthropicProvider", "ANTHROPIC_API_KEY",
                              "claude-sonnet-4-6", requires="anthropic", extra="providers"),
    "openai": ProviderInfo("agentwire.providers.openai:OpenAIProvider", "OPENAI_API_KEY", "gpt-4.1-mini",
                           requires="openai", extra="providers"),
    "gemini": ProviderInfo("agentwire.providers.gemini:GeminiProvider", "GEMINI_API_KEY", "gemini-2.5-flash",
                           requires="google-genai", extra="providers"),
}


def check_provider(name: str, options: JSON | None = None) -> ProviderInfo:
    """Refuse, at session creation, a provider that is unknown or cannot run here (422 naming what is
    missing: the Python package, the key variable, the agent CLI's binary or credentials). `options`:
    what it would be made with (`ProviderInfo.check`). `GET /api/agents` lists the same reasons."""
    info = PROVIDERS.get(name)
    if info is None:
        raise AgentwireError(
            f"unknown provider {name!r}; choose one of {', '.join(sorted(PROVIDERS))}",
            code="unknown_provider", status=422, field="provider",
        )
    if info.requires is not None and package_version(info.requires) is None:
        raise AgentwireError(
            f"provider {name!r} needs the Python package {info.requires.replace('_', '-')}: "
            f"pip install 'agentwire[{info.extra or name}]'", code="provider_unavailable", status=422,
            field="provider",
        )
    if info.key_env is not None and not _key_present(name, info.key_env):
        raise AgentwireError(
            f"provider {name!r} needs an API key: set {info.key_env}",
            code="missing_api_key", status=422, field="provider",
        )
    if info.check is not None and (missing := _load(info.check)(name, options or {})):
        raise AgentwireError(missing, code="provider_unavailable", status=422, field="provider")
    return info


def package_version(package: str) -> str | None:
    """The installed version of a Python package (pip's name), or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load(target: str) -> Any:
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)


def _key_present(name: str, key_env: str) -> bool:
    if os.environ.get(key_env):
        return True
    # google-genai also reads GOOGLE_API_KEY.
    return name == "gemini" and bool(os.environ.get("GOOGLE_API_KEY"))


def make_provider(name: str, model: str | None, options: JSON) -> Provider:
    info = check_provider(name, options)
    provider: Provider = _load(info.target)(model or info.default_model, options)
    return provider

