"""Agent providers: what runs a turn. Chosen by name, imported lazily (no SDK import cost unused).

A provider gets a `TurnIO` and reports the turn through it; the console runtime turns those calls
into journaled events, tracks state and timing, and owns cancellation (it cancels the task running
`Provider.run`, so a provider must let `asyncio.CancelledError` through after closing its stream or
subprocess). A failure the user should read is raised as `ProviderError(message)`.
"""

from __future__ import annotations

import importlib
import os
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentwire.types import JSON, AgentwireError


class ProviderError(Exception):
    """A turn failed for a reason to show the user (the provider's own message where it has one)."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    input_schema: JSON


@dataclass(slots=True)
class ToolOutcome:
    output: str
    is_error: bool = False


@dataclass(slots=True)
class Message:
    """One entry of the context a provider sends to its model: a user or assistant text."""

    role: str  # "user" | "assistant"
    content: str


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

    async def thinking(self, block: int, text: str) -> None: ...

    async def thinking_done(self, block: int, text: str) -> None: ...

    async def text(self, block: int, text: str) -> None: ...

    async def text_done(self, block: int, text: str) -> None: ...

    async def tool_call(self, call_id: str, name: str, input: JSON) -> None:
        """A tool the agent runs itself (a CLI agent's own tools): shown, not executed here."""
        ...

    async def tool_result(self, call_id: str, output: str, is_error: bool = False,
                          duration_ms: float | None = None) -> None: ...

    async def run_tool(self, call_id: str, name: str, input: JSON) -> ToolOutcome:
        """Run a built-in tool the model asked for: emits `tool.call`, runs it, emits `tool.result`."""
        ...

    async def todos(self, todos: list[JSON]) -> None:
        """`todo.updated` (a CLI agent's TodoWrite, which it ran itself)."""
        ...

    def llm_call(self) -> AbstractAsyncContextManager[None]:
        """Wrap each model request: counts outstanding LLM calls in `state` events."""
        ...

    async def state(self, agent_state: str, **extra: Any) -> None:
        """An agent-state change worth showing (e.g. "rate_limited" with `retry_in_s`)."""
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
    # "module:function": given the provider's name, says what is missing for it to run here (an agent
    # CLI's binary or credentials), or None. Imported only when asked.
    check: str | None = None


PROVIDERS: dict[str, ProviderInfo] = {
    "scripted": ProviderInfo("agentwire.providers.scripted:ScriptedProvider", None, "scripted-1"),
    "cli": ProviderInfo("agentwire.providers.cli_agent:CliProvider", None, "cli"),
    "anthropic": ProviderInfo("agentwire.providers.anthropic:AnthropicProvider", "ANTHROPIC_API_KEY",
                              "claude-sonnet-4-6"),
    "openai": ProviderInfo("agentwire.providers.openai:OpenAIProvider", "OPENAI_API_KEY", "gpt-4.1-mini"),
    "gemini": ProviderInfo("agentwire.providers.gemini:GeminiProvider", "GEMINI_API_KEY", "gemini-2.5-flash"),
    # Agent CLIs with the user's own configuration: "default" runs the model that configuration names.
    "codex": ProviderInfo("agentwire.providers.codex:CodexProvider", None, "default",
                          "agentwire.providers.agents:cli_missing"),
    "gemini-cli": ProviderInfo("agentwire.providers.gemini_cli:GeminiCliProvider", None, "default",
                               "agentwire.providers.agents:cli_missing"),
}


def check_provider(name: str) -> ProviderInfo:
    """Refuse, at session creation, a provider that is unknown or has no key (422 naming the variable)."""
    info = PROVIDERS.get(name)
    if info is None:
        raise AgentwireError(
            f"unknown provider {name!r}; choose one of {', '.join(sorted(PROVIDERS))}",
            code="unknown_provider", status=422, field="provider",
        )
    if info.key_env is not None and not _key_present(name, info.key_env):
        raise AgentwireError(
            f"provider {name!r} needs an API key: set {info.key_env}",
            code="missing_api_key", status=422, field="provider",
        )
    if info.check is not None and (missing := _load(info.check)(name)):
        raise AgentwireError(missing, code="agent_unavailable", status=422, field="provider")
    return info


def _load(target: str) -> Any:
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)


def _key_present(name: str, key_env: str) -> bool:
    if os.environ.get(key_env):
        return True
    # google-genai also reads GOOGLE_API_KEY.
    return name == "gemini" and bool(os.environ.get("GOOGLE_API_KEY"))


def make_provider(name: str, model: str | None, options: JSON) -> Provider:
    info = check_provider(name)
    provider: Provider = _load(info.target)(model or info.default_model, options)
    return provider

