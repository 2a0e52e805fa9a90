"""Reading `text/event-stream`: the client's parser (the server writes SSE in `sse.py`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SseMessage:
    event: str
    data: str
    id: str | None


class SseParser:
    """Incremental `text/event-stream` parser (comments dropped, CRLF tolerated).

    Linear in what it is fed, however it is cut: each chunk is split into lines once, and a line
    that spans chunks is kept as its pieces until its end arrives."""

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # the start of a line whose end has not come yet
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SseMessage]:
        *lines, rest = chunk.split(b"\n")
        if lines and self._partial:
            lines[0] = b"".join([*self._partial, lines[0]])
            self._partial = []
        if rest:
            self._partial.append(rest)
        messages: list[SseMessage] = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode()
            if not line:
                if self._data or self._event:
                    messages.append(SseMessage(self._event or "message", "\n".join(self._data), self._id))
                self._event, self._data, self._id = "", [], None
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    self._data.append(value)
                elif name == "event":
                    self._event = value
                elif name == "id":
                    self._id = value
        return messages
