"""The Vercel AI SDK UI message stream: `POST /api/chat` (what `useChat`'s `DefaultChatTransport`
sends) runs a turn and answers with its UI message chunks; `GET /api/chat/{id}/stream` (what
`useChat({resume: true})` asks on load or after a dropped connection) replays the session's running
main turn from its start, or answers 204 when none runs.

`id` is the session (created on first use); the turn's message is the text of the last message,
which must be the user's (`messages`, or a single `message` as the AI SDK's resume examples send).
`trigger` "regenerate-message" asks again: a new turn with that message. The assistant message's id
is the turn id, so a replay rebuilds the same message.

    turn.queued / turn.started    start {messageId: turn, messageMetadata: {session, turn, lane}}
    (a model call begins)         finish-step of the previous step, start-step
    thinking.delta / .done        reasoning-start, reasoning-delta, reasoning-end
    text.delta / .done            text-start, text-delta, text-end (one part per text block)
    tool.call                     tool-input-start + tool-input-available (dynamic tools: the UI
                                  does not know agentwire's tools ahead of time)
    tool.result                   tool-output-available, or tool-output-error when is_error
                                  (+ data-task {id: task id} for a published task card)
    todo.updated                  data-todos {id: "todos"}: one part, replaced as the list changes
    state                         data-state, transient (not kept in the message)
    turn.completed                finish {finishReason, messageMetadata: {stop_reason, usage, timing}}
    turn.failed                   error + finish "error" (an interrupted turn: finish "interrupted")
    turn.cancelled                abort {reason}
    anything else in the turn     data-event {type, seq, data}
    (end of stream)               [DONE]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from agentwire.console.runtime import Console
from agentwire.console.sessions import SESSION_NAME
from agentwire.openapi import errors
from agentwire.types import JSON, AgentwireError, Event, stream_session
from agentwire.views import (
    POSITION_SCHEMA,
    Position,
    TurnTranslator,
    ViewFramer,
    sse_response,
    turn_at,
    turn_view,
)

HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
STREAM_DOC = ("UI message stream chunks (`data: {chunk}`, each with an `id:`), `start` to `finish`, then `[DONE]`; "
              "header `x-vercel-ai-ui-message-stream: v1`")
# Module level: with postponed annotations, FastAPI resolves a parameter's Annotated[...] in the module.
POSITION_DOC = "Continue after a frame id instead of replaying from the start (agentwire's extension)"
DONE = b"data: [DONE]\n\n"
_FINISH_REASONS = {"end_turn": "stop", "stop": "stop", "stop_sequence": "stop", "max_tokens": "length",
                   "length": "length", "tool_use": "tool-calls", "tool_calls": "tool-calls",
                   "refusal": "content-filter", "content_filter": "content-filter"}


def _chunks(*chunks: JSON | bytes) -> list[bytes]:
    return [chunk if isinstance(chunk, bytes) else b"data: %s\n\n" % orjson.dumps(chunk) for chunk in chunks]


class UiMessageStream(TurnTranslator):
    """One turn as one assistant UIMessage's chunks. A step follows the model calls the `state`
    events count: the tools a model asked for run in its step, the next call opens the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.step = False
        self.llm_calls = 0

    def _in_step(self) -> list[bytes]:
        if self.step:
            return []
        self.step = True
        return _chunks({"type": "start-step"})

    def run_started(self, event: Event, first: bool) -> list[bytes]:
        if not first:
            return []
        session = stream_session(event.stream)
        return _chunks({"type": "start", "messageId": event.turn,
                        "messageMetadata": {"session": session, "turn": event.turn, "lane": event.lane}})

    def block_start(self, event: Event, family: str, block: int) -> list[bytes]:
        kind = "text" if family == "text" else "reasoning"
        return self._in_step() + _chunks({"type": f"{kind}-start", "id": f"{kind}-{block}"})

    def block_delta(self, event: Event, family: str, block: int, text: str) -> list[bytes]:
        kind = "text" if family == "text" else "reasoning"
        return _chunks({"type": f"{kind}-delta", "id": f"{kind}-{block}", "delta": text})

    def block_end(self, event: Event, family: str, block: int) -> list[bytes]:
        kind = "text" if family == "text" else "reasoning"
        return _chunks({"type": f"{kind}-end", "id": f"{kind}-{block}"})

    def tool_call(self, event: Event, call_id: str, name: str, input: Any) -> list[bytes]:
        call = {"toolCallId": call_id, "toolName": name, "dynamic": True}
        return self._in_step() + _chunks({"type": "tool-input-start", **call},
                                         {"type": "tool-input-available", **call, "input": input})

    def tool_result(self, event: Event, call_id: str, output: str, is_error: bool, card: JSON | None) -> list[bytes]:
        if call_id not in self.calls:
            return []  # a result without its call has no tool part to land in
        if is_error:
            return _chunks({"type": "tool-output-error", "toolCallId": call_id, "errorText": output, "dynamic": True})
        result = {"type": "tool-output-available", "toolCallId": call_id, "output": output, "dynamic": True}
        if card is None:
            return _chunks(result)
        return _chunks(result, {"type": "data-task", "id": card["id"], "data": card})

    def todos(self, todos: list[JSON]) -> list[bytes]:
        return _chunks({"type": "data-todos", "id": "todos", "data": {"todos": todos}})

    def state(self, data: JSON) -> list[bytes]:
        calls = data.get("outstanding_llm_calls")
        out: list[bytes] = []
        if isinstance(calls, int):
            if calls > 0 and self.llm_calls == 0:  # a model call begins: a new step
                out = (_chunks({"type": "finish-step"}) if self.step else []) + _chunks({"type": "start-step"})
                self.step = True
            self.llm_calls = calls
        return out + _chunks({"type": "data-state", "data": data, "transient": True})

    def run_ended(self, event: Event) -> list[bytes]:
        data = event.data
        out = _chunks({"type": "finish-step"}) if self.step else []
        self.step = False
        if event.type == "turn.cancelled":
            return out + _chunks({"type": "abort", "reason": str(data.get("reason") or "cancelled")}, DONE)
        if event.type == "turn.failed":
            error = str(data.get("error") or "turn failed")
            if error == "interrupted":  # the server went away mid-turn: the message is incomplete
                return out + _chunks({"type": "finish", "finishReason": "interrupted"}, DONE)
            return out + _chunks({"type": "error", "errorText": error}, {"type": "finish", "finishReason": "error"},
                                 DONE)
        metadata = {key: data.get(key) for key in ("stop_reason", "usage", "timing")}
        reason = _FINISH_REASONS.get(str(data.get("stop_reason")), "other")
        return out + _chunks({"type": "finish", "finishReason": reason, "messageMetadata": metadata}, DONE)

    def other(self, event: Event) -> list[bytes]:
        return _chunks({"type": "data-event", "data": {"type": event.type, "seq": event.seq, "data": event.data}})

    def lost(self) -> list[bytes]:
        self.over = True
        return _chunks({"type": "error", "errorText": "part of this turn is no longer in the journal (retention)"},
                       DONE)


class UIPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class UIMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Annotated[str, Field(max_length=200)]
    role: Literal["system", "user", "assistant"]
    parts: list[UIPart]


class ChatIn(BaseModel):
    """`useChat`'s request body (`DefaultChatTransport`); fields its `body` option adds are allowed."""

    model_config = ConfigDict(extra="allow")
    id: Annotated[str, Field(pattern=SESSION_NAME.pattern, description="the session")]
    messages: list[UIMessageIn] | None = None
    message: UIMessageIn | None = None
    trigger: Literal["submit-message", "regenerate-message"] | None = None
    messageId: str | None = None


def user_message(body: ChatIn) -> tuple[str, str]:
    """The last message's id and text; it must be the user's, with text."""
    last = body.message or (body.messages[-1] if body.messages else None)
    text = "" if last is None or last.role != "user" else "\n".join(
        part.text for part in last.parts if part.type == "text" and part.text)
    if last is None or not text.strip():
        raise AgentwireError("the last message must be a user message with a text part", code="no_user_text",
                             status=422, field="messages")
    return last.id, text


def router(console_of: Callable[[Request], Console]) -> APIRouter:
    api = APIRouter(prefix="/api/chat", tags=["protocols"])

    @api.post("", responses={**sse_response(STREAM_DOC), **errors(400, 401, 413, 422)})
    async def chat(request: Request, body: ChatIn) -> Response:
        console = console_of(request)
        session = body.id
        message_id, text = user_message(body)
        turn = await console.submit(session, text, "main", "queue",
                                    origin={"protocol": "ai-sdk", "message_id": message_id})
        assert turn.first_event is not None
        framer = ViewFramer(UiMessageStream(), "aisdk", None)
        return await turn_view(request, console, session, turn.id, turn.first_event.seq, framer, HEADERS)

    @api.get("/{id}/stream", responses={
        **sse_response(STREAM_DOC + ", replayed from the turn's start"),
        204: {"description": "No main turn is running in this session"},
        **errors(400, 401, 404, 422)})
    async def resume(request: Request,
                     id: Annotated[str, Path(pattern=SESSION_NAME.pattern, description="the session")],
                     last_event_id: Annotated[str | None, Header(description=POSITION_DOC,
                                                                 json_schema_extra=POSITION_SCHEMA)] = None,
                     ) -> Response:
        console = console_of(request)
        await console.session(id)
        position = Position.parse(last_event_id)
        if position is not None:
            at = await turn_at(console, id, position)
            if at.complete:
                return Response(status_code=204)
            turn, first_seq = at.turn.id, at.turn.started_seq
        else:
            # The running main turn, else the next queued one: what a chat sent and waits for.
            waiting = sorted((t for t in (await console.view(id)).open_turns() if t.lane == "main"),
                             key=lambda t: (t.status != "running", t.started_seq))
            if not waiting:
                return Response(status_code=204)
            turn, first_seq = waiting[0].id, waiting[0].started_seq
        framer = ViewFramer(UiMessageStream(), "aisdk", position)
        return await turn_view(request, console, id, turn, first_seq, framer, HEADERS)

    return api
