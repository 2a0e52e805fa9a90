"""Built-in tools the agent loop offers a model: todo_write, and the board tools task_create and
task_update (`board_tools.py`, the same the MCP servers serve). More can be registered with
`Tools.register`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError

from agentwire.board_tools import BOARD_TOOLS, error_outcome, run_board_tool
from agentwire.providers import ToolOutcome, ToolSpec
from agentwire.tasks import Board
from agentwire.types import JSON, AgentwireError


@dataclass
class ToolCall:
    """What a tool sees of the turn that called it."""

    session: str
    turn_id: str
    publish_todos: Callable[[list[JSON]], Awaitable[None]]
    agent: str = "agent"  # who calls: the card's `createdBy`


# A tool's result text, or its whole outcome when it reports errors itself.
ToolFn = Callable[[ToolCall, JSON], Awaitable[str | ToolOutcome]]

_TODO_SCHEMA: JSON = {
    "type": "object",
    "properties": {"todos": {"type": "array", "items": {
        "type": "object",
        "properties": {"content": {"type": "string"},
                       "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                       "activeForm": {"type": "string"}},
        "required": ["content", "status"]}}},
    "required": ["todos"],
}
class Tools:
    def __init__(self, board: Board) -> None:
        self.board = board
        self._tools: dict[str, tuple[ToolSpec, ToolFn]] = {}
        self.register(ToolSpec("todo_write", "Replace the turn's todo list (shown to the user live).",
                               _TODO_SCHEMA), self._todo_write)
        for spec in BOARD_TOOLS:
            self.register(spec, self._board_tool(spec.name))

    def register(self, spec: ToolSpec, fn: ToolFn) -> None:
        self._tools[spec.name] = (spec, fn)

    @property
    def specs(self) -> list[ToolSpec]:
        return [spec for spec, _ in self._tools.values()]

    async def run(self, call: ToolCall, name: str, input: JSON) -> ToolOutcome:
        found = self._tools.get(name)
        if found is None:
            return ToolOutcome(f"unknown tool {name!r}", is_error=True)
        try:
            result = await found[1](call, input)
            return result if isinstance(result, ToolOutcome) else ToolOutcome(result)
        except (ValidationError, AgentwireError) as exc:
            return error_outcome(name, exc)

    async def _todo_write(self, call: ToolCall, input: JSON) -> str:
        todos = input.get("todos")
        if not isinstance(todos, list) or not all(isinstance(t, dict) and "content" in t for t in todos):
            raise AgentwireError("todos must be a list of {content, status, activeForm}")
        cleaned = [{"content": str(t["content"]), "status": str(t.get("status", "pending")),
                    "activeForm": str(t.get("activeForm", t["content"]))} for t in todos]
        await call.publish_todos(cleaned)
        done = sum(1 for t in cleaned if t["status"] == "completed")
        return f"todo list updated: {done}/{len(cleaned)} completed"

    def _board_tool(self, name: str) -> ToolFn:
        async def run(call: ToolCall, input: JSON) -> ToolOutcome:
            return await run_board_tool(self.board, name, input, session=call.session, agent=call.agent)

        return run
