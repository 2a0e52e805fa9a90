"""HTTP routes of the console (`/api/konsole/...`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from agentwire.console.lanes import IfBusy, Lane, TurnIn
from agentwire.console.permissions import DecisionIn
from agentwire.console.runtime import Console
from agentwire.console.sessions import SessionIn, check_session_name
from agentwire.console.transcript import TERMINAL, CatchUpFold
from agentwire.openapi import errors, stream_responses
from agentwire.sse import EventStreamResponse, stream_response
from agentwire.types import JSON, Event, session_stream


class StartTurnIn(TurnIn):
    """`POST …/turns`: a turn request that names its lane (the streaming routes' lane is their path)."""

    lane: Lane = "main"


class TurnOut(BaseModel):
    """A started (or queued) turn; its events come on the session's stream from `first_seq`."""

    turn: str
    session: str
    lane: Lane
    first_seq: int


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    turn: Annotated[str, Field(max_length=100)] | None = None


class RuleOut(BaseModel):
    tool: str
    prefix: str | None = None


class DecisionOut(BaseModel):
    """The `permission.decided` event's data, and where it was stored."""

    session: str
    request_id: str
    decision: Literal["allow", "deny"]
    by: str
    message: str
    remember: bool | None = None
    rule: RuleOut | None = None
    seq: int


def router(console_of: Callable[[Request], Console]) -> APIRouter:
    api = APIRouter(prefix="/api/konsole", tags=["console"])

    @api.get("")
    async def list_sessions(request: Request) -> JSON:
        return {"sessions": await console_of(request).list_sessions()}

    @api.post("", status_code=201, responses=errors(409))
    async def create_session(request: Request, body: SessionIn) -> JSONResponse:
        return JSONResponse(await console_of(request).create_session(body), status_code=201)

    @api.get("/{session}", responses=errors(404))
    async def get_session(request: Request, session: str) -> JSON:
        return await console_of(request).session(session)

    async def start(request: Request, session: str, body: TurnIn, lane: Lane,
                    if_busy: IfBusy | None) -> Response:
        console = console_of(request)
        check_session_name(session)
        turn = await console.submit(session, body.message, lane, body.if_busy or if_busy)
        assert turn.first_event is not None
        turn_id = turn.id

        def mine(event: Event) -> bool:
            return event.turn == turn_id

        def last(event: Event) -> bool:
            return event.type in TERMINAL and event.turn == turn_id

        response = await stream_response(
            request, console.hub, turn.stream,
            retry_ms=console.config.retry_ms, after=turn.first_event.seq - 1, only=mine, until=last)
        response.headers["x-agentwire-turn"] = turn_id
        return response

    @api.post("/{session}/stream", response_class=EventStreamResponse, status_code=200,
              responses={**stream_responses(), **errors(409)})
    async def stream_turn(request: Request, session: str, body: TurnIn, if_busy: IfBusy | None = None) -> Response:
        return await start(request, session, body, "main", if_busy)

    @api.post("/{session}/quick", response_class=EventStreamResponse, status_code=200, responses=stream_responses())
    async def quick_turn(request: Request, session: str, body: TurnIn) -> Response:
        return await start(request, session, body, "quick", None)

    @api.post("/{session}/turns", response_model=TurnOut, responses=errors(409, 413))
    async def start_turn(request: Request, session: str, body: StartTurnIn) -> JSON:
        """Start a turn without a stream of its own: for a client that already follows the session's
        events (the dashboard), which then carry the turn's from `first_seq` (the WebSocket `send`)."""
        console = console_of(request)
        check_session_name(session)
        turn = await console.submit(session, body.message, body.lane, body.if_busy or "queue")
        assert turn.first_event is not None
        return {"turn": turn.id, "session": session, "lane": body.lane, "first_seq": turn.first_event.seq}

    @api.get("/{session}/events", response_class=EventStreamResponse, status_code=200,
             responses={**stream_responses(), **errors(400, 404)})
    async def events(request: Request, session: str,
                     fold: Annotated[int, Query(ge=0, le=1)] = 0) -> Response:
        console = console_of(request)
        await console.session(session)
        return await stream_response(request, console.hub, session_stream(session),
                                     retry_ms=console.config.retry_ms,
                                     replay=CatchUpFold() if fold else None)

    @api.get("/{session}/state", responses=errors(404))
    async def state(request: Request, session: str) -> JSON:
        return await console_of(request).state(session)

    @api.get("/{session}/messages", responses=errors(404))
    async def messages(request: Request, session: str) -> JSON:
        console = console_of(request)
        await console.session(session)
        view = await console.view(session)
        return {"session": session, "seq": view.seq, "messages": view.entries, "todos": view.todos,
                "agent": view.agent, "rules": view.rules}

    @api.post("/{session}/cancel", responses=errors(404, 409))
    async def cancel(request: Request, session: str, body: Annotated[CancelIn | None, Body()] = None) -> JSON:
        return await console_of(request).cancel(session, body.turn if body else None)

    @api.post("/{session}/permissions/{request_id}", response_model=DecisionOut, response_model_exclude_none=True,
              responses=errors(404, 409))
    async def decide(request: Request, session: str, request_id: str, body: DecisionIn) -> JSON:
        """Answer a tool-permission request (`permission.requested`) from any node: 404 for an id the
        session never asked, 409 once it is answered (or its turn is over)."""
        return await console_of(request).decide(session, request_id, body.decision, body.message, body.remember)

    return api
