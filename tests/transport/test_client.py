"""The Python client and the `agentwire chat` / `agentwire tail` commands against a real server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from agentwire.client import Backoff, Client, SseMessage, SseParser, StreamFailed
from agentwire.console.transcript import TERMINAL
from agentwire.types import JSON
from tests.support.eventually import eventually
from tests.support.proxy import TcpProxy
from tests.support.server import running_app
from tests.support.turns import comparable, create_session, run_turn, transcript_of

TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_app(journal="memory://", no_auth=False, token=TOKEN) as (url, _):
        yield url


HEADERS = {"authorization": f"Bearer {TOKEN}"}


def test_sse_parser_handles_split_frames_comments_and_crlf() -> None:
    parser = SseParser()
    stream = b"retry: 1000\n\n: ping\n\nid: 7\r\nevent: text.delta\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\n"
    messages = [m for i in range(len(stream)) for m in parser.feed(stream[i : i + 1])]
    assert [(m.id, m.event, m.data) for m in messages] == [("7", "text.delta", '{"a":1}'), (None, "message", "x\ny")]


def _parse(raw: bytes, size: int) -> list[SseMessage]:
    parser = SseParser()
    return [message for start in range(0, len(raw), size) for message in parser.feed(raw[start : start + size])]


def _fastest(run: Callable[[], object], times: int = 3) -> float:
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def test_sse_parser_is_linear_in_a_multi_megabyte_chunk() -> None:
    """A catch-up replay read in one go: ~5 MB in one chunk costs what the same bytes in 64 KiB
    pieces cost (the parser that re-sliced its buffer per line took ×40 longer in one chunk)."""
    frames = [b"retry: 1000\n\n"]
    for seq in range(1, 21_001):
        frames.append(b'id: %d\nevent: text.delta\ndata: {"seq":%d,"text":"%s"}\n\n' % (seq, seq, b"x" * 170))
        if seq % 100 == 0:
            frames.append(b": ping\r\n\r\n")  # CRLF too, split between CR and LF by some cuts below
    raw = b"".join(frames)
    assert len(raw) > 4_400_000
    whole = _parse(raw, len(raw))
    assert len(whole) == 21_000 and whole[-1] == SseMessage("text.delta", '{"seq":21000,"text":"%s"}' % ("x" * 170),
                                                             "21000")
    assert whole == _parse(raw, 65_536) == _parse(raw, 4_093)
    one, pieces = _fastest(lambda: _parse(raw, len(raw))), _fastest(lambda: _parse(raw, 65_536))
    assert one < 4 * pieces, f"one chunk {one * 1000:.0f} ms, 64 KiB pieces {pieces * 1000:.0f} ms"


def test_sse_parser_is_linear_in_a_line_that_comes_in_many_pieces() -> None:
    """One 8 MB data line in 1 KiB pieces costs about what it costs in one chunk: the pieces are joined
    once (the parser that appended each piece to its buffer and searched it again took ×70 longer)."""
    raw = b"data: " + b"y" * 8_000_000 + b"\n\n"
    assert _parse(raw, 1024) == _parse(raw, len(raw)) == [SseMessage("message", "y" * 8_000_000, None)]
    one, pieces = _fastest(lambda: _parse(raw, len(raw))), _fastest(lambda: _parse(raw, 1024))
    assert pieces < 4 * one + 0.05, f"one chunk {one * 1000:.0f} ms, 1 KiB pieces {pieces * 1000:.0f} ms"


def test_backoff_grows_to_the_cap_with_jitter_and_resets() -> None:
    backoff = Backoff()
    delays = [backoff.next_delay() for _ in range(12)]
    assert 0.2 <= delays[0] <= 0.3
    assert all(d <= 15 * 1.2 for d in delays) and delays[-1] >= 15 * 0.8
    assert delays[3] > delays[1]
    backoff.reset()
    assert backoff.next_delay() <= 0.3


def test_turn_through_a_cutting_proxy_rebuilds_the_uncut_transcript(server: str) -> None:
    options = {"deltas": 800, "delay_ms": 0, "tool_calls": 2}
    create_session(server, "client-ref", headers=HEADERS, options=options)
    expected = comparable(transcript_of(run_turn(server, "client-ref", "tell me", headers=HEADERS)))
    port = int(server.rsplit(":", 1)[1])
    with TcpProxy(port) as proxy:
        # The POST response is cut twice, then the recovery stream once.
        proxy.plan_cuts([9000, 30000, 50000])
        create_session(server, "client-cut", headers=HEADERS, options=options)

        async def run() -> list[dict[str, Any]]:
            statuses: list[str] = []
            async with Client(f"http://127.0.0.1:{proxy.port}", TOKEN) as client:
                client.on_status = lambda status, attempt, delay: statuses.append(status)
                events = [e async for e in client.turn("client-cut", "tell me")]
            assert "reconnecting" in statuses
            return events

        events = asyncio.run(run())
        assert proxy.cuts_done >= 2
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    assert events[-1]["type"] == "turn.completed"
    assert comparable(transcript_of(events)) == expected


def test_follow_yields_reset_for_a_position_past_the_head(server: str) -> None:
    create_session(server, "client-reset", headers=HEADERS)

    async def run() -> list[dict[str, Any]]:
        async with Client(server, TOKEN) as client:
            seen = []
            async for envelope in client.follow("konsole/client-reset", 10_000):
                seen.append(envelope)
                if envelope["type"] == "stream.reset":
                    break
            return seen

    seen = asyncio.run(run())
    assert [e["type"] for e in seen] == ["stream.open", "stream.reset"]
    assert seen[1]["data"]["reason"] == "ahead_of_head"


def test_client_reports_http_errors(server: str) -> None:
    async def run() -> None:
        async with Client(server, "wrong-token") as client:
            async for _ in client.follow("konsole/anything", 0):
                pass

    with pytest.raises(StreamFailed, match="401"):
        asyncio.run(run())


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_the_client_answers_the_permission_request_of_the_turn_it_follows(server: str, transport: str) -> None:
    session = f"ask-{transport}"
    create_session(server, session, headers=HEADERS, options={"ask_permission": "Bash", "deltas": 5, "delay_ms": 0})

    async def run() -> tuple[list[JSON], JSON, str]:
        async with Client(server, TOKEN, transport=transport) as client:
            events, decided, again = [], {}, ""
            async for envelope in client.turn(session, "what changed?"):
                events.append(envelope)
                if envelope["type"] == "permission.requested":
                    request_id = envelope["data"]["request_id"]
                    decided = await client.decide(session, request_id, "allow", remember=True)
                    try:
                        await client.decide(session, request_id, "deny")
                    except StreamFailed as exc:
                        again = str(exc)
            return events, decided, again

    events, decided, again = asyncio.run(run())
    assert events[-1]["type"] == "turn.completed"
    assert {k: decided[k] for k in ("decision", "by", "remember", "rule")} == {
        "decision": "allow", "by": "user", "remember": True, "rule": {"tool": "Bash", "prefix": "git status"}}
    assert [e["seq"] for e in events if e["type"] == "permission.decided"] == [decided["seq"]]
    assert "409" in again and "permission_settled" in again


def test_chat_shows_a_permission_request(server: str) -> None:
    create_session(server, "cli-ask", headers=HEADERS, options={"ask_permission": True, "deltas": 5, "delay_ms": 0})
    chat = subprocess.Popen([sys.executable, "-m", "agentwire", "chat", "cli-ask", "take notes", "--url", server,
                             "--token", TOKEN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pending = eventually(lambda: httpx.get(f"{server}/api/konsole/cli-ask/state", headers=HEADERS,
                                               timeout=10).json()["permissions"])
        httpx.post(f"{server}/api/konsole/cli-ask/permissions/{pending[0]['request_id']}", headers=HEADERS,
                   json={"decision": "deny"}, timeout=10).raise_for_status()
        out, _ = chat.communicate(timeout=60)
    finally:
        chat.kill()
    assert chat.returncode == 0
    assert (f"? the agent asks to use Write notes/take-notes.md: answer in the dashboard (request "
            f"{pending[0]['request_id']})") in out
    assert "  deny (user)" in out


def _cli(*args: str, url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentwire", *args, "--url", url, "--token", TOKEN],
                          capture_output=True, text=True, timeout=timeout)


def test_chat_streams_a_turn_readably_and_exits_zero(server: str) -> None:
    create_session(server, "cli-chat", headers=HEADERS, options={"deltas": 30, "delay_ms": 0})
    result = _cli("chat", "cli-chat", "hello from the terminal", url=server)
    assert result.returncode == 0, result.stderr
    assert "Here is what I found." in result.stdout
    assert "→ todo_write" in result.stdout and "[x] Understand the request" in result.stdout
    assert "done in" in result.stdout


def test_chat_exits_non_zero_when_the_turn_fails(server: str) -> None:
    create_session(server, "cli-fail", headers=HEADERS, options={"deltas": 30, "delay_ms": 0, "fail_at": 3})
    result = _cli("chat", "cli-fail", "fail please", url=server)
    assert result.returncode == 1
    assert "turn failed: scripted failure at delta 3" in result.stdout


def test_chat_resumes_after_the_connection_is_cut(server: str) -> None:
    create_session(server, "cli-cut", headers=HEADERS, options={"deltas": 400, "delay_ms": 2})
    port = int(server.rsplit(":", 1)[1])
    with TcpProxy(port) as proxy:
        proxy.plan_cuts([5000])
        result = _cli("chat", "cli-cut", "survive a cut", url=f"http://127.0.0.1:{proxy.port}")
    assert result.returncode == 0, result.stderr
    assert "reconnecting" in result.stderr
    assert result.stdout.count("Here is what I found.") >= 1
    assert "done in" in result.stdout


def test_tail_prints_a_stream_from_a_seq(server: str) -> None:
    create_session(server, "cli-tail", headers=HEADERS, options={"deltas": 5, "delay_ms": 0})
    events = run_turn(server, "cli-tail", "tail me", headers=HEADERS)
    last = events[-1]["seq"]
    proc = subprocess.Popen([sys.executable, "-m", "agentwire", "tail", "konsole/cli-tail", "--from", "2", "--raw",
                             "--url", server, "--token", TOKEN], stdout=subprocess.PIPE, text=True)
    try:
        import orjson

        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            envelope = orjson.loads(line)
            lines.append(envelope)
            if envelope.get("seq") == last:
                break
    finally:
        proc.terminate()
        proc.wait(10)
    journaled = [e for e in lines if e.get("seq") is not None]
    assert journaled[0]["seq"] == 2
    assert [e["seq"] for e in journaled] == list(range(2, last + 1))
    assert journaled[-1]["type"] in TERMINAL
