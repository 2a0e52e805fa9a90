"""AG-UI over HTTP: `POST /api/agui` runs a turn and answers with its AG-UI events.

The request is AG-UI's `RunAgentInput`, validated with the `ag-ui-protocol` package's own models;
the events are that package's models, framed by its `EventEncoder` (each frame also carries an
`id:`, see `views`). `threadId` is the session (created on first use), the last user message is the
turn's message, and `runId` is recorded on the turn (`origin`), which makes it the run's key:

    POST /api/agui with the same body and `Last-Event-ID: <the last frame id it got>`

returns the rest of that run (a resumed response does not repeat RUN_STARTED), and the same body
without the header replays the run from its start: a runId starts one turn however often it is
posted. A `Last-Event-ID` in a turn started elsewhere (the dashboard, the AI SDK) follows that turn
as this run; `<seq>.0` of its first event gets all of it (agentwire's extensions).

`tools`, `context` and `forwardedProps` are accepted and not used: the agent brings its own tools
and context. `state` is kept: every STATE_SNAPSHOT is that state
with agentwire's keys `todos` and `agent` (the agent state) set.

    turn.queued / turn.started    RUN_STARTED (once, at the first of them)
    thinking.delta / .done        REASONING_START + REASONING_MESSAGE_START, _CONTENT, _END + REASONING_END
    text.delta / .done            TEXT_MESSAGE_START, _CONTENT, _END (one message per text block)
    tool.call                     TOOL_CALL_START + TOOL_CALL_ARGS (the input as JSON) + TOOL_CALL_END
    tool.result                   TOOL_CALL_RESULT (+ CUSTOM agentwire.task for a published task card)
    todo.updated, state           STATE_SNAPSHOT
    turn.completed                RUN_FINISHED (usage, stop reason and timing in metadata)
    turn.cancelled                RUN_FINISHED with outcome {"type": "cancelled"}
    turn.failed                   RUN_ERROR (code "interrupted" or "turn_failed")
    anything else in the turn     CUSTOM "agentwire.<type>"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from ag_ui.core import (
    PROTOCOL_VERSION,
    BaseEvent,
    CustomEvent,
    Message,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunStartedEvent,
    StateSnapshotEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TextPart,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    UserMessage,
)
from ag_ui.encoder import EventEncoder
from fastapi import APIRouter, Header, Request
from pydantic import Field
from starlette.responses import Response

from agentwire.console.runtime import Console
from agentwire.console.sessions import SESSION_NAME
from agentwire.console.transcript import TurnSummary
from agentwire.openapi import errors
from agentwire.types import JSON, AgentwireError, Conflict, Event, NotFound
from agentwire.views import (
    POSITION_SCHEMA,
    Position,
    TurnTranslator,
    ViewFramer,
    sse_response,
    turn_at,
    turn_view,
)

MAX_RUN_ID = 200


class RunIn(RunAgentInput):
    """AG-UI's RunAgentInput, with what agentwire needs of its ids: the thread is a session name."""

    thread_id: Annotated[str, Field(pattern=SESSION_NAME.pattern)]
    run_id: Annotated[str, Field(min_length=1, max_length=MAX_RUN_ID)]


RESUME_DOC = "Resume this run after a frame id it got (agentwire's extension)"


class AguiRun(TurnTranslator):
    """One run's AG-UI events. Ids come from the turn (`<turn>:text:<block>`, `<turn>:<call_id>`),
    so they are unique in the thread even where a provider reuses its call ids across turns."""

    def __init__(self, thread_id: str, run_id: str, state: Any) -> None:
        super().__init__()
        self.thread_id = thread_id
        self.run_id = run_id
        self.encoder = EventEncoder()
        self.client_state: JSON = dict(state) if isinstance(state, dict) else {}
        self.owned: JSON = {}  # agentwire's keys of the state: todos, agent
        self.provider: str | None = None
        self.model: str | None = None

    def _encode(self, *events: BaseEvent) -> list[bytes]:
        return [self.encoder.encode(event).encode() for event in events]

    def run_started(self, event: Event, first: bool) -> list[bytes]:
        if event.type == "turn.started":
            self.provider, self.model = event.data.get("provider"), event.data.get("model")
        if not first:
            return []
        return self._encode(RunStartedEvent(
            thread_id=self.thread_id, run_id=self.run_id, protocol_version=PROTOCOL_VERSION,
            metadata={"agentwire": {"turn": event.turn, "lane": event.lane}}))

    def block_start(self, event: Event, family: str, block: int) -> list[bytes]:
        id = f"{event.turn}:{family}:{block}"
        if family == "text":
            return self._encode(TextMessageStartEvent(message_id=id, role="assistant"))
        return self._encode(ReasoningStartEvent(message_id=id), ReasoningMessageStartEvent(message_id=id))

    def block_delta(self, event: Event, family: str, block: int, text: str) -> list[bytes]:
        id = f"{event.turn}:{family}:{block}"
        if family == "text":
            return self._encode(TextMessageContentEvent(message_id=id, delta=text))
        return self._encode(ReasoningMessageContentEvent(message_id=id, delta=text))

    def block_end(self, event: Event, family: str, block: int) -> list[bytes]:
        id = f"{event.turn}:{family}:{block}"
        if family == "text":
            return self._encode(TextMessageEndEvent(message_id=id))
        return self._encode(ReasoningMessageEndEvent(message_id=id), ReasoningEndEvent(message_id=id))

    def tool_call(self, event: Event, call_id: str, name: str, input: Any) -> list[bytes]:
        id = f"{event.turn}:{call_id}"
        return self._encode(ToolCallStartEvent(tool_call_id=id, tool_call_name=name),
                            ToolCallArgsEvent(tool_call_id=id, delta=orjson.dumps(input).decode()),
                            ToolCallEndEvent(tool_call_id=id))

    def tool_result(self, event: Event, call_id: str, output: str, is_error: bool, card: JSON | None) -> list[bytes]:
        id = f"{event.turn}:{call_id}"
        result = ToolCallResultEvent(
            message_id=f"{id}:result", tool_call_id=id, content=output, role="tool",
            metadata={"agentwire": {"is_error": is_error, "duration_ms": event.data.get("duration_ms")}})
        if card is None:
            return self._encode(result)
        return self._encode(result, CustomEvent(name="agentwire.task", value=card))

    def todos(self, todos: list[JSON]) -> list[bytes]:
        self.owned["todos"] = todos
        return self._encode(StateSnapshotEvent(snapshot={**self.client_state, **self.owned}))

    def state(self, data: JSON) -> list[bytes]:
        self.owned["agent"] = data
        return self._encode(StateSnapshotEvent(snapshot={**self.client_state, **self.owned}))

    def run_ended(self, event: Event) -> list[bytes]:
        data = event.data
        if event.type == "turn.failed":
            error = str(data.get("error") or "turn failed")
            return self._encode(RunErrorEvent(message=error, code="interrupted" if error == "interrupted"
                                              else "turn_failed"))
        metadata: JSON = {"turn": event.turn, "timing": data.get("timing")}
        if event.type == "turn.cancelled":
            return self._encode(RunFinishedEvent(
                thread_id=self.thread_id, run_id=self.run_id, outcome=RunFinishedCancelledOutcome(),
                metadata={"agentwire": {**metadata, "reason": data.get("reason")}}))
        usage = data.get("usage") or {}
        tokens = [int(usage.get(name) or 0) for name in ("input_tokens", "output_tokens")]
        return self._encode(RunFinishedEvent(
            thread_id=self.thread_id, run_id=self.run_id,
            usage=[TokenUsage(provider=self.provider, model=self.model, input_tokens=tokens[0],
                              output_tokens=tokens[1], total_tokens=sum(tokens))],
            metadata={"agentwire": {**metadata, "stop_reason": data.get("stop_reason")}}))

    def other(self, event: Event) -> list[bytes]:
        return self._encode(CustomEvent(name=f"agentwire.{event.type}", value=event.data))

    def lost(self) -> list[bytes]:
        self.over = True
        return self._encode(RunErrorEvent(message="part of this run is no longer in the journal (retention)",
                                          code="stream_reset"))


async def run_turn(console: Console, thread: str, run_id: str) -> TurnSummary | None:
    """The turn an AG-UI run started in this thread, if it did (its runId is on the turn's origin)."""
    try:
        await console.session(thread)
    except NotFound:  # a thread's first run: nothing to find (and no fold to build for a name)
        return None
    for turn in reversed((await console.view(thread)).turns.values()):
        if turn.origin == {"protocol": "ag-ui", "run_id": run_id}:
            return turn
    return None


def user_text(messages: list[Message]) -> str:
    """The turn's message: the text of the last user message."""
    for message in reversed(messages):
        if isinstance(message, UserMessage):
            content = message.content
            text = content if isinstance(content, str) else "\n".join(
                part.text for part in content if isinstance(part, TextPart))
            if not text.strip():
                raise AgentwireError("the last user message has no text", code="empty_message", status=422,
                                     field="messages")
            return text
    raise AgentwireError("messages holds no user message", code="no_user_message", status=422, field="messages")


def router(console_of: Callable[[Request], Console]) -> APIRouter:
    api = APIRouter(tags=["protocols"])

    @api.post("/api/agui", responses={
        **sse_response("AG-UI events of the run (EventEncoder frames, each with an `id:`), RUN_STARTED to "
                       "RUN_FINISHED or RUN_ERROR"),
        204: {"description": "Resumed after the run's last frame: nothing is left to send"},
        **errors(400, 401, 404, 409, 413, 422)})
    async def run_agent(request: Request, body: RunIn,
                        last_event_id: Annotated[str | None, Header(description=RESUME_DOC,
                                                                    json_schema_extra=POSITION_SCHEMA)] = None,
                        ) -> Response:
        console = console_of(request)
        thread = body.thread_id
        position = Position.parse(last_event_id)
        if position is None:
            run = await run_turn(console, thread, body.run_id)
            if run is None:
                turn = await console.submit(thread, user_text(body.messages), "main", "queue",
                                            origin={"protocol": "ag-ui", "run_id": body.run_id})
                assert turn.first_event is not None
                turn_id, first_seq = turn.id, turn.first_event.seq
            else:  # a retried POST: the run is replayed, a runId starts one turn however often it is sent
                turn_id, first_seq = run.id, run.started_seq
        else:
            await console.session(thread)
            at = await turn_at(console, thread, position)
            # Resuming this run, or following a turn started elsewhere (the dashboard, the AI SDK); a
            # frame of another AG-UI run is refused, not quietly served under this runId.
            origin = at.turn.origin or {}
            if origin.get("protocol") == "ag-ui" and origin.get("run_id") != body.run_id:
                raise Conflict(f"frame {last_event_id} belongs to another run than {body.run_id!r}",
                               code="run_mismatch", field="Last-Event-ID")
            if at.complete:
                return Response(status_code=204)
            turn_id, first_seq = at.turn.id, at.turn.started_seq
        framer = ViewFramer(AguiRun(thread, body.run_id, body.state), "agui", position)
        return await turn_view(request, console, thread, turn_id, first_seq, framer, {})

    return api
