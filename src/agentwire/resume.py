"""The resume rules of the wire protocol (§3), the same for every stream and transport."""

from __future__ import annotations

from dataclasses import dataclass

from agentwire.types import AgentwireError, StreamPosition

MAX_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Start:
    after: int  # deliver events with seq > after
    reset: str | None  # why the client's position could not be honoured, if it could not


def parse_seq(value: str | None, name: str) -> int | None:
    """A position from a header or query: a non-negative integer, or a 400 naming the field."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_SEQ:
        raise AgentwireError(
            f"{name} must be a non-negative integer sequence number, got {value[:40]!r}",
            code="bad_position",
            field=name,
        )
    return int(text)


def after_position(after: int | None, from_: int | None) -> int | None:
    """The two ways to give a position, as the seq to deliver after: `after` L (SSE's Last-Event-ID,
    a WebSocket subscribe's `after`) means seq > L and wins over `from` N, which means seq >= N."""
    if after is not None:
        return after
    if from_ is not None:
        return max(0, from_ - 1)
    return None


def requested_after(last_event_id: str | None, from_: str | None) -> int | None:
    """An SSE request's position, from its Last-Event-ID header and its `?from=` query."""
    return after_position(parse_seq(last_event_id, "Last-Event-ID"), parse_seq(from_, "from"))


def resolve(position: StreamPosition, after: int | None, *, default_at_head: bool) -> Start:
    """Where a subscriber starts. No position: the stream's first kept event (console) or now (tasks).

    A position older than what is kept, or past the head (it came from another epoch), cannot be
    served exactly: the subscriber is told with a reset and continues after the head.
    """
    if after is None:
        return Start(position.head if default_at_head else position.first - 1, None)
    if after > position.head:
        return Start(position.head, "ahead_of_head")
    if after < position.first - 1:
        return Start(position.head, "trimmed")
    return Start(after, None)
