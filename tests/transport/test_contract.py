"""One contract, both transports: SSE and WebSocket deliver the same events of a session, a client can
switch transports mid-turn and resume at its last seq, and random cuts (through a TCP proxy) never
lose or double an event. Every test runs against a real server, through the Python client."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentwire import client as client_module
from agentwire.client import Client
from agentwire.console.transcript import TERMINAL
from tests.support.proxy import TcpProxy
from tests.support.server import running_app
from tests.support.turns import create_session, run_turn

JSON = dict[str, Any]
TRANSPORTS = ["sse", "ws"]
_names = itertools.count(1)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("contract") / "journal.db"
    with running_app(journal=f"sqlite:///{db}", heartbeat=0.5) as (served, _):
        yield served


def _name(prefix: str) -> str:
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 10**6}"


def _fast_backoff() -> Any:
    """Reconnect at once: the tests cut often, and the client's real backoff would only add waiting."""
    def next_delay(self: client_module.Backoff) -> float:
        self.attempt += 1
        return 0.01

    return mock.patch.object(client_module.Backoff, "next_delay", next_delay)


def _ends(turn: str | None = None) -> Callable[[JSON], bool]:
    return lambda e: e.get("type") in TERMINAL and (turn is None or e.get("turn") == turn)


async def _collect(url: str, transport: str, stream: str, after: int | None,
                   stop: Callable[[JSON], bool]) -> list[JSON]:
    async with Client(url, transport=transport, max_attempts=50) as client:
        return [e async for e in client.follow(stream, after, stop=stop) if "seq" in e]


def _journal(url: str, session: str) -> list[JSON]:
    head = httpx.get(f"{url}/api/konsole/{session}/state", timeout=30).json()["head"]
    return asyncio.run(_collect(url, "sse", f"konsole/{session}", 0, lambda e: e.get("seq") == head))


def _assert_exact(got: list[JSON], expected: list[JSON]) -> None:
    assert [e["seq"] for e in got] == [e["seq"] for e in expected]
    assert got == expected


# ----------------------------------------------------------------------------- parity


def test_sse_and_ws_deliver_identical_sequences(url: str) -> None:
    session = _name("parity")
    create_session(url, session, options={"deltas": 500, "delay_ms": 0})
    stream = f"konsole/{session}"

    async def live() -> tuple[list[JSON], list[JSON], list[JSON]]:
        followers = [asyncio.create_task(_collect(url, t, stream, 0, _ends())) for t in TRANSPORTS]
        await asyncio.sleep(0.3)  # both are subscribed (the session's first event is already there)
        async with Client(url) as client:
            turn = [e async for e in client.turn(session, "the same for everyone")]
        sse, ws = await asyncio.wait_for(asyncio.gather(*followers), 60)
        return sse, ws, turn

    live_sse, live_ws, turn = asyncio.run(live())
    _assert_exact(live_ws, live_sse)
    assert [e for e in live_sse if e.get("turn")] == turn
    assert sum(1 for e in turn if e["type"] == "text.delta") >= 500
    for transport in TRANSPORTS:  # and replayed later, the same again
        replay = asyncio.run(_collect(url, transport, stream, 0, _ends()))
        _assert_exact(replay, live_sse)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_turn_over_either_transport_is_the_turns_journal(url: str, transport: str) -> None:
    session = _name("turn")
    create_session(url, session, options={"deltas": 50, "delay_ms": 0})

    async def run() -> list[JSON]:
        async with Client(url, transport=transport) as client:
            return [e async for e in client.turn(session, "hello", lane="quick")]

    events = asyncio.run(run())
    assert events[0]["type"] == "turn.started" and events[-1]["type"] == "turn.completed"
    assert all(e["lane"] == "quick" for e in events)
    _assert_exact(events, [e for e in _journal(url, session) if e.get("turn") == events[0]["turn"]])


# ----------------------------------------------------------------------------- switching transports


@pytest.mark.parametrize(("first", "second"), [("sse", "ws"), ("ws", "sse")])
def test_switch_transport_mid_turn(url: str, first: str, second: str) -> None:
    session = _name("switch")
    create_session(url, session, options={"deltas": 300, "delay_ms": 4})

    async def run() -> tuple[list[JSON], list[JSON]]:
        before: list[JSON] = []
        async with Client(url, transport=first) as client:
            async for envelope in client.turn(session, "switch halfway"):
                before.append(envelope)
                if len(before) == 60:
                    break
        turn = before[0]["turn"]
        after = await _collect(url, second, f"konsole/{session}", before[-1]["seq"], _ends(turn))
        return before, after

    before, after = asyncio.run(run())
    assert not [e for e in before if e["type"] in TERMINAL]  # the switch really was mid-turn
    turn = before[0]["turn"]
    _assert_exact(before + [e for e in after if e.get("turn") == turn],
                  [e for e in _journal(url, session) if e.get("turn") == turn])
    assert after[0]["seq"] == before[-1]["seq"] + 1


# ----------------------------------------------------------------------------- random cuts


@pytest.fixture(scope="module")
def finished(url: str) -> tuple[str, list[JSON]]:
    """A session with one finished turn of a few hundred events, and its journal."""
    session = _name("cuts")
    create_session(url, session, options={"deltas": 250, "delay_ms": 0, "tool_calls": 3})
    run_turn(url, session, "cut me anywhere")
    return session, _journal(url, session)


@pytest.mark.parametrize("transport", TRANSPORTS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_random_cuts_of_a_replay_keep_exactness(url: str, finished: tuple[str, list[JSON]], transport: str,
                                                 data: st.DataObject) -> None:
    session, journal = finished
    size = sum(len(str(e)) for e in journal)
    cuts = data.draw(st.lists(st.integers(0, size), max_size=4), label="cuts")
    start = data.draw(st.integers(0, len(journal) - 1), label="start")
    head = journal[-1]["seq"]
    with _fast_backoff(), TcpProxy(int(url.rsplit(":", 1)[1])) as proxy:
        proxy.plan_cuts(cuts)
        got = asyncio.run(asyncio.wait_for(_collect(f"http://127.0.0.1:{proxy.port}", transport,
                                                    f"konsole/{session}", start, lambda e: e.get("seq") == head),
                                           60))
        assert proxy.connections_made - proxy.cuts_done in (0, 1)  # every cut was followed by a resume
    _assert_exact(got, journal[start:])


@pytest.mark.parametrize("transport", TRANSPORTS)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, 40_000), min_size=1, max_size=4))
def test_random_cuts_of_a_live_turn_keep_exactness(url: str, transport: str, cuts: list[int]) -> None:
    session = _name("livecuts")
    create_session(url, session, options={"deltas": 120, "delay_ms": 2})

    async def run(proxy_url: str) -> tuple[list[JSON], str]:
        follower = asyncio.create_task(_collect(proxy_url, transport, f"konsole/{session}", 0,
                                                lambda e: e.get("type") in TERMINAL))
        await asyncio.sleep(0.05)
        async with Client(url) as client:  # the turn itself runs over a direct, uncut connection
            turn = [e async for e in client.turn(session, "cut me while I talk")]
        return await asyncio.wait_for(follower, 60), turn[0]["turn"]

    with _fast_backoff(), TcpProxy(int(url.rsplit(":", 1)[1])) as proxy:
        proxy.plan_cuts(cuts)
        got, turn = asyncio.run(run(f"http://127.0.0.1:{proxy.port}"))
        assert proxy.connections_made - proxy.cuts_done in (0, 1)
    assert got[-1]["turn"] == turn
    _assert_exact(got, _journal(url, session))
