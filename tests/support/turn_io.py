"""`RecordingTurnIO`: a `providers.TurnIO` that records every call, for testing providers alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from agentwire.providers import Message, ToolOutcome, ToolSpec, Usage
from agentwire.types import JSON

TOOLS = [
    ToolSpec("todo_write", "Replace the turn's todo list (shown to the user live).", {
        "type": "object", "required": ["todos"],
        "properties": {"todos": {"type": "array", "items": {"type": "object", "properties": {
            "content": {"type": "string"}, "status": {"type": "string"}, "activeForm": {"type": "string"}}}}}}),
    ToolSpec("task_create", "Publish a task card on the user's board.", {
        "type": "object", "required": ["title"],
        "properties": {"title": {"type": "string"}, "description": {"type": "string"},
                       "output": {"type": "string"}, "choices": {"type": "array", "items": {"type": "object"}}}}),
    ToolSpec("task_update", "Change a task card you published.", {
        "type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}),
]

ToolHandler = Callable[[JSON], ToolOutcome]


def default_tool(name: str) -> ToolHandler:
    return lambda input: ToolOutcome(f"{name} ok: {sorted(input)}")


@dataclass
class RecordingTurnIO:
    message: str = "Hello"
    history: list[Message] = field(default_factory=list)
    model: str = ""
    system: str = "You are a test agent."
    options: JSON = field(default_factory=dict)
    tools: list[ToolSpec] = field(default_factory=lambda: list(TOOLS))
    turn_id: str = "t_test"
    session: str = "test"
    lane: str = "main"
    usage: Usage = field(default_factory=Usage)
    stop_reason: str = ""
    resume: JSON = field(default_factory=dict)
    cwd: str = "."
    todo_list: list[JSON] = field(default_factory=list)
    finish_data: JSON = field(default_factory=dict)
    handlers: dict[str, ToolHandler] = field(default_factory=dict)
    events: list[tuple[str, JSON]] = field(default_factory=list)
    outstanding_llm_calls: int = 0

    def _record(self, kind: str, **data: Any) -> None:
        self.events.append((kind, data))

    async def thinking(self, block: int, text: str) -> None:
        self._record("thinking.delta", block=block, text=text)

    async def thinking_done(self, block: int, text: str) -> None:
        self._record("thinking.done", block=block, text=text)

    async def text(self, block: int, text: str) -> None:
        self._record("text.delta", block=block, text=text)

    async def text_done(self, block: int, text: str) -> None:
        self._record("text.done", block=block, text=text)

    async def tool_call(self, call_id: str, name: str, input: JSON, parent_call_id: str | None = None) -> None:
        if parent_call_id is None:
            self._record("tool.call", call_id=call_id, name=name, input=input)
        else:
            self._record("tool.call", call_id=call_id, name=name, input=input, parent_call_id=parent_call_id)

    async def tool_result(self, call_id: str, output: str, is_error: bool = False,
                          duration_ms: float | None = None) -> None:
        self._record("tool.result", call_id=call_id, output=output, is_error=is_error)

    async def run_tool(self, call_id: str, name: str, input: JSON) -> ToolOutcome:
        await self.tool_call(call_id, name, input)
        outcome = self.handlers.get(name, default_tool(name))(input)
        await self.tool_result(call_id, outcome.output, outcome.is_error)
        return outcome

    async def todos(self, todos: list[JSON]) -> None:
        self.todo_list = [dict(item) for item in todos]
        self._record("todo.updated", todos=todos)

    async def remember(self, agent: JSON) -> None:
        self._record("agent.info", **agent)
        if self.lane == "main":
            self.resume = dict(agent)

    @asynccontextmanager
    async def llm_call(self) -> AsyncIterator[None]:
        self.outstanding_llm_calls += 1
        self._record("llm_call.start")
        try:
            yield
        finally:
            self.outstanding_llm_calls -= 1
            self._record("llm_call.end")

    async def state(self, agent_state: str, **extra: Any) -> None:
        self._record("state", agent_state=agent_state, **extra)

    # -- reading the record

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def of(self, kind: str) -> list[JSON]:
        return [data for k, data in self.events if k == kind]

    def deltas(self, kind: str = "text") -> dict[int, str]:
        """Block number → the text of its deltas, for `text` or `thinking`."""
        blocks: dict[int, str] = {}
        for data in self.of(f"{kind}.delta"):
            blocks[data["block"]] = blocks.get(data["block"], "") + data["text"]
        return blocks

    def done(self, kind: str = "text") -> dict[int, str]:
        return {data["block"]: data["text"] for data in self.of(f"{kind}.done")}

    def text_shown(self) -> str:
        return "".join(data["text"] for data in self.of("text.delta"))
