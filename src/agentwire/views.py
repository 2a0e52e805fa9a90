"""Protocol views of a session stream: what AG-UI (`agui.py`) and the AI SDK UI message stream
(`aisdk.py`) have in common.

A view translates one turn's journaled events into a protocol's SSE frames and nothing more: it
reads the journal through the same hub subscription as every other stream (replay, then live), so
a turn started through any protocol is visible to all of them, nothing reaches a client before the
journal stored it, and resuming is resuming a position in the session stream.

Frame ids. One journal event may become several frames (a tool call is START, ARGS and END), so a
frame's id names its event and, where needed, how far into it: the last frame made from event `s`
has `id: s`, the ones before it `s.1`, `s.2`, … ("k frames of event s delivered"). Sent back as
`Last-Event-ID`, an id gets exactly the frames after it; a plain seq from any other view of the
session (`GET …/events`, the dashboard) means "all of event s and before".

Translation is a fold over the turn from its first event (a text block's START depends on whether
an earlier delta opened it), so a resumed view replays the turn from its start through a fresh
translator and drops the frames the client already has.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from fastapi import Request
from starlette.responses import Response

from agentwire.console.runtime import Console
from agentwire.console.transcript import TERMINAL, TurnSummary
from agentwire.sse import stream_response
from agentwire.types import JSON, AgentwireError, Event, NotFound, session_stream

_POSITION = re.compile(r"^([0-9]{1,19})(?:\.([0-9]{1,6}))?$")
# For OpenAPI only: a position that does not match is answered 400 (the resume rules), not 422.
POSITION_SCHEMA = {"pattern": _POSITION.pattern}
_BLOCKS = {"text.delta": ("text", False), "text.done": ("text", True),
           "thinking.delta": ("thinking", False), "thinking.done": ("thinking", True)}


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client stands in a view: through frame `frames` of event `seq` (None: all of it)."""

    seq: int
    frames: int | None = None

    @classmethod
    def parse(cls, value: str | None) -> Position | None:
        if value is None:
            return None
        found = _POSITION.match(value.strip())
        if found is None:
            raise AgentwireError(f"Last-Event-ID must be a frame id (<seq> or <seq>.<n>), got {value[:40]!r}",
                                 code="bad_position", field="Last-Event-ID")
        return cls(int(found[1]), None if found[2] is None else int(found[2]))


class Translator(Protocol):
    def frames(self, event: Event) -> list[bytes]:
        """The protocol's SSE messages (`data: …\\n\\n`, no id) for one of the turn's events, in order."""
        ...

    def lost(self) -> list[bytes]:
        """What to send when the journal no longer holds part of the turn (retention trimmed it)."""
        ...


class ViewFramer:
    """Frames a turn's events through a translator, with resumable frame ids.

    Frames are built per connection, not once per event as agentwire's own SSE is: they depend on
    the translator's fold (and on the run's ids), and a protocol view of a turn has one reader.
    """

    def __init__(self, translator: Translator, transport: str, resume: Position | None) -> None:
        self.translator = translator
        self.transport = transport
        self.resume = resume

    def events(self, events: Sequence[Event]) -> bytes:
        return b"".join([self.event(event) for event in events])

    def event(self, event: Event) -> bytes:
        frames = self.translator.frames(event)  # always, so the fold sees every event
        skip = 0
        if self.resume is not None and event.seq <= self.resume.seq:
            skip = len(frames) if event.seq < self.resume.seq or self.resume.frames is None else self.resume.frames
        last = len(frames) - 1
        return b"".join([b"id: %d%s\n%s" % (event.seq, b"" if index == last else b".%d" % (index + 1), frame)
                         for index, frame in enumerate(frames) if index >= skip])

    def control(self, stream: str, type: str, data: JSON, seq: int | None = None) -> bytes:
        # `stream.open` has no counterpart in these protocols; a reset means part of the turn is gone.
        return b"".join(self.translator.lost()) if type == "stream.reset" else b""


class TurnTranslator:
    """The fold both protocols share: which text/thinking blocks are open, which tool calls were
    made, whether the run has started or ended. Subclasses say what each step becomes on the wire."""

    def __init__(self) -> None:
        self.started = False
        self.over = False
        self.open: dict[tuple[str, int], None] = {}  # (text|thinking, block), in opening order
        self.calls: dict[str, tuple[str, Any]] = {}  # call_id -> (tool name, input)

    def frames(self, event: Event) -> list[bytes]:
        if self.over:
            return []
        kind, data = event.type, event.data
        if kind in ("turn.queued", "turn.started"):
            first = not self.started
            self.started = True
            return self.run_started(event, first)
        if kind in _BLOCKS:
            return self._block(event, *_BLOCKS[kind])
        if kind == "tool.call":
            call_id = str(data.get("call_id"))
            self.calls[call_id] = (str(data.get("name")), data.get("input"))
            return self.tool_call(event, call_id, *self.calls[call_id])
        if kind == "tool.result":
            call_id = str(data.get("call_id"))
            name, input = self.calls.get(call_id, ("", None))
            return self.tool_result(event, call_id, _text(data.get("output")), bool(data.get("is_error")),
                                    task_card(name, input, data))
        if kind == "todo.updated":
            return self.todos(list(data.get("todos") or []))
        if kind == "state":
            return self.state(data)
        if kind in TERMINAL:
            closing = [frame for key in self.open for frame in self.block_end(event, *key)]
            self.open.clear()
            self.over = True
            return closing + self.run_ended(event)
        return self.other(event)

    def _block(self, event: Event, family: str, done: bool) -> list[bytes]:
        block = int(event.data.get("block", 0))
        text = _text(event.data.get("text"))
        key = (family, block)
        out: list[bytes] = []
        if key not in self.open:
            self.open[key] = None
            out += self.block_start(event, family, block)
            if done and text:  # a block that arrives whole, without deltas
                out += self.block_delta(event, family, block, text)
        if not done:
            return out + self.block_delta(event, family, block, text)
        del self.open[key]
        return out + self.block_end(event, family, block)

    # what each step becomes: one method per step, each returning the frames

    def run_started(self, event: Event, first: bool) -> list[bytes]:
        raise NotImplementedError

    def block_start(self, event: Event, family: str, block: int) -> list[bytes]:
        raise NotImplementedError

    def block_delta(self, event: Event, family: str, block: int, text: str) -> list[bytes]:
        raise NotImplementedError

    def block_end(self, event: Event, family: str, block: int) -> list[bytes]:
        raise NotImplementedError

    def tool_call(self, event: Event, call_id: str, name: str, input: Any) -> list[bytes]:
        raise NotImplementedError

    def tool_result(self, event: Event, call_id: str, output: str, is_error: bool, card: JSON | None) -> list[bytes]:
        raise NotImplementedError

    def todos(self, todos: list[JSON]) -> list[bytes]:
        raise NotImplementedError

    def state(self, data: JSON) -> list[bytes]:
        raise NotImplementedError

    def run_ended(self, event: Event) -> list[bytes]:
        raise NotImplementedError

    def other(self, event: Event) -> list[bytes]:
        raise NotImplementedError


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else orjson.dumps(value).decode()


def task_card(name: str, input: Any, result: JSON) -> JSON | None:
    """The task card a successful `task_create`/`task_update` call published, from the call itself
    (its input and its result `{"id", "status"}`), so a view needs no second source. The card's HTML
    report is left out: it is sanitized by the board, and `GET /api/tasks/{id}` serves it."""
    if result.get("is_error") or not isinstance(input, dict) or name.rsplit("__", 1)[-1] not in (
            "task_create", "task_update"):
        return None
    try:
        outcome = orjson.loads(str(result.get("output")))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(outcome, dict) or not isinstance(outcome.get("id"), str):
        return None
    card = {key: input[key] for key in ("title", "description", "tags", "choices") if key in input}
    return {**card, "id": outcome["id"], "status": outcome.get("status")}


# routes

@dataclass(frozen=True, slots=True)
class TurnAt:
    """The turn a resume position falls in, and whether the client already has all of it."""

    turn: TurnSummary
    complete: bool


async def turn_at(console: Console, session: str, position: Position) -> TurnAt:
    page = await console.hub.journal.read(session_stream(session), position.seq - 1, 1) if position.seq else []
    event = page[0] if page and page[0].seq == position.seq else None
    turn = None if event is None or event.turn is None else (await console.view(session)).turns.get(event.turn)
    if event is None or turn is None:
        raise NotFound(f"event {position.seq} of session {session!r} is not part of a turn the journal has",
                       code="position_not_found", field="Last-Event-ID")
    return TurnAt(turn, event.type in TERMINAL and position.frames is None)


async def turn_view(request: Request, console: Console, session: str, turn: str, first_seq: int,
                    framer: ViewFramer, headers: dict[str, str]) -> Response:
    """Stream one turn framed by `framer`, from its first event to its terminal one."""

    def mine(event: Event) -> bool:
        return event.turn == turn

    def last(event: Event) -> bool:
        return event.turn == turn and event.type in TERMINAL

    response = await stream_response(request, console.hub, session_stream(session),
                                     retry_ms=console.config.retry_ms,
                                     after=first_seq - 1, only=mine, until=last, framer=framer)
    response.headers.update({"x-agentwire-turn": turn, **headers})
    return response


# OpenAPI: the event-stream answer of these routes (their errors: `openapi.errors`)


def sse_response(description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 that is an event stream; its schema describes one event (OpenAPI 3.1's reading)."""
    event = {"type": "object", "required": ["data"], "properties": {
        "data": {"type": "string", "description": "the protocol's event as JSON (`[DONE]` ends an AI SDK stream)"},
        "id": {"type": "string", "pattern": _POSITION.pattern, "description": "the frame id: `<seq>` or `<seq>.<n>`"},
    }}
    return {200: {"description": description, "content": {"text/event-stream": {"schema": event}}}}
