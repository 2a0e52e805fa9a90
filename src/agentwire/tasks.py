"""The task board (kontasks): cards agents publish, stored as documents, changes on the `tasks` stream.

Each change is one journal append carrying both the event and the card (`Append.doc`), so the
snapshot from `GET /api/tasks` and the stream can never disagree. The snapshot's `head` is read
before the cards, so a client that subscribes from head+1 may see a change twice but never misses one.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import nh3
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agentwire.hub import Hub
from agentwire.openapi import errors
from agentwire.types import JSON, TASKS_STREAM, AgentwireError, Append, Doc, NotFound

Status = Literal["pending", "in_progress", "completed", "failed", "cancelled"]
MAX_OUTPUT = 512 * 1024
Short = Annotated[str, Field(max_length=500)]
Text = Annotated[str, Field(max_length=20_000)]

# Agent-made HTML keeps its look (inline styles, tables, code) and loses everything active:
# scripts, event handlers, javascript: URLs, frames, forms. nh3 is a maintained sanitizer (ammonia).
_ATTRIBUTES = {tag: set(attrs) | {"style", "class", "title"} for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()}
_ATTRIBUTES["*"] = {"style", "class", "title"}
_ATTRIBUTES["a"] = {"href", "hreflang", "title", "style", "class"}


# Inline styles stay (the cards are styled inline), but only layout and look: no property can load
# anything (a url() in any value is dropped below, so no tracking pixel or script URL survives).
_STYLE_PROPERTIES = {
    "color", "background", "background-color", "opacity",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left", "border-color", "border-style",
    "border-width", "border-radius", "border-collapse", "border-spacing", "outline",
    "font", "font-family", "font-size", "font-style", "font-weight", "line-height", "letter-spacing",
    "text-align", "text-decoration", "text-transform", "text-indent", "white-space", "word-break",
    "overflow-wrap", "vertical-align", "list-style", "list-style-type",
    "display", "width", "height", "min-width", "min-height", "max-width", "max-height", "box-sizing",
    "overflow", "overflow-x", "overflow-y", "flex", "flex-direction", "flex-wrap", "justify-content",
    "align-items", "gap", "grid-template-columns", "float", "clear",
}


def _no_urls(element: str, attribute: str, value: str) -> str | None:
    if attribute != "style":
        return value
    kept = [d for d in value.split(";") if "url(" not in d.lower() and "\\" not in d]
    return ";".join(kept)


def sanitize_html(html: str) -> str:
    return str(nh3.clean(html, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto"},
                         filter_style_properties=_STYLE_PROPERTIES, attribute_filter=_no_urls))


class Choice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Annotated[str, Field(min_length=1, max_length=200)]
    value: Annotated[str, Field(min_length=1, max_length=10_000)]
    primary: bool = False


class TaskContext(BaseModel):
    # Original kontasks carry more in context (layouts, request ids); unknown keys are kept as sent.
    model_config = ConfigDict(extra="allow")
    output: Annotated[str, Field(max_length=MAX_OUTPUT)] | None = None
    choices: Annotated[list[Choice], Field(max_length=20)] = []
    requestedAt: Short | None = None
    requestId: Short | None = None
    turnTiming: dict[str, float | int] | None = None


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")] | None = None
    type: Short = "general"
    status: Status = "pending"
    title: Annotated[str, Field(min_length=1, max_length=500)]
    description: Text = ""
    scope: Short = ""
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=50)] = []
    createdBy: Short = "agent"
    targetUser: Short = ""
    session: Short | None = None
    requestId: Short | None = None
    createdAt: Short | None = None
    updatedAt: Short | None = None
    context: TaskContext = TaskContext()


class TaskPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Short | None = None
    status: Status | None = None
    title: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    description: Text | None = None
    scope: Short | None = None
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=50)] | None = None
    targetUser: Short | None = None
    session: Short | None = None
    context: TaskContext | None = None


class ChooseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Annotated[str, Field(min_length=1, max_length=10_000)]


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean_context(context: TaskContext) -> JSON:
    body = context.model_dump(exclude_none=True)
    if context.output is not None:
        body["output"] = sanitize_html(context.output)
    return body


# What a chosen answer does: the console sends it to the linked session as the next user message.
ChoiceHandler = Callable[[str, str], Awaitable[JSON]]


class Board:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.on_choose: ChoiceHandler | None = None

    async def get(self, task_id: str) -> JSON:
        task = await self.hub.journal.get_doc("task", task_id)
        if task is None:
            raise NotFound(f"no task with id {task_id!r}", code="task_not_found")
        return task

    async def list(self, *, status: str | None = None, scope: str | None = None, tag: str | None = None,
                   limit: int = 100, offset: int = 0) -> JSON:
        head = (await self.hub.journal.position(TASKS_STREAM)).head
        tasks = await self.hub.journal.list_docs("task")
        picked = [t for t in tasks if (status is None or t["status"] == status)
                  and (scope is None or t["scope"] == scope) and (tag is None or tag in t["tags"])]
        picked.sort(key=lambda t: (t["createdAt"], t["id"]), reverse=True)
        return {"tasks": picked[offset : offset + limit], "total": len(picked), "head": head,
                "limit": limit, "offset": offset}

    async def create(self, body: TaskIn) -> JSON:
        task_id = body.id or str(uuid.uuid4())
        if await self.hub.journal.get_doc("task", task_id) is not None:
            raise AgentwireError(f"a task with id {task_id!r} exists", code="task_exists", status=409, field="id")
        now = iso_now()
        task = body.model_dump(exclude={"context"})
        task.update(id=task_id, createdAt=body.createdAt or now, updatedAt=body.updatedAt or now,
                    context=_clean_context(body.context))
        await self.hub.append(Append(TASKS_STREAM, "task.created", {"task": task}, doc=Doc("task", task_id, task)))
        return task

    async def update(self, task_id: str, patch: TaskPatch | JSON) -> JSON:
        task = dict(await self.get(task_id))
        changes: dict[str, Any] = (patch.model_dump(exclude_unset=True) if isinstance(patch, TaskPatch)
                                   else TaskPatch.model_validate(patch).model_dump(exclude_unset=True))
        changed = []
        for name, value in changes.items():
            if name == "context":  # merged into the card's; null empties it (a card's context is an object)
                value = {} if value is None else {**(task.get("context") or {}),
                                                  **_clean_context(TaskContext.model_validate(value))}
            if task.get(name) != value:
                task[name] = value
                changed.append(name)
        if not changed:
            return task
        task["updatedAt"] = iso_now()
        await self.hub.append(Append(TASKS_STREAM, "task.updated", {"task": task, "changed": changed},
                                     doc=Doc("task", task_id, task)))
        return task

    async def delete(self, task_id: str) -> None:
        await self.get(task_id)
        await self.hub.append(Append(TASKS_STREAM, "task.deleted", {"id": task_id}, doc=Doc("task", task_id, None)))

    async def choose(self, task_id: str, value: str) -> JSON:
        task = await self.get(task_id)
        choices = (task.get("context") or {}).get("choices", [])
        if value not in [choice["value"] for choice in choices]:
            raise AgentwireError("value is not one of this task's choices", code="unknown_choice",
                                 status=422, field="value")
        session = task.get("session")
        if not session:
            raise AgentwireError("this task is not linked to a session, so no agent can hear the answer",
                                 code="task_has_no_session", status=409)
        if self.on_choose is None:
            raise AgentwireError("no console runs on this server", code="no_console", status=409)
        turn = await self.on_choose(session, value)
        context = {**(task.get("context") or {}), "chosen": value}
        task = await self.update(task_id, {"context": context})
        return {"task": task, "turn": turn}


def router(board_of: Callable[[Request], Board]) -> APIRouter:
    api = APIRouter(prefix="/api/tasks", tags=["tasks"])

    @api.get("")
    async def list_tasks(request: Request, status: Status | None = None, scope: str | None = None,
                         tag: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                         offset: Annotated[int, Query(ge=0)] = 0) -> JSON:
        return await board_of(request).list(status=status, scope=scope, tag=tag, limit=limit, offset=offset)

    @api.post("", status_code=201, responses=errors(409))
    async def create_task(request: Request, body: TaskIn) -> JSONResponse:
        return JSONResponse(await board_of(request).create(body), status_code=201)

    @api.get("/{task_id}", responses=errors(404))
    async def get_task(request: Request, task_id: str) -> JSON:
        return await board_of(request).get(task_id)

    @api.patch("/{task_id}", responses=errors(404))
    async def update_task(request: Request, task_id: str, body: TaskPatch) -> JSON:
        return await board_of(request).update(task_id, body)

    @api.delete("/{task_id}", status_code=204, responses=errors(404))
    async def delete_task(request: Request, task_id: str) -> None:
        await board_of(request).delete(task_id)

    @api.post("/{task_id}/choose", responses=errors(404, 409))
    async def choose(request: Request, task_id: str, body: ChooseIn) -> JSON:
        return await board_of(request).choose(task_id, body.value)

    return api
