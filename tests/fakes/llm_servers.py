"""Fakes of the Anthropic, OpenAI and Gemini streaming HTTP APIs on 127.0.0.1, scripted per test.

One `FakeLLMServer` serves all three vendors on one free port, from a background thread with its own
event loop (a small HTTP/1.1 server on `asyncio.start_server`, keep-alive and chunked bodies, so
that the official SDKs talk to it exactly as they talk to the vendors, and so that a stream can be
cut or stalled at a chosen byte):

- Anthropic Messages: ``POST /v1/messages`` with ``"stream": true`` (SSE ``event:``/``data:`` pairs)
- OpenAI Chat Completions: ``POST /v1/chat/completions`` with ``"stream": true`` (``data:`` chunks,
  a usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``). Chat Completions does
  not expose reasoning, so a `Thinking` block is not sent there; it only counts in
  ``completion_tokens_details.reasoning_tokens``.
- Gemini: ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` (``data:`` lines with a
  ``GenerateContentResponse``, CRLF-separated as Google sends them). Thought parts are only sent
  when the request asks for ``thinkingConfig.includeThoughts``.
- OpenAI Responses: ``POST /v1/responses`` with ``"stream": true`` (what Codex CLI speaks): see
  `tests.fakes.openai_responses`; queue its scenarios with ``provider="responses"``.

The wire formats are one module each (`anthropic_messages`, `openai_chat`, `gemini_stream`,
`openai_responses`), the scenarios and their builders are `scenarios` (re-exported here), a request as
recorded is `recorded`; this module is the server that routes a request to its vendor.

A Gemini ``generateContent`` call that asks for JSON by schema (Gemini CLI's model router and its other
checks of its own) is answered from the schema without taking a scenario: see `tests.fakes.gemini_json`.

Every request takes the next queued **scenario** (a provider's own queue first, then the shared
one); a request with nothing queued gets an HTTP 500 in the vendor's error format naming the
problem. Every request is recorded (`server.requests`) with its headers and JSON body.

Use from pytest (the project's pytest config puts the repository root on ``sys.path``)::

    # conftest.py (or define your own fixture around ``with FakeLLMServer() as server:``)
    from tests.fakes.llm_servers import llm_server  # noqa: F401  (the fixture)

    # a test module
    from tests.fakes import llm_servers as fake

    def test_something(llm_server, monkeypatch):
        llm_server.patch_env(monkeypatch)   # ANTHROPIC_BASE_URL, OPENAI_BASE_URL (…/v1),
                                            # AGENTWIRE_GEMINI_BASE_URL and a test key for each
        llm_server.enqueue(*fake.tool_use_sequence())            # any provider
        llm_server.enqueue(fake.rate_limited(0), fake.text(), provider="openai")
        ...                                                      # run the turn
        assert llm_server.requests[1].tool_results()[0]["call_id"] == "toolu_…"
        assert not llm_server.pending()

For a server started in a subprocess use ``llm_server.env()`` (the same variables as a dict).
Base URLs: `anthropic_base_url` (SDK ``base_url``), `openai_base_url` (ends in ``/v1``),
`gemini_base_url` (``HttpOptions(base_url=…)``, API version ``v1beta``).

Scenarios (plain frozen dataclasses, so a test can also build its own `Reply`):

==========================  ========================================================================
``text()``                  replays ``tests/fixtures/providers/<vendor>_text.sse`` (`FIXTURE_TEXT`)
``text("…", delay_s=…)``    a generated text answer (``delay_s`` between events: slow streams)
``tool_call(name, input)``  a tool call (optionally after some text); stop reason tool use
``tool_use_sequence()``     three replies: ``todo_write`` call, ``task_create`` call, final text
``thinking()``              a thinking block (with signature) then text
``auth_error()``            401 (Gemini answers a bad key with 400 API_KEY_INVALID, as Google does;
                            ``auth_error(status=401)`` gives its UNAUTHENTICATED form)
``rate_limited(1)``         429 with ``retry-after: 1`` (Gemini: ``RetryInfo.retryDelay "1s"``)
``server_error()``          HTTP 500 before any byte of the stream
``error_mid_stream()``      200 and a few text deltas, then the vendor's in-stream error, then end
``malformed_chunk()``       200 and a few deltas, then a ``data:`` line that is not JSON, then rest
``dropped_connection()``    200 and a few deltas, then the socket closes (incomplete chunked body)
``stalled()``               200 and a few deltas, then silence until the client goes away
                            (``request.disconnected`` turns true): for cancellation tests
``truncated_stream()``      200 and a few deltas, then a clean end of the body without the
                            vendor's end marker (``message_stop``, ``finish_reason``/``[DONE]``,
                            ``finishReason``), as a misbehaving proxy might
==========================  ========================================================================
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from collections import deque
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.fakes import anthropic_messages, gemini_json, gemini_stream, openai_chat, openai_responses
from tests.fakes.frames import Frame, compact, ident
from tests.fakes.http1 import read_request, write_chunk, write_head, write_plain
from tests.fakes.recorded import RecordedRequest
from tests.fakes.scenarios import (
    FIXTURE_TEXT,
    FIXTURES,
    PARTIAL_TEXT,
    PROVIDERS,
    SEQUENCE_FINAL_TEXT,
    SEQUENCE_PREAMBLE,
    TASK_INPUT,
    TEST_KEYS,
    THOUGHT,
    THOUGHT_ANSWER,
    TODO_INPUT,
    HttpError,
    Reply,
    Scenario,
    Text,
    Thinking,
    ToolCall,
    auth_error,
    dropped_connection,
    error_mid_stream,
    fragments,
    malformed_chunk,
    overloaded,
    rate_limited,
    server_error,
    stalled,
    text,
    thinking,
    tool_call,
    tool_use_sequence,
    truncated_stream,
)

_RENDER = {"anthropic": anthropic_messages.frames, "openai": openai_chat.frames, "gemini": gemini_stream.frames,
           "responses": openai_responses.frames}
_FAULT = {"anthropic": anthropic_messages.fault, "openai": openai_chat.fault, "gemini": gemini_stream.fault,
          "responses": openai_responses.fault}
_ERROR = {"anthropic": anthropic_messages.error_response, "openai": openai_chat.error_response,
          "gemini": gemini_stream.error_response, "responses": openai_chat.error_response}
_STREAM_HEADERS = {"anthropic": anthropic_messages.HEADERS, "openai": openai_chat.HEADERS,
                   "gemini": gemini_stream.HEADERS, "responses": openai_responses.HEADERS}


def fixture_frames(provider: str) -> list[bytes]:
    """The recorded text stream of `provider`, one event (with its own terminator) per item."""
    raw = (FIXTURES / f"{provider}_text.sse").read_bytes()
    return [m.group(0) for m in re.finditer(rb".+?(?:\r?\n\r?\n|\Z)", raw, re.S) if m.group(0).strip()]


def _fixture(provider: str, request: RecordedRequest) -> list[Frame]:
    frames = []
    include_usage = bool(((request.json or {}).get("stream_options") or {}).get("include_usage"))
    for raw in fixture_frames(provider):
        if provider == "openai" and not include_usage and b'"choices":[]' in raw:
            continue  # the recording asked for usage; a request that did not gets no usage chunk
        frames.append(Frame(raw, b"_delta" in raw or b'"content":"' in raw or b'"text": ' in raw))
    return frames


# --------------------------------------------------------------------------------------------------
# The server


def _route(method: str, path: str) -> str | None:
    if method != "POST":
        return None
    if path == "/v1/messages":
        return "anthropic"
    if path == "/v1/chat/completions":
        return "openai"
    if path == "/v1/responses":
        return "responses"
    if re.fullmatch(r"/v1(beta|alpha)?/models/[^/:]+:(streamGenerateContent|generateContent)", path):
        return "gemini"
    return None


class FakeLLMServer:
    """See the module docstring. Thread-safe: tests enqueue and read from the test's thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self._queues: dict[str | None, deque[Scenario]] = {None: deque(), **{p: deque() for p in PROVIDERS}}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._request_seen = threading.Condition(self._lock)

    # -- lifecycle

    def start(self) -> FakeLLMServer:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-llm-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses and environment

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def gemini_base_url(self) -> str:
        return self.url

    def env(self) -> dict[str, str]:
        """Environment that points the SDKs (and agentwire's providers) at this server, with test keys."""
        return {
            "ANTHROPIC_BASE_URL": self.anthropic_base_url, "ANTHROPIC_API_KEY": TEST_KEYS["anthropic"],
            "OPENAI_BASE_URL": self.openai_base_url, "OPENAI_API_KEY": TEST_KEYS["openai"],
            "AGENTWIRE_GEMINI_BASE_URL": self.gemini_base_url, "GEMINI_API_KEY": TEST_KEYS["gemini"],
        }

    def patch_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)
        # google-genai prefers GOOGLE_API_KEY and warns when both are set; its own base URL variable
        # would be overridden by ours anyway.
        for name in ("GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "OPENAI_ORG_ID",
                     "OPENAI_PROJECT_ID"):
            monkeypatch.delenv(name, raising=False)

    # -- scripting

    def enqueue(self, *scenarios: Scenario, provider: str | None = None) -> None:
        if provider is not None and provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}")
        with self._lock:
            self._queues[provider].extend(scenarios)

    def pending(self) -> list[Scenario]:
        with self._lock:
            return [s for queue in self._queues.values() for s in queue]

    def requests_for(self, provider: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.provider == provider]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        with self._request_seen:
            if not self._request_seen.wait_for(lambda: len(self.requests) >= count, timeout):
                raise TimeoutError(f"{len(self.requests)} requests seen, {count} expected")
            return list(self.requests)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)
            self._request_seen.notify_all()

    def _take(self, request: RecordedRequest) -> tuple[Scenario | None, int]:
        with self._lock:
            self.requests.append(request)
            self._request_seen.notify_all()
            for queue in (self._queues[request.provider], self._queues[None]):
                if queue:
                    return queue.popleft(), next(self._counter)
            return None, next(self._counter)

    # -- HTTP

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                parsed = await read_request(reader)
                if parsed is None:
                    break
                if not await self._respond(*parsed, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _respond(self, method: str, target: str, headers: dict[str, str], body: bytes,
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        split = urlsplit(target)
        provider = _route(method, split.path)
        if provider is None:
            payload = compact({"error": f"fake LLM server: no route for {method} {split.path}"}).encode()
            await write_plain(writer, 404, {"content-type": "application/json"}, payload)
            return True
        request = RecordedRequest(provider, method, split.path, dict(parse_qsl(split.query)), headers, body)
        if provider == "gemini" and gemini_json.is_utility_call(request):
            self._record(request)
            await write_plain(writer, 200, {"content-type": "application/json; charset=UTF-8"},
                               gemini_json.answer(request))
            return True
        scenario, n = self._take(request)
        request.scenario = scenario
        if scenario is None:
            return await self._unscripted(provider, request, writer, n)
        if isinstance(scenario, HttpError):
            status, extra, payload = _ERROR[provider](scenario, request, n)
            await write_plain(writer, status, extra, payload)
            return True
        if not _is_streaming(provider, request):
            status, extra, payload = _ERROR[provider](HttpError(400, "server"), request, n)
            await write_plain(writer, 400, extra, payload)
            return True
        recorded = scenario.fixture and provider != "responses"  # no recording of it: generated from the blocks
        frames = _fixture(provider, request) if recorded else _RENDER[provider](scenario, request, n)
        return await self._stream(provider, request, scenario, frames, reader, writer, n)

    async def _unscripted(self, provider: str, request: RecordedRequest, writer: asyncio.StreamWriter,
                          n: int) -> bool:
        status, extra, payload = _ERROR[provider](HttpError(500, "server"), request, n)
        text = payload.decode().replace("Internal server error", "fake LLM server: no scenario queued")
        text = text.replace("The server had an error while processing your request. Sorry about that!",
                            "fake LLM server: no scenario queued")
        text = re.sub(r"An internal error has occurred[^\"]*", "fake LLM server: no scenario queued", text)
        await write_plain(writer, status, extra, text.encode())
        return True

    async def _stream(self, provider: str, request: RecordedRequest, reply: Reply, frames: list[Frame],
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        headers = dict(_STREAM_HEADERS[provider])
        if provider == "anthropic":
            headers["request-id"] = "req_011CV" + ident(f"req{n}", 19)
        elif provider in ("openai", "responses"):
            headers["x-request-id"] = "req_" + ident(f"oreq{n}", 32).lower()
        headers["transfer-encoding"] = "chunked"
        try:
            await write_head(writer, 200, headers)
            deltas = 0
            faulted = False
            for frame in frames:
                if reply.fault is not None and not faulted and deltas >= reply.fault_after:
                    faulted = True
                    if reply.fault == "drop":
                        await writer.drain()
                        writer.close()  # no terminating chunk: the client sees an incomplete body
                        return False
                    if reply.fault == "end":
                        break  # a clean end of the body, without the vendor's end-of-answer marker
                    if reply.fault == "stall":
                        await writer.drain()
                        try:
                            await asyncio.wait_for(reader.read(1), 60)
                        except TimeoutError:
                            pass
                        request.disconnected = True
                        return False
                    await write_chunk(writer, _FAULT[provider](reply.fault).data)
                    if reply.fault == "error":
                        break  # the vendors end the stream after an error event
                await write_chunk(writer, frame.data)
                deltas += frame.delta
                if reply.delay_s:
                    await asyncio.sleep(reply.delay_s)
            await write_chunk(writer, b"")
        except ConnectionError:
            request.disconnected = True
            return False
        return True


def _is_streaming(provider: str, request: RecordedRequest) -> bool:
    if provider == "gemini":
        return request.path.endswith(":streamGenerateContent") and request.query.get("alt") == "sse"
    return bool((request.json or {}).get("stream"))


@pytest.fixture
def llm_server() -> Iterator[FakeLLMServer]:
    """A started `FakeLLMServer`, stopped after the test (environment not patched: `patch_env`)."""
    with FakeLLMServer() as server:
        yield server


__all__ = [
    "FIXTURES", "FIXTURE_TEXT", "PARTIAL_TEXT", "PROVIDERS", "SEQUENCE_FINAL_TEXT", "SEQUENCE_PREAMBLE", "TASK_INPUT",
    "TEST_KEYS", "THOUGHT", "THOUGHT_ANSWER", "TODO_INPUT", "FakeLLMServer", "HttpError", "RecordedRequest", "Reply",
    "Scenario", "Text", "Thinking", "ToolCall", "auth_error", "dropped_connection", "error_mid_stream",
    "fixture_frames", "fragments", "llm_server", "malformed_chunk", "overloaded", "rate_limited", "server_error",
    "stalled", "text", "thinking", "tool_call", "tool_use_sequence", "truncated_stream",
]
