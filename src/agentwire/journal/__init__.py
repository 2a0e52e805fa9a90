"""The journal: where events are appended and read back, per stream.

Contract, for every backend:

- `append` gives each event the next seq of its stream (1, 2, 3, … with no gap, never reused, also
  across processes sharing a backend) and returns only once the event is stored. Appends to one
  stream from one caller keep their order.
- Only after an event is stored does the backend pass it to the listener (`set_listener`). The hub
  is that listener; it is the only path to subscribers, so no subscriber ever holds an event the
  journal could forget. The listener sees each stream's events in seq order; it may miss some (a
  Redis reader reconnecting) but never reorders them, so subscribers treat a jump as "read the
  journal", never as data.
- A listener that raises changes nothing for appends: the exception is logged with the event's
  stream and seq, that append returns its events as usual, and every later append (and the listener
  call for it) goes on as if nothing happened. What the listener failed to hand on is still in the
  journal: a subscriber that missed an event sees the jump in seq at its next event and re-reads the
  journal from its last seq. Every backend calls its listener through `pass_on`, the one place this
  is implemented.
- `read(stream, after, limit)` returns stored events with seq > after, in order, at most `limit`.
- `position(stream)` gives the epoch (changes only when the stream's history was lost), the first
  seq still kept (retention trims the oldest) and the head. An empty stream has head 0, first 1.
- A document written with an event (`Append.doc`) is stored in the same transaction as the event.
- Errors reaching the store raise `types.Unavailable`; nothing partial is left behind.
- Leases (`lease`/`release`) expire by themselves; a shared backend lets at most one owner hold one.

Backends are chosen by URL scheme and imported lazily: `memory://`, `sqlite:///path`, `redis://…`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from agentwire.types import JSON, Append, Event, StreamPosition

Listener = Callable[[Event], None]

log = logging.getLogger("agentwire.journal")


def pass_on(listener: Listener | None, events: Iterable[Event]) -> None:
    """Hand stored events to the listener, one call each; what a call raises is logged and goes no
    further, so neither the append that stored the event nor any later one is affected."""
    if listener is None:
        return
    for event in events:
        try:
            listener(event)
        except Exception:
            log.exception("journal listener failed on %s #%d; subscribers re-read it from the journal",
                          event.stream, event.seq)


class AppendsOne:
    """`append` as `append_many` of one item, for every class that appends (the backends, the hub)."""

    async def append_many(self, items: Sequence[Append]) -> list[Event]:
        raise NotImplementedError

    async def append(self, item: Append) -> Event:
        return (await self.append_many([item]))[0]


class Journal(Protocol):
    url: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def set_listener(self, listener: Listener) -> None: ...

    async def append(self, item: Append) -> Event: ...

    async def append_many(self, items: Sequence[Append]) -> list[Event]: ...

    async def read(self, stream: str, after: int, limit: int) -> list[Event]: ...

    async def position(self, stream: str) -> StreamPosition: ...

    async def streams(self, prefix: str) -> list[str]: ...

    async def get_doc(self, kind: str, id: str) -> JSON | None: ...

    async def list_docs(self, kind: str) -> list[JSON]: ...

    async def watch(self, stream: str) -> int:
        """Ask for live events of `stream` (a no-op where every append is seen); returns the seq
        the listener has passed on for it so far, so the hub knows where live delivery stands."""
        ...

    async def unwatch(self, stream: str) -> None: ...

    async def ping(self) -> None:
        """Raise `Unavailable` if the store cannot be reached."""
        ...

    async def lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take or renew a lease for `ttl` seconds; False while another owner holds it. Shared
        backends make this atomic across processes (a turn's owner node keeps its turn's lease)."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """Give a lease up, if `owner` holds it."""
        ...


_BACKENDS = {
    "memory": "agentwire.journal.memory:MemoryJournal",
    "sqlite": "agentwire.journal.sqlite:SqliteJournal",
    "redis": "agentwire.journal.redis:RedisJournal",
}


def open_journal(url: str, *, retention: int = 0) -> Journal:
    """Build (not yet start) the backend named by the URL's scheme; retention 0 keeps everything."""
    scheme = url.split(":", 1)[0]
    if scheme not in _BACKENDS:
        raise ValueError(f"unknown journal URL {url!r}: use memory://, sqlite:///path or redis://host:port/db")
    module_name, class_name = _BACKENDS[scheme].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    journal: Journal = cls(url, retention=retention)
    return journal
