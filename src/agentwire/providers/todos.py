"""A coding agent's todo list, from whichever todo tool it uses.

Claude Code 2.x keeps it in `TaskCreate` / `TaskUpdate` / `TaskList` / `TaskGet` (one task at a time,
by id); older releases, and 2.x with `CLAUDE_CODE_ENABLE_TASKS=0`, in `TodoWrite` (the whole list).
A call changes the list only once its result says it worked: a rejected call ("No such tool available:
TodoWrite", "Task not found") leaves the list as it was. The id a new task got is read from its result.

Items are `{content, status, activeForm}` as `todo.updated` has always carried them, plus `id` for a
task the agent addresses by id.
"""

from __future__ import annotations

import re
from typing import Any

from agentwire.types import JSON

TODO_TOOLS = frozenset({"TodoWrite", "TaskCreate", "TaskUpdate", "TaskList", "TaskGet"})
STATUSES = frozenset({"pending", "in_progress", "completed"})
_CREATED = re.compile(r"Task #(\S+) created")


class TodoList:
    def __init__(self, items: list[JSON] | None = None) -> None:
        self.items: list[JSON] = [dict(item) for item in items or [] if isinstance(item, dict)]

    def apply(self, name: str, input: JSON, output: str, is_error: bool, result: Any = None) -> bool:
        """Apply a finished call of a todo tool; True if the list changed. `result` is the tool's
        structured result where the agent reports one (Claude Code's `tool_use_result`)."""
        if is_error or (isinstance(result, dict) and result.get("success") is False):
            return False
        before = [dict(item) for item in self.items]
        result = result if isinstance(result, dict) else {}
        if name == "TodoWrite":
            todos = input.get("todos")
            if not isinstance(todos, list):
                return False
            self.items = [_item(t) for t in todos if isinstance(t, dict)]
        elif name == "TaskCreate":
            self._create(input, output, result)
        elif name == "TaskUpdate":
            self._update(str(input.get("taskId", "")), input)
        elif name == "TaskList" and isinstance(result.get("tasks"), list):
            known = {item.get("id"): item for item in self.items}
            self.items = [_from_task(task, known.get(str(task.get("id"))))
                          for task in result["tasks"] if isinstance(task, dict)]
        elif name == "TaskGet" and isinstance(result.get("task"), dict):
            task = result["task"]
            self._update(str(task.get("id", "")), {"subject": task.get("subject"), "status": task.get("status")})
        return self.items != before

    def _create(self, input: JSON, output: str, result: JSON) -> None:
        task = result.get("task")
        task_id = task.get("id") if isinstance(task, dict) else None
        if task_id is None and (found := _CREATED.search(output)):
            task_id = found.group(1)
        subject = str(input.get("subject") or "")
        item: JSON = {"content": subject, "status": "pending",
                      "activeForm": str(input.get("activeForm") or subject)}
        if task_id is not None:
            item["id"] = str(task_id)
        self.items.append(item)

    def _update(self, task_id: str, fields: JSON) -> None:
        item = next((i for i in self.items if i.get("id") == task_id), None)
        if fields.get("status") == "deleted":
            self.items = [i for i in self.items if i is not item]
            return
        if item is None:  # a task from before this list was kept (e.g. an older session)
            item = {"id": task_id, "content": f"Task #{task_id}", "status": "pending", "activeForm": ""}
            self.items.append(item)
        if isinstance(fields.get("subject"), str) and fields["subject"]:
            item["content"] = fields["subject"]
        if isinstance(fields.get("activeForm"), str) and fields["activeForm"]:
            item["activeForm"] = fields["activeForm"]
        if fields.get("status") in STATUSES:
            item["status"] = fields["status"]
        if not item["activeForm"]:
            item["activeForm"] = item["content"]


def _item(todo: JSON) -> JSON:
    item = {"content": str(todo.get("content", "")), "status": str(todo.get("status", "pending")),
            "activeForm": str(todo.get("activeForm") or todo.get("content", ""))}
    if "id" in todo:
        item["id"] = str(todo["id"])
    return item


def _from_task(task: JSON, known: JSON | None) -> JSON:
    subject = str(task.get("subject") or (known or {}).get("content", ""))
    status = task.get("status") if task.get("status") in STATUSES else (known or {}).get("status", "pending")
    return {"id": str(task.get("id")), "content": subject, "status": status,
            "activeForm": (known or {}).get("activeForm") or subject}
