"""Built-in tools the agent loop offers a model: todo_write, task_create, task_update. More can be
registered with `Tools.register`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from agentwire.providers import ToolOutcome, ToolSpec
from agentwire.tasks import Board, TaskIn, TaskPatch
from agentwire.types import JSON, AgentwireError


@dataclass
class ToolCall:
    """What a tool sees of the turn that called it."""

    session: str
    turn_id: str
    publish_todos: Callable[[list[JSON]], Awaitable[None]]


ToolFn = Callable[[ToolCall, JSON], Awaitable[str]]

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
_TASK_PROPERTIES: JSON = {
    "title": {"type": "string"}, "description": {"type": "string"},
    "status": {"type": "string", "enum": ["pending", "in_progress", "completed", "failed", "cancelled"]},
    "tags": {"type": "array", "items": {"type": "string"}},
    "output": {"type": "string", "description": "HTML report shown on the card (sanitized)"},
    "choices": {"type": "array", "items": {"type": "object", "properties": {
        "label": {"type": "string"}, "value": {"type": "string"}, "primary": {"type": "boolean"}},
        "required": ["label", "value"]}},
}


class Tools:
    def __init__(self, board: Board) -> None:
        self.board = board
        self._tools: dict[str, tuple[ToolSpec, ToolFn]] = {}
        self.register(ToolSpec("todo_write", "Replace the turn's todo list (shown to the user live).",
                               _TODO_SCHEMA), self._todo_write)
        self.register(ToolSpec("task_create", "Publish a task card on the user's board.",
                               {"type": "object", "properties": _TASK_PROPERTIES, "required": ["title"]}),
                      self._task_create)
        self.register(ToolSpec("task_update", "Change a task card you published.",
                               {"type": "object", "properties": {"id": {"type": "string"}, **_TASK_PROPERTIES},
                                "required": ["id"]}), self._task_update)

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
            return ToolOutcome(await found[1](call, input))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "input"
            return ToolOutcome(f"invalid input for {name}: {where}: {first['msg']}", is_error=True)
        except AgentwireError as exc:
            return ToolOutcome(f"{name} failed: {exc.message}", is_error=True)

    async def _todo_write(self, call: ToolCall, input: JSON) -> str:
        todos = input.get("todos")
        if not isinstance(todos, list) or not all(isinstance(t, dict) and "content" in t for t in todos):
            raise AgentwireError("todos must be a list of {content, status, activeForm}")
        cleaned = [{"content": str(t["content"]), "status": str(t.get("status", "pending")),
                    "activeForm": str(t.get("activeForm", t["content"]))} for t in todos]
        await call.publish_todos(cleaned)
        done = sum(1 for t in cleaned if t["status"] == "completed")
        return f"todo list updated: {done}/{len(cleaned)} completed"

    async def _task_create(self, call: ToolCall, input: JSON) -> str:
        body = {k: v for k, v in input.items() if k in ("title", "description", "status", "tags")}
        context = {k: input[k] for k in ("output", "choices") if k in input}
        task = await self.board.create(TaskIn.model_validate({**body, "session": call.session,
                                                              "context": context}), created_by="agent")
        return orjson.dumps({"id": task["id"], "status": task["status"]}).decode()

    async def _task_update(self, call: ToolCall, input: JSON) -> str:
        task_id = str(input.get("id", ""))
        patch = {k: v for k, v in input.items() if k in ("title", "description", "status", "tags")}
        context = {k: input[k] for k in ("output", "choices") if k in input}
        if context:
            patch["context"] = context
        task = await self.board.update(task_id, TaskPatch.model_validate(patch))
        return orjson.dumps({"id": task["id"], "status": task["status"]}).decode()
