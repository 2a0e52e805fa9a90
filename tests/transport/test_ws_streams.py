"""The WebSocket transport (`/api/ws`) under load: shutdown, slow consumers, a backlog larger than the
buffer, twenty streams on one socket through cuts, and the Python client over WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Iterator
from typing import Any
from unittest import mock

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed

from agentwire import client as client_module
from agentwire.client import Client, WsClient, ws_url
from agentwire.console.transcript import TERMINAL
from tests.support.eventually import eventually
from tests.support.proxy import TcpProxy
from tests.support.server import Served, ServerFactory, served_in_thread
from tests.support.turns import create_session
from tests.support.ws_probe import JSON, assert_contiguous, journal_of, probe, read_sse, unique_name

# ----------------------------------------------------------------------------- shutdown, slow consumers


@contextlib.contextmanager
def _served_app(**overrides: Any) -> Iterator[tuple[Served, Any, asyncio.AbstractEventLoop]]:
    """As `running_app`, but the test gets the app and its loop (to close the hub by hand)."""
    with served_in_thread(**overrides) as served, httpx.Client(base_url=served.url, timeout=30) as http:
        yield Served(served.url, served.config, http), served.app, served.loop


def test_hub_close_closes_every_socket_with_1012() -> None:
    with _served_app(heartbeat=30) as (served, app, loop):
        with probe(served) as a, probe(served) as b:
            a.request("subscribe", stream="tasks")
            b.request("ping")
            loop.call_soon_threadsafe(app.state.ctx.hub.close)
            for p in (a, b):
                with pytest.raises(ConnectionClosed) as closed:
                    p.until(lambda f: False, timeout=20)
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1012, "server shutdown")
        assert served.http.get("/healthz").json()["streams_open"] == 0


def _slow_disconnects(served: Served) -> float:
    text = served.http.get("/metrics").text
    match = re.search(r"^agentwire_slow_consumer_disconnects_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_slow_consumer_is_cut_with_4008_and_resumes_exactly() -> None:
    big = {"context": {"output": "<p>" + "report line. " * 1500 + "</p>"}}  # ~20 KB per event

    async def scenario(served: Served) -> tuple[list[JSON], int, int]:
        # A small receive buffer, and websockets stops reading while a message waits unread.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", served.port))
        received: list[JSON] = []
        async with async_connect(ws_url(served.url), sock=sock, max_queue=1, compression=None,
                                 max_size=None) as slow:
            await slow.send(orjson.dumps({"op": "subscribe", "stream": "tasks", "ref": "s"}).decode())
            opened = orjson.loads(await slow.recv())
            assert opened["type"] == "stream.open"
            assert orjson.loads(await slow.recv())["op"] == "ack"
            # The slow client now reads nothing, while the board keeps changing; nothing waits for it.
            for number in range(2000):
                response = await asyncio.to_thread(served.http.post, "/api/tasks",
                                                   json={"title": f"card {number}", **big})
                assert response.status_code == 201, response.text
                if await asyncio.to_thread(_slow_disconnects, served) >= 1:
                    break
            assert await asyncio.to_thread(_slow_disconnects, served) >= 1
            # Reading again: what was in flight, then the close frame.
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    message = orjson.loads(await asyncio.wait_for(slow.recv(), 20))
                    if "seq" in message:
                        received.append(message)
            assert closed.value.rcvd is not None, closed.value
        return received, closed.value.rcvd.code, opened["data"]["from"] - 1

    with _served_app(buffer_limit=128 * 1024, heartbeat=30) as (served, _, _):
        received, code, start = asyncio.run(scenario(served))
        assert code == 4008
        assert_contiguous(received, start + 1)
        head = served.tasks_head()
        with probe(served) as p:  # resume after the last seq received: every event exactly once
            p.request("subscribe", stream="tasks", after=received[-1]["seq"] if received else start)
            p.until(lambda f: f.get("seq") == head)
            assert received + p.events("tasks") == read_sse(served, "tasks", start, head)


def test_a_backlog_larger_than_the_buffer_replays_whole(make_server: ServerFactory) -> None:
    served = make_server(buffer_limit=64 * 1024)
    for number in range(100):
        served.http.post("/api/tasks", json={"title": f"card {number}",
                                             "context": {"output": "<p>" + "x" * 2000 + "</p>"}}).raise_for_status()
    with probe(served) as p:
        p.request("subscribe", stream="tasks", after=0)
        p.until(lambda f: f.get("seq") == 100, timeout=30)
        assert_contiguous(p.events("tasks"))


# ----------------------------------------------------------------------------- many streams on one socket


def _fast_backoff() -> Any:
    def next_delay(self: client_module.Backoff) -> float:
        self.attempt += 1
        return 0.02

    return mock.patch.object(client_module.Backoff, "next_delay", next_delay)


def test_twenty_streams_on_one_socket_resume_after_cuts(make_server: ServerFactory) -> None:
    served = make_server(no_auth=True, token=None)
    sessions = [unique_name("multi") for _ in range(20)]
    for session in sessions:
        create_session(served.url, session, options={"deltas": 60, "delay_ms": 15, "tool_calls": 1})

    async def scenario(proxy: TcpProxy) -> tuple[dict[str, list[JSON]], int]:
        dropped = 0
        async with WsClient(f"http://127.0.0.1:{proxy.port}") as ws, \
                WsClient(served.url) as driver:
            got: dict[str, list[JSON]] = {s: [] for s in sessions}
            opened: set[str] = set()
            ready = asyncio.Event()

            async def follow(session: str) -> None:
                turn: str | None = None
                async for envelope in ws.follow(f"konsole/{session}", 0):
                    if envelope["type"] == "stream.open":
                        opened.add(session)
                        if len(opened) == len(sessions):
                            ready.set()
                        continue
                    got[session].append(envelope)
                    if envelope["type"] == "turn.started":
                        turn = envelope["turn"]
                    if envelope.get("turn") == turn and envelope["type"] in TERMINAL:
                        return

            followers = [asyncio.create_task(follow(s)) for s in sessions]
            await asyncio.wait_for(ready.wait(), 30)
            for session in sessions:
                await driver.request("send", session=session, message="in parallel")
            for delay in (0.3, 0.5):
                await asyncio.sleep(delay)
                dropped += await asyncio.to_thread(proxy.drop_all)
            await asyncio.wait_for(asyncio.gather(*followers), 120)
            return got, dropped

    with _fast_backoff(), TcpProxy(served.port) as proxy:
        got, dropped = asyncio.run(scenario(proxy))
        assert dropped >= 1
        assert proxy.connections_made == 1 + dropped  # one socket at a time carried all twenty
    for session in sessions:
        assert got[session] == journal_of(served, session), session


def test_client_transport_ws_behaves_as_sse(server: Served) -> None:
    session = unique_name("facade")
    create_session(server.url, session, server.auth, options={"deltas": 40, "delay_ms": 0})

    async def scenario() -> tuple[list[JSON], list[JSON], list[JSON]]:
        async with Client(server.url, server.config.token, transport="ws") as ws, \
                Client(server.url, server.config.token) as sse:
            over_ws = [e async for e in ws.turn(session, "hello")]
            last = over_ws[-1]["seq"]
            ws_replay = [e async for e in ws.follow(f"konsole/{session}", 0, stop=lambda e: e.get("seq") == last)]
            sse_replay = [e async for e in sse.follow(f"konsole/{session}", 0, stop=lambda e: e.get("seq") == last)]
            with pytest.raises(client_module.StreamFailed) as refused:
                async for _ in ws.turn("bad name!", "hello"):
                    pass
            assert isinstance(refused.value, client_module.RequestFailed)
            assert refused.value.code == "bad_session_name"
            return over_ws, ws_replay, sse_replay

    over_ws, ws_replay, sse_replay = asyncio.run(scenario())
    assert ws_replay == sse_replay
    assert over_ws == [e for e in ws_replay if e.get("turn") == over_ws[0]["turn"]]
    assert over_ws[-1]["type"] == "turn.completed"


def test_ws_client_gives_up_on_a_refused_token(make_server: ServerFactory) -> None:
    served = make_server()

    async def scenario() -> None:
        async with WsClient(served.url, "wrong") as ws:
            with pytest.raises(client_module.StreamFailed, match="403"):
                async for _ in ws.follow("tasks"):
                    pass

    asyncio.run(asyncio.wait_for(scenario(), 30))
    eventually(lambda: served.http.get("/healthz").json()["streams_open"] == 0)
