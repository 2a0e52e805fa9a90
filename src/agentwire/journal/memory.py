from __future__ import annotations

import bisect
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from agentwire.journal import AppendsOne, Listener, pass_on
from agentwire.journal.leases import LocalLeases
from agentwire.types import JSON, Append, Event, StreamPosition, envelope_tail, now_ms


@dataclass
class _Stream:
    epoch: str
    events: list[Event] = field(default_factory=list)
    head: int = 0


class MemoryJournal(AppendsOne, LocalLeases):
    """Everything in this process's memory: an epoch per process start, so clients notice the loss."""

    def __init__(self, url: str = "memory://", *, retention: int = 0) -> None:
        super().__init__()
        self.url = url
        self._retention = retention
        self._epoch = secrets.token_hex(8)
        self._streams: dict[str, _Stream] = {}
        self._docs: dict[str, dict[str, JSON]] = {}
        self._listener: Listener | None = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def set_listener(self, listener: Listener) -> None:
        self._listener = listener

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = _Stream(self._epoch)
        return stream

    def _store(self, item: Append, event: Event) -> None:
        stream = self._stream(item.stream)
        stream.head = event.seq
        stream.events.append(event)
        if self._retention and len(stream.events) > self._retention * 2:
            del stream.events[: len(stream.events) - self._retention]
        if item.doc is not None:
            docs = self._docs.setdefault(item.doc.kind, {})
            if item.doc.body is None:
                docs.pop(item.doc.id, None)
            else:
                docs[item.doc.id] = item.doc.body

    async def append_many(self, items: Sequence[Append]) -> list[Event]:
        # Encode the whole batch before storing any of it: a batch with an event that cannot be
        # encoded leaves nothing behind (no event, no doc, no seq used), as a transaction would.
        heads: dict[str, int] = {}
        events = []
        ts = now_ms()
        for item in items:
            found = self._streams.get(item.stream)
            seq = heads[item.stream] = heads.get(item.stream, found.head if found else 0) + 1
            tail = envelope_tail(item.stream, item.type, item.data, ts, item.turn, item.lane)
            # Not `given` data: the event is kept as the store, which must not hold the caller's dict.
            events.append(Event.sealed(seq, item.stream, item.type, tail, item.turn, item.lane))
        for item, event in zip(items, events, strict=True):
            self._store(item, event)
        pass_on(self._listener, events)
        return events

    def _kept(self, stream: _Stream) -> list[Event]:
        if self._retention and len(stream.events) > self._retention:
            return stream.events[-self._retention :]
        return stream.events

    async def read(self, stream: str, after: int, limit: int) -> list[Event]:
        found = self._streams.get(stream)
        if found is None:
            return []
        events = self._kept(found)
        start = bisect.bisect_right(events, after, key=lambda event: event.seq)
        return events[start : start + limit]

    async def position(self, stream: str) -> StreamPosition:
        found = self._streams.get(stream)
        if found is None:
            return StreamPosition(self._epoch, 1, 0)
        kept = self._kept(found)
        first = kept[0].seq if kept else found.head + 1
        return StreamPosition(found.epoch, first, found.head)

    async def streams(self, prefix: str) -> list[str]:
        return sorted(name for name in self._streams if name.startswith(prefix))

    async def get_doc(self, kind: str, id: str) -> JSON | None:
        return self._docs.get(kind, {}).get(id)

    async def list_docs(self, kind: str) -> list[JSON]:
        return list(self._docs.get(kind, {}).values())

    async def watch(self, stream: str) -> int:
        found = self._streams.get(stream)
        return found.head if found else 0

    async def unwatch(self, stream: str) -> None:
        pass

    async def ping(self) -> None:
        pass
