"""agentwire's board tools, defined once: `task_create` and `task_update`, as the built-in agent loop
offers them (`console/tools.py`) and as both MCP servers serve them (`mcp_server.py`: in process for
Claude Code, `agentwire mcp` for any other agent).

A tool call runs against a `BoardAccess`: the board of this process, or the server's REST API (an
agent outside the server). The card belongs to the calling session (`session`) and names the agent
that made it (`createdBy`); `task_update` changes only cards of that session (or of none).
"""

from __future__ import annotations

from typing import Protocol

import orjson
from pydantic import ValidationError

from agentwire.providers import ToolOutcome, ToolSpec
from agentwire.tasks import TaskIn, TaskPatch
from agentwire.types import JSON, AgentwireError

TASK_PROPERTIES: JSON = {
    "title": {"type": "string", "description": "What the card is about, in a few words"},
    "description": {"type": "string"},
    "status": {"type": "string", "enum": ["pending", "in_progress", "completed", "failed", "cancelled"]},
    "tags": {"type": "array", "items": {"type": "string"}},
    "output": {"type": "string", "description": "HTML report shown on the card (sanitized: no scripts)"},
    "choices": {"type": "array", "description": "Buttons for the user; the value of the one clicked comes "
                                                "back to you as the user's next message",
                "items": {"type": "object", "properties": {
                    "label": {"type": "string"}, "value": {"type": "string"}, "primary": {"type": "boolean"}},
                    "required": ["label", "value"]}},
}
TASK_CREATE = ToolSpec(
    "task_create", "Publish a task card on the user's board (a report, a question with choices).",
    {"type": "object", "properties": TASK_PROPERTIES, "required": ["title"]})
TASK_UPDATE = ToolSpec(
    "task_update", "Change a task card you published (its id is in task_create's result).",
    {"type": "object", "properties": {"id": {"type": "string"}, **TASK_PROPERTIES}, "required": ["id"]})
BOARD_TOOLS = (TASK_CREATE, TASK_UPDATE)

_CARD_FIELDS = ("title", "description", "status", "tags")
_CONTEXT_FIELDS = ("output", "choices")


class BoardAccess(Protocol):
    """Where the tools reach the board; errors are `AgentwireError`s (404 for an unknown id)."""

    async def create(self, body: TaskIn) -> JSON: ...

    async def get(self, task_id: str) -> JSON: ...

    async def update(self, task_id: str, patch: TaskPatch) -> JSON: ...


async def run_board_tool(board: BoardAccess, name: str, input: JSON, *, session: str, agent: str) -> ToolOutcome:
    """Run `task_create` or `task_update`; bad input and refusals come back as error outcomes the agent
    can read (never raised), so one wrong call costs the agent a retry, not its turn."""
    try:
        if name == TASK_CREATE.name:
            task = await board.create(TaskIn.model_validate({
                **{k: input[k] for k in _CARD_FIELDS if k in input}, "session": session, "createdBy": agent,
                "context": {k: input[k] for k in _CONTEXT_FIELDS if k in input}}))
        elif name == TASK_UPDATE.name:
            task = await _update(board, input, session)
        else:
            return ToolOutcome(f"unknown tool {name!r}", is_error=True)
    except (ValidationError, AgentwireError) as exc:
        return error_outcome(name, exc)
    return ToolOutcome(orjson.dumps({"id": task["id"], "status": task["status"]}).decode())


def error_outcome(name: str, exc: ValidationError | AgentwireError) -> ToolOutcome:
    """A tool's failure in words the agent can act on: the field that is wrong, or the refusal."""
    if isinstance(exc, AgentwireError):
        return ToolOutcome(f"{name} failed: {exc.message}", is_error=True)
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "input"
    return ToolOutcome(f"invalid input for {name}: {where}: {first['msg']}", is_error=True)


async def _update(board: BoardAccess, input: JSON, session: str) -> JSON:
    task_id = input.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise AgentwireError("id must be the id task_create answered with", field="id")
    patch: JSON = {k: input[k] for k in _CARD_FIELDS if k in input}
    context = {k: input[k] for k in _CONTEXT_FIELDS if k in input}
    if context:
        patch["context"] = context
    checked = TaskPatch.model_validate(patch)  # bad input is refused before the card is looked up
    owner = (await board.get(task_id)).get("session")
    if owner and owner != session:
        raise AgentwireError(f"task {task_id!r} belongs to session {owner!r}, not to this one", code="not_yours")
    return await board.update(task_id, checked)
