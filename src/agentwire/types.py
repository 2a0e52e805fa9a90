"""The vocabulary every module speaks: events, stream positions, errors."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

JSON = dict[str, Any]

TASKS_STREAM = "tasks"
KONSOLE_PREFIX = "konsole/"


def session_stream(session: str) -> str:
    """The stream a console session's events live on: `konsole/<session>`."""
    return KONSOLE_PREFIX + session


def stream_session(stream: str) -> str | None:
    """The session a stream belongs to, or None for a stream that is not a session's (`tasks`)."""
    return stream[len(KONSOLE_PREFIX):] if stream.startswith(KONSOLE_PREFIX) else None


def starts_at_head(stream: str) -> bool:
    """Where a subscriber that names no position starts (DESIGN §3): the board from now (the page
    loads its cards whole from `GET /api/tasks`), a session from its first event (the transcript)."""
    return stream == TASKS_STREAM


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


# What every JSON value we accept must fit: the journal's encoder (orjson) and most clients hold
# integers in 64 bits and have no NaN or infinity.
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1


class BadJson(json.JSONDecodeError):
    """Well-formed JSON that agentwire cannot store faithfully: NaN, ±Infinity, a number too big for a
    double, an integer outside signed/unsigned 64 bits."""


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON, refusing what `dumps` could not write back unchanged (a 422 at the door is better
    than a 500 or a silently rounded number after the event was stored)."""

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def number(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise ValueError(f"{literal[:40]} is out of range")
        return value

    def integer(literal: str) -> int:
        value = int(literal)
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(f"integer {literal[:40]} is outside 64 bits")
        return value

    try:
        document = text.decode() if isinstance(text, bytes) else text
    except UnicodeDecodeError as exc:
        raise BadJson(f"not UTF-8 at byte {exc.start}", "", 0) from None
    try:
        value = json.loads(document, parse_constant=constant, parse_float=number, parse_int=integer)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        raise BadJson(str(exc), document, 0) from None
    except RecursionError:
        raise BadJson("nested too deeply", document, 0) from None
    try:
        # What parses but cannot be stored: a lone surrogate (`"\\ud800"`), nesting over orjson's 254.
        orjson.dumps(value)
    except TypeError as exc:
        raise BadJson(str(exc), document, 0) from None
    return value


def envelope_tail(stream: str, type: str, data: JSON, ts: int, turn: str | None = None,
                  lane: str | None = None) -> bytes:
    """An event's envelope, encoded before its seq is known: everything after `{"seq":N,`.

    The one place the envelope's shape is written. Backends encode it when an event is appended and
    put the seq in front once the store has given it one (`Event.sealed`), so an envelope is encoded
    once, whichever backend gives out the seq (the SQLite writer or Redis' append script).
    """
    envelope: JSON = {"stream": stream, "type": type, "ts": ts}
    if turn is not None:
        envelope["turn"] = turn
    if lane is not None:
        envelope["lane"] = lane
    envelope["data"] = data
    return orjson.dumps(envelope)[1:]


def control_envelope(stream: str, type: str, data: JSON) -> bytes:
    """A message of a stream that is not journaled (`stream.open`, `stream.reset`): the envelope's
    shape without seq or ts."""
    return orjson.dumps({"stream": stream, "type": type, "data": data})


# An event's turn or lane not read yet: events read back from a journal learn them from the envelope
# when asked; events made at append time are given them.
_UNREAD: Any = object()


@dataclass(slots=True)
class Event:
    """One journaled event. `raw` is the compact JSON envelope exactly as it goes on the wire.

    The envelope is encoded once, when the event is appended, and stored as is; replay, SSE and
    WebSocket all send these same bytes, so nothing is re-encoded per subscriber or per read.
    """

    seq: int
    stream: str
    type: str
    raw: bytes
    _data: JSON | None = field(default=None, repr=False)
    # Transport frames, built the first time a transport needs them and shared by every subscriber.
    frames: dict[str, bytes] | None = field(default=None, repr=False)
    # Known at append time, so the per-event filters and folds of the live path need not decode the
    # envelope to learn them (see `turn`, `lane`).
    _turn: str | None = field(default=_UNREAD, repr=False, compare=False)
    _lane: str | None = field(default=_UNREAD, repr=False, compare=False)
    # The `data` dict the appender handed over (live events of the local backends), not a copy: it
    # differs from the stored bytes if the appender changed it after the append, so `data` never
    # returns it. Only a reader that knows its appender keeps its hands off may use it instead of
    # decoding the envelope (the console's fold, for the deltas TurnRunner makes and never keeps).
    given: JSON | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        seq: int,
        stream: str,
        type: str,
        data: JSON,
        *,
        ts: int | None = None,
        turn: str | None = None,
        lane: str | None = None,
    ) -> Event:
        return cls.sealed(seq, stream, type, envelope_tail(stream, type, data, now_ms() if ts is None else ts,
                                                           turn, lane), turn, lane)

    @classmethod
    def sealed(cls, seq: int, stream: str, type: str, tail: bytes, turn: str | None = _UNREAD,
               lane: str | None = _UNREAD, given: JSON | None = None) -> Event:
        """The event once its seq is known: the seq goes in front of the envelope `envelope_tail` encoded
        (with the `turn`, `lane` and `given` data it was made from, when the caller has them at hand).
        The decoded form is not kept: `data` was the caller's dict, which the caller may change after
        the append; readers decode the stored bytes instead, so every view agrees with the wire."""
        return cls(seq, stream, type, b'{"seq":%d,%b' % (seq, tail), None, None, turn, lane, given)

    @classmethod
    def from_raw(cls, raw: bytes) -> Event:
        envelope = orjson.loads(raw)
        return cls(envelope["seq"], envelope["stream"], envelope["type"], raw, envelope)

    @property
    def envelope(self) -> JSON:
        if self._data is None:
            self._data = orjson.loads(self.raw)
        return self._data

    @property
    def data(self) -> JSON:
        data: JSON = self.envelope["data"]
        return data

    @property
    def ts(self) -> int:
        ts: int = self.envelope["ts"]
        return ts

    @property
    def turn(self) -> str | None:
        turn = self._turn
        if turn is _UNREAD:
            turn = self._turn = self.envelope.get("turn")
        return turn

    @property
    def lane(self) -> str | None:
        lane = self._lane
        if lane is _UNREAD:
            lane = self._lane = self.envelope.get("lane")
        return lane

    def frame(self, transport: str, build: Callable[[Event], bytes]) -> bytes:
        """This event framed for `transport`: built by `build` the first time, then kept on the
        event, so every subscriber of that transport shares one frame."""
        frames = self.frames
        if frames is None:
            frames = self.frames = {}
        frame = frames.get(transport)
        if frame is None:
            frame = frames[transport] = build(self)
        return frame


@dataclass(slots=True)
class Append:
    """An event to append; the journal gives it its seq and timestamp. Not changed once made (not
    frozen only because a frozen dataclass's `__init__` costs three times as much, once per event)."""

    stream: str
    type: str
    data: JSON
    turn: str | None = None
    lane: str | None = None
    # A document written in the same transaction as the event (the task card or session the event
    # describes), so the board's snapshot and its stream can never disagree. body None deletes it.
    doc: Doc | None = None


@dataclass(frozen=True, slots=True)
class Doc:
    kind: str
    id: str
    body: JSON | None


@dataclass(slots=True)
class Message:
    """One entry of the context a provider sends to its model: a user or assistant text. Here, not with
    the providers, because the transcript fold makes it and the client imports that fold."""

    role: str  # "user" | "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a stream stands: its epoch, the first seq still kept, and the last seq stored."""

    epoch: str
    first: int
    head: int


class AgentwireError(Exception):
    """An error with an HTTP status and a machine-readable code, rendered as {"error": {...}}."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.field = field

    def body(self) -> JSON:
        error: JSON = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class ValidationFailed(AgentwireError):
    """A request that does not match its schema: the one shape every transport answers with.

    `errors` are pydantic's (or FastAPI's) error dicts; the first names `field` and the message, all
    of them are listed in `errors` as {field, message}."""

    status = 422
    code = "validation_error"

    def __init__(self, errors: Sequence[Any]) -> None:
        found = [_error_entry(error) for error in errors] or [{"field": "body", "message": "invalid request"}]
        super().__init__(f"{found[0]['field']}: {found[0]['message']}", field=found[0]["field"])
        self.errors = found

    def body(self) -> JSON:
        body = super().body()
        body["error"]["errors"] = self.errors
        return body


def _error_entry(error: Any) -> dict[str, str]:
    location = tuple(error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid":
        # Malformed JSON is located at ("body", <offset>): the field is the body, not the offset.
        detail = (error.get("ctx") or {}).get("error")
        return {"field": "body", "message": f"{message}: {detail}" if detail else message}
    field = ".".join(str(part) for part in location if part != "body") or "body"
    return {"field": field, "message": message}


class NotFound(AgentwireError):
    status = 404
    code = "not_found"


class Conflict(AgentwireError):
    status = 409
    code = "conflict"


class Unavailable(AgentwireError):
    """The journal cannot be reached; nothing was written."""

    status = 503
    code = "journal_unavailable"
