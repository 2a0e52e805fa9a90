"""A session's two lanes and who runs next. The main lane runs one turn at a time and queues the rest
(or refuses them, `if_busy="reject"`); the quick lane runs every turn at once, each with its own
context. What a turn request may say is checked here, for REST, WebSocket and Python callers alike."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import BaseModel, ConfigDict

from agentwire.types import JSON, AgentwireError, Event, session_stream

if TYPE_CHECKING:
    from agentwire.outbox import Outbox

Lane = Literal["main", "quick"]
IfBusy = Literal["queue", "reject"]
LANES: tuple[str, ...] = get_args(Lane)
IF_BUSY: tuple[str, ...] = get_args(IfBusy)


class TurnIn(BaseModel):
    """A message to run as a turn: the body of `POST …/stream` and `…/quick`, and (with `session` and
    `lane`) of the WebSocket op `send`. Its size and emptiness are `check_message`'s to judge (413 and
    422, the same over both transports)."""

    model_config = ConfigDict(extra="forbid")
    message: str
    if_busy: IfBusy | None = None


def check_turn_request(message: str, lane: str, if_busy: str | None, max_message: int) -> IfBusy:
    """Refuse a turn request the lanes cannot take; returns what to do when the main lane is busy."""
    if not message.strip():
        raise AgentwireError("message is empty", code="empty_message", status=422, field="message")
    if len(message) > max_message:
        raise AgentwireError(f"message over {max_message} characters", code="message_too_large",
                             status=413, field="message")
    if lane not in LANES:
        raise AgentwireError("lane must be 'main' or 'quick'", code="bad_lane", status=422, field="lane")
    if if_busy is None:
        return "queue"
    if if_busy not in IF_BUSY:
        raise AgentwireError("if_busy must be 'queue' or 'reject'", code="bad_if_busy", status=422,
                             field="if_busy")
    return "reject" if if_busy == "reject" else "queue"


@dataclass
class Turn:
    id: str
    session: str
    lane: str
    message: str
    cancel_reason: str | None = None
    done: bool = False
    first_event: Event | None = field(default=None, repr=False)
    # Who asked, recorded on the turn's first event (e.g. {"protocol": "ag-ui", "run_id": …}), so a
    # protocol view can tell its own runs apart when a client resumes one.
    origin: JSON | None = None
    # Its permission requests still waiting for an answer, and where their answers arrive (a
    # cancel wakes those, so an agent waiting in a task of its own hears of it at once).
    asked: set[str] = field(default_factory=set, repr=False)
    waiting: set[Outbox] = field(default_factory=set, repr=False)

    @property
    def stream(self) -> str:
        return session_stream(self.session)

    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        for waiting in tuple(self.waiting):
            waiting.put(b"")


@dataclass
class SessionLanes:
    """This node's turns of one session: the main lane's running turn and its queue, every running
    turn (both lanes) and the task running each."""

    main: Turn | None = None
    queue: deque[Turn] = field(default_factory=deque)
    running: dict[str, Turn] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def runs_now(self, turn: Turn) -> bool:
        """Whether `turn` may start at once (quick, or the main lane is free); if so it is running."""
        if turn.lane == "main":
            if self.main is not None:
                return False
            self.main = turn
        self.running[turn.id] = turn
        return True

    def ended(self, turn: Turn) -> None:
        self.running.pop(turn.id, None)
        self.tasks.pop(turn.id, None)

    def advance(self) -> Turn | None:
        """The main lane is free: its next queued turn, now running, if there is one."""
        self.main = None
        if not self.queue:
            return None
        following = self.queue.popleft()
        self.runs_now(following)
        return following

    def find(self, turn_id: str | None) -> Turn | None:
        """A running or queued turn by id; None: the main lane's running turn."""
        if turn_id is None:
            return self.main
        return self.running.get(turn_id) or next((t for t in self.queue if t.id == turn_id), None)

    def open(self) -> list[Turn]:
        return [*self.running.values(), *self.queue]


class Lanes:
    """Every session's lanes on this node."""

    def __init__(self) -> None:
        self._sessions: dict[str, SessionLanes] = {}

    def of(self, session: str) -> SessionLanes:
        return self._sessions.setdefault(session, SessionLanes())

    def get(self, session: str) -> SessionLanes:
        """A session's lanes, empty if it has none here (not kept)."""
        return self._sessions.get(session) or SessionLanes()

    def open_turns(self) -> Iterator[Turn]:
        for lanes in list(self._sessions.values()):
            yield from lanes.open()

    def stop(self, reason: str) -> None:
        """Cancel every running turn with `reason` and forget the queued ones."""
        for lanes in self._sessions.values():
            for turn in lanes.running.values():
                turn.cancel(reason)
            lanes.queue.clear()
