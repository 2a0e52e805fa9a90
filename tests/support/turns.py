"""Helpers for console tests: run turns over HTTP, read SSE, compare transcripts."""

from __future__ import annotations

import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from agentwire.client import SseParser
from agentwire.console.transcript import TERMINAL, Transcript

JSON = dict[str, Any]


def create_session(url: str, name: str, headers: dict[str, str] | None = None, **body: Any) -> JSON:
    response = httpx.post(f"{url}/api/konsole", json={"name": name, **body}, headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    data: JSON = response.json()
    return data


def sse_events(response: httpx.Response) -> Iterator[JSON]:
    parser = SseParser()
    for chunk in response.iter_raw():
        for message in parser.feed(chunk):
            yield orjson.loads(message.data)


def on_type(kind: str, flag: threading.Event) -> Callable[[JSON], None]:
    """An `on_event` for `run_turn` that sets `flag` when an event of type `kind` arrives."""
    def seen(event: JSON) -> None:
        if event["type"] == kind:
            flag.set()

    return seen


def run_turn(url: str, session: str, message: str, *, lane: str = "main", headers: dict[str, str] | None = None,
             on_event: Callable[[JSON], object] | None = None, params: JSON | None = None) -> list[JSON]:
    """POST a turn and read its SSE response to the end; returns the journaled events (with seq)."""
    path = "quick" if lane == "quick" else "stream"
    events = []
    with httpx.stream("POST", f"{url}/api/konsole/{session}/{path}", json={"message": message}, params=params,
                      headers=headers, timeout=httpx.Timeout(30, read=60)) as response:
        assert response.status_code == 200, response.read()
        for envelope in sse_events(response):
            if envelope.get("seq") is None:
                continue
            events.append(envelope)
            if on_event is not None:
                on_event(envelope)
            if envelope["type"] in TERMINAL:
                break
    return events


def of(events: list[JSON], kind: str) -> list[JSON]:
    """The data of every event of one type."""
    return [e["data"] for e in events if e["type"] == kind]


class AskingTurn:
    """A turn run in a thread of `pool` until its agent asks for permission: `request` is the
    `permission.requested` envelope; `answer(**body)` posts a decision (to another node's `url` if
    given); `events()` waits for the rest of the turn."""

    def __init__(self, url: str, session: str, message: str, pool: ThreadPoolExecutor, *, lane: str = "main",
                 headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.session = session
        self.headers = headers
        requests: queue.Queue[JSON] = queue.Queue()
        self.turn: Future[list[JSON]] = pool.submit(
            run_turn, url, session, message, lane=lane, headers=headers,
            on_event=lambda e: requests.put(e) if e["type"] == "permission.requested" else None)
        self.request = requests.get(timeout=60)
        self.id: str = self.request["data"]["request_id"]

    def answer(self, url: str | None = None, **body: Any) -> httpx.Response:
        return httpx.post(f"{url or self.url}/api/konsole/{self.session}/permissions/{self.id}", json=body,
                          headers=self.headers, timeout=10)

    def events(self) -> list[JSON]:
        return self.turn.result(timeout=60)


def post_turn_cut(url: str, session: str, message: str, cut_at: int) -> list[JSON]:
    """POST a turn, read `cut_at` bytes of its SSE body, then drop the connection; returns the
    complete events received before the cut."""
    received = b""
    with httpx.stream("POST", f"{url}/api/konsole/{session}/stream", json={"message": message},
                      timeout=httpx.Timeout(30, read=60)) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_raw(4096):
            received += chunk
            if len(received) >= cut_at:
                received = received[:cut_at]
                break
    parser = SseParser()
    return [orjson.loads(m.data) for m in parser.feed(received)]


def follow_until(url: str, session: str, after: int, stop: Callable[[JSON], bool], *,
                 params: JSON | None = None, headers: dict[str, str] | None = None) -> list[JSON]:
    """GET …/events with Last-Event-ID: `after` and collect envelopes until `stop` says so."""
    events = []
    request_headers = {"last-event-id": str(after), **(headers or {})}
    with httpx.stream("GET", f"{url}/api/konsole/{session}/events", headers=request_headers, params=params,
                      timeout=httpx.Timeout(30, read=60)) as response:
        assert response.status_code == 200, response.read()
        for envelope in sse_events(response):
            events.append(envelope)
            if stop(envelope):
                break
    return events


def transcript_of(events: list[JSON]) -> Transcript:
    transcript = Transcript()
    for envelope in events:
        if envelope.get("seq") is not None:
            transcript.apply_envelope(envelope)
    return transcript


def comparable(transcript: Transcript) -> JSON:
    """What a user sees, without ids, seqs and clock readings that differ between two runs."""
    keep = ("role", "kind", "text", "name", "input", "output", "is_error", "block", "done", "lane", "stop_reason",
            "error", "reason")
    entries = [{k: _no_ids(entry[k]) for k in keep if k in entry} for entry in transcript.entries]
    return {"entries": entries, "todos": transcript.todos}


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _no_ids(value: Any) -> Any:
    return _UUID.sub("<id>", value) if isinstance(value, str) else value


def first_event_ms(url: str, session: str, message: str, lane: str = "quick") -> tuple[float, str]:
    """Milliseconds from sending a turn's POST to reading its first event (raw socket, so no client
    library set-up is counted), and the turn's id. The turn goes on; its events are in the session."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    body = orjson.dumps({"message": message})
    path = f"/api/konsole/{session}/{'quick' if lane == 'quick' else 'stream'}"
    with socket.create_connection((host, port), timeout=30) as sock:
        started = time.perf_counter()
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b"\nid: " not in received:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"stream ended before its first event: {received[:300]!r}")
            received += chunk
        elapsed = (time.perf_counter() - started) * 1000
    turn = re.search(rb'"turn":"([^"]+)"', received)
    assert turn is not None, received
    return elapsed, turn.group(1).decode()
