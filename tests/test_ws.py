"""The WebSocket transport (`/api/ws`, §6): requests and their answers, positions, bad frames (and a
hypothesis fuzz of frames), close codes, auth, heartbeat, shutdown, slow consumers, and twenty streams
on one socket through cuts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from agentwire import client as client_module
from agentwire.client import Client, WsClient, ws_url
from agentwire.console.transcript import TERMINAL
from tests.support.eventually import eventually
from tests.support.proxy import TcpProxy
from tests.support.server import TOKEN, Served, ServerFactory, served_in_thread
from tests.support.turns import create_session, run_turn

JSON = dict[str, Any]
_names = itertools.count(1)


def _name(prefix: str) -> str:
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 10**6}"


class Probe:
    """A raw WebSocket on `/api/ws`: send requests, read frames, keep every frame seen."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[JSON] = []
        self._refs = itertools.count(1)

    def send(self, frame: JSON | str) -> None:
        self.ws.send(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    def recv(self, timeout: float = 20.0) -> JSON:
        message: JSON = orjson.loads(self.ws.recv(timeout))
        self.frames.append(message)
        return message

    def request(self, op: str, **fields: Any) -> JSON:
        ref = f"t{next(self._refs)}"
        self.send({"op": op, "ref": ref, **fields})
        while True:
            message = self.recv()
            if message.get("op") in ("ack", "error") and message.get("ref") == ref:
                return message

    def until(self, stop: Callable[[JSON], bool], timeout: float = 30.0) -> list[JSON]:
        deadline = time.monotonic() + timeout
        out = []
        while True:
            message = self.recv(max(0.1, deadline - time.monotonic()))
            out.append(message)
            if stop(message):
                return out

    def events(self, stream: str) -> list[JSON]:
        return [f for f in self.frames if f.get("stream") == stream and "seq" in f and "op" not in f]


@contextlib.contextmanager
def probe(served: Served, headers: dict[str, str] | None = None, path: str = "") -> Iterator[Probe]:
    with sync_connect(ws_url(served.url) + path, additional_headers=served.auth if headers is None else headers,
                      max_size=None, max_queue=None, compression=None, open_timeout=20) as ws:
        yield Probe(ws)


def _terminal_of(turn: str) -> Callable[[JSON], bool]:
    return lambda frame: frame.get("turn") == turn and frame.get("type") in TERMINAL


def _journal(served: Served, session: str) -> list[JSON]:
    """Every event of the session stream so far, read over SSE (the reference)."""
    head = served.http.get(f"/api/konsole/{session}/state").raise_for_status().json()["head"]
    return _read(served, f"konsole/{session}", 0, head)


def _read(served: Served, stream: str, after: int, head: int) -> list[JSON]:
    """The events `after` < seq <= `head` of a stream, read over SSE."""
    out: list[JSON] = []

    async def read() -> None:
        async with Client(served.url, served.config.token) as c:
            async for envelope in c.follow(stream, after, stop=lambda e: e.get("seq") == head):
                if "seq" in envelope:
                    out.append(envelope)

    if head > after:
        asyncio.run(read())
    return out


def _assert_contiguous(events: list[JSON], first: int = 1) -> None:
    assert [e["seq"] for e in events] == list(range(first, first + len(events)))


# ----------------------------------------------------------------------------- subscribe, send, cancel


def test_subscribe_replays_then_goes_live(server: Served) -> None:
    session = _name("live")
    create_session(server.url, session, server.auth, options={"deltas": 20, "delay_ms": 0})
    first_turn = run_turn(server.url, session, "first", headers=server.auth)
    head = first_turn[-1]["seq"]
    with probe(server) as p:
        ack = p.request("subscribe", stream=f"konsole/{session}", after=0)
        assert ack == {"op": "ack", "ref": ack["ref"], "stream": f"konsole/{session}"}
        opened = p.frames[-2]
        assert opened["type"] == "stream.open" and "seq" not in opened
        assert opened["stream"] == f"konsole/{session}"
        assert opened["data"]["head"] == head and opened["data"]["from"] == 1 and opened["data"]["epoch"]
        p.until(lambda f: f.get("seq") == head)
        sent = p.request("send", session=session, message="second")
        assert sent["turn"] and sent["lane"] == "main" and sent["session"] == session
        assert sent["first_seq"] == head + 1
        p.until(_terminal_of(sent["turn"]))
        events = p.events(f"konsole/{session}")
        _assert_contiguous(events)
        assert events[: len(first_turn) + 1][1:] == first_turn
        assert events == _journal(server, session)


def test_positions_follow_the_resume_rules(server: Served) -> None:
    session = _name("pos")
    create_session(server.url, session, server.auth, options={"deltas": 5, "delay_ms": 0})
    events = run_turn(server.url, session, "fill", headers=server.auth)
    head = events[-1]["seq"]
    stream = f"konsole/{session}"

    def first_after(**position: Any) -> tuple[JSON, JSON]:
        with probe(server) as p:
            assert p.request("subscribe", stream=stream, **position)["op"] == "ack"
            opened = next(f for f in p.frames if f.get("type") == "stream.open")
            return opened, p.until(lambda f: "seq" in f)[-1]

    assert first_after(after=7)[1]["seq"] == 8
    assert first_after(**{"from": 7})[1]["seq"] == 7
    assert first_after(**{"from": 0})[1]["seq"] == 1
    assert first_after(after=3, **{"from": 9})[1]["seq"] == 4  # `after` wins, as Last-Event-ID does
    opened, first = first_after()
    assert opened["data"]["from"] == 1 and first["seq"] == 1  # a console stream starts at its first event
    assert first_after(after=head - 1)[1]["seq"] == head

    with probe(server) as p:  # a position from another epoch: one reset, then on after the head
        assert p.request("subscribe", stream=stream, after=head + 100)["op"] == "ack"
        reset = next(f for f in p.frames if f.get("type") == "stream.reset")
        assert reset == {"stream": stream, "type": "stream.reset", "data": {
            "epoch": reset["data"]["epoch"], "head": head, "reason": "ahead_of_head"}}
        sent = p.request("send", session=session, message="more")
        p.until(_terminal_of(sent["turn"]))
        assert p.events(stream)[0]["seq"] == head + 1 == sent["first_seq"]

    with probe(server) as p:  # tasks: from now
        tasks_head = server.tasks_head()
        p.request("subscribe", stream="tasks")
        assert p.frames[-2]["data"]["from"] == tasks_head + 1
        server.http.post("/api/tasks", json={"title": "after subscribing"}).raise_for_status()
        created = p.until(lambda f: f.get("type") == "task.created")[-1]
        assert created["seq"] == tasks_head + 1 and created["data"]["task"]["title"] == "after subscribing"


def test_fold_sends_finished_blocks_whole(server: Served) -> None:
    session = _name("fold")
    create_session(server.url, session, server.auth, options={"deltas": 30, "delay_ms": 0})
    events = run_turn(server.url, session, "fold me", headers=server.auth)
    with probe(server) as p:
        p.request("subscribe", stream=f"konsole/{session}", after=0, fold=True)
        folded = [f for f in p.until(lambda f: f.get("seq") == events[-1]["seq"]) if "seq" in f]
    assert not [e for e in folded if e["type"] in ("text.delta", "thinking.delta")]
    assert [e for e in folded if e["type"] == "text.done"] == [e for e in events if e["type"] == "text.done"]
    seqs = [e["seq"] for e in folded]
    assert seqs == sorted(seqs) and len(folded) < len(events)


def test_send_on_both_lanes_and_cancel(server: Served) -> None:
    session = _name("lanes")
    create_session(server.url, session, server.auth, options={"deltas": 400, "delay_ms": 20})
    with probe(server) as p:
        p.request("subscribe", stream=f"konsole/{session}")
        main = p.request("send", session=session, message="a long one")
        assert main["op"] == "ack" and main["lane"] == "main"
        busy = p.request("send", session=session, message="not now", if_busy="reject")
        assert busy["op"] == "error" and busy["error"]["code"] == "turn_in_progress"
        quick = p.request("send", session=session, message="quick question", lane="quick")
        assert quick["op"] == "ack" and quick["lane"] == "quick" and quick["first_seq"] > main["first_seq"]
        cancelled = p.request("cancel", session=session, turn=quick["turn"])
        assert cancelled["op"] == "ack" and cancelled["turn"] == quick["turn"]
        p.until(_terminal_of(quick["turn"]))
        cancelled = p.request("cancel", session=session)
        assert cancelled["op"] == "ack" and cancelled["turn"] == main["turn"] and cancelled["status"] == "cancelling"
        end = p.until(_terminal_of(main["turn"]))[-1]
        assert end["type"] == "turn.cancelled"
        again = p.request("cancel", session=session)
        assert again["op"] == "error" and again["error"]["code"] == "no_running_turn"
        _assert_contiguous(p.events(f"konsole/{session}"))


def test_decide_answers_a_permission_request(server: Served) -> None:
    session = _name("decide")
    create_session(server.url, session, server.auth, options={"ask_permission": True, "deltas": 5, "delay_ms": 0})
    with probe(server) as p:
        p.request("subscribe", stream=f"konsole/{session}")
        turn = p.request("send", session=session, message="take notes")["turn"]
        (request,) = [f for f in p.until(lambda f: f.get("type") == "permission.requested")
                      if f.get("type") == "permission.requested"]
        request_id = request["data"]["request_id"]
        unknown = p.request("decide", session=session, request_id="perm_nope", decision="allow")
        assert unknown["op"] == "error" and unknown["error"]["code"] == "permission_not_found"
        bad = p.request("decide", session=session, request_id=request_id, decision="yes")
        assert bad["op"] == "error" and (bad["error"]["code"], bad["error"]["field"]) == ("validation_error",
                                                                                          "decision")
        ack = p.request("decide", session=session, request_id=request_id, decision="allow", remember=True)
        assert ack["op"] == "ack" and "seq" not in ack
        assert {k: ack[k] for k in ("request_id", "decision", "by", "remember", "rule")} == {
            "request_id": request_id, "decision": "allow", "by": "user", "remember": True, "rule": {"tool": "Write"}}
        again = p.request("decide", session=session, request_id=request_id, decision="deny")
        assert again["op"] == "error" and again["error"]["code"] == "permission_settled"
        assert p.until(_terminal_of(turn))[-1]["type"] == "turn.completed"
        (decided,) = [f for f in p.events(f"konsole/{session}") if f["type"] == "permission.decided"]
        assert decided["seq"] == ack["first_seq"] and decided["data"]["by"] == "user"
        _assert_contiguous(p.events(f"konsole/{session}"))


def test_unsubscribe_stops_a_stream(server: Served) -> None:
    session = _name("unsub")
    create_session(server.url, session, server.auth, options={"deltas": 5, "delay_ms": 0})
    with probe(server) as p:
        p.request("subscribe", stream=f"konsole/{session}")
        p.until(lambda f: f.get("seq") == 1)
        assert p.request("unsubscribe", stream=f"konsole/{session}")["op"] == "ack"
        run_turn(server.url, session, "nobody listens", headers=server.auth)
        assert p.request("ping")["op"] == "ack"
        assert p.events(f"konsole/{session}") == p.events(f"konsole/{session}")[:1]
        # and it can be subscribed again, at any position
        p.request("subscribe", stream=f"konsole/{session}", after=1)
        assert p.until(lambda f: "seq" in f)[-1]["seq"] == 2


def test_server_pings_an_idle_connection(server: Served) -> None:
    with probe(server) as p:
        started = time.monotonic()
        assert p.recv(10) == {"op": "ping"}
        assert p.recv(10) == {"op": "ping"}
        assert time.monotonic() - started < 8


# ----------------------------------------------------------------------------- bad frames and limits


def test_bad_frames_get_an_error_and_the_connection_lives_on(make_server: ServerFactory) -> None:
    served = make_server(max_subscriptions=3)
    session = _name("bad")
    create_session(served.url, session, served.auth, options={"deltas": 5, "delay_ms": 0})
    cases: list[tuple[JSON | str, str]] = [
        ("not json {", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ('"subscribe"', "bad_frame"),
        ({"stream": "tasks"}, "validation_error op"),
        ({"op": "dance"}, "unknown_op"),
        ({"op": 7}, "unknown_op"),
        ('{"op": "ping", "ref": NaN}', "bad_json"),
        ('{"op": "ping", "ref": 1e999}', "bad_json"),
        ('{"op": "ping", "ref": 18446744073709551616}', "bad_json"),
        ({"op": "ping", "extra": 1}, "validation_error extra"),
        ({"op": "subscribe"}, "validation_error stream"),
        ({"op": "subscribe", "stream": 5}, "validation_error stream"),
        ({"op": "subscribe", "stream": "secrets"}, "bad_stream"),
        ({"op": "subscribe", "stream": "tasks/x"}, "bad_stream"),
        ({"op": "subscribe", "stream": "konsole/"}, "bad_session_name"),
        ({"op": "subscribe", "stream": "konsole/../etc"}, "bad_session_name"),
        ({"op": "subscribe", "stream": "konsole/nobody-here"}, "session_not_found"),
        ({"op": "subscribe", "stream": "tasks", "after": -1}, "validation_error after"),
        ({"op": "subscribe", "stream": "tasks", "after": "5"}, "validation_error after"),
        ({"op": "subscribe", "stream": "tasks", "after": True}, "validation_error after"),
        ({"op": "subscribe", "stream": "tasks", "from": 1.5}, "validation_error from"),
        ({"op": "subscribe", "stream": "tasks", "after": 2**63}, "validation_error after"),
        ({"op": "subscribe", "stream": "tasks", "fold": "yes"}, "validation_error fold"),
        ({"op": "subscribe", "stream": "tasks", "aftr": 3}, "validation_error aftr"),
        ({"op": "unsubscribe", "stream": "tasks"}, "not_subscribed"),
        ({"op": "send", "session": session}, "validation_error message"),
        ({"op": "send", "message": "hi"}, "validation_error session"),
        ({"op": "send", "session": session, "message": "hi", "lane": "slow"}, "validation_error lane"),
        ({"op": "send", "session": session, "message": "hi", "if_busy": "wait"}, "validation_error if_busy"),
        ({"op": "send", "session": session, "message": "  "}, "empty_message"),
        ({"op": "send", "session": session, "message": "x" * 100_001}, "message_too_large"),
        ({"op": "send", "session": "bad name!", "message": "hi"}, "bad_session_name"),
        ({"op": "cancel", "session": "nobody-here"}, "session_not_found"),
        ({"op": "cancel", "session": session}, "no_running_turn"),
        ({"op": "cancel", "session": session, "turn": "t_nope"}, "turn_not_found"),
        ({"op": "cancel", "session": session, "turn": 12}, "validation_error turn"),
    ]
    with probe(served) as p:
        for number, (frame, code) in enumerate(cases):
            if isinstance(frame, dict):
                frame = {**frame, "ref": number}
            p.send(frame)
            answer = p.recv()
            assert answer["op"] == "error", (frame, answer)
            code, _, field = code.partition(" ")
            assert answer["error"]["code"] == code, (frame, answer)
            assert answer["error"]["message"]
            if field:  # the shape a REST body's validation error has
                assert answer["error"]["field"] == field, (frame, answer)
                assert answer["error"]["errors"][0]["field"] == field
            if isinstance(frame, dict):
                assert answer["ref"] == number
            else:
                assert "ref" not in answer
            assert p.request("ping")["op"] == "ack"  # still alive

        # limits on subscriptions
        assert p.request("subscribe", stream="tasks")["op"] == "ack"
        duplicate = p.request("subscribe", stream="tasks")
        assert duplicate["error"]["code"] == "already_subscribed"
        others = [_name("limit") for _ in range(3)]
        for name in others:
            create_session(served.url, name, served.auth)
        assert p.request("subscribe", stream=f"konsole/{others[0]}")["op"] == "ack"
        assert p.request("subscribe", stream=f"konsole/{others[1]}")["op"] == "ack"
        over = p.request("subscribe", stream=f"konsole/{others[2]}")
        assert over["op"] == "error" and over["error"]["code"] == "too_many_subscriptions"
        assert p.request("unsubscribe", stream="tasks")["op"] == "ack"
        assert p.request("subscribe", stream=f"konsole/{others[2]}")["op"] == "ack"


def test_a_binary_frame_closes_with_1003(server: Served) -> None:
    with probe(server) as p:
        p.ws.send(b'{"op":"ping"}')
        with pytest.raises(ConnectionClosed) as closed:
            p.until(lambda f: False, timeout=20)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003


def test_an_oversized_frame_closes_with_1009(make_server: ServerFactory) -> None:
    served = make_server(max_body=64 * 1024)
    with probe(served) as p:
        big_but_allowed = orjson.dumps({"op": "ping", "ref": "x" * 60_000}).decode()
        p.send(big_but_allowed)
        assert p.recv()["op"] == "ack"
        p.send(orjson.dumps({"op": "ping", "ref": "é" * 40_000}).decode())  # 40k characters, 80 KB
        with pytest.raises(ConnectionClosed) as closed:
            p.until(lambda f: False, timeout=20)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


# ----------------------------------------------------------------------------- fuzz

OPS = ["subscribe", "unsubscribe", "send", "cancel", "ping", "decide"]
FIELDS = ["stream", "after", "from", "fold", "session", "message", "lane", "if_busy", "turn", "request_id",
          "decision", "remember"]
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=3), max_leaves=8)
# Values that mean something to some op, and anything else.
_field_values = st.one_of(
    st.sampled_from(["tasks", "konsole/fuzz", "konsole/", "konsole/../x", "fuzz", "main", "quick", "queue",
                     "reject", "t_nope", "perm_nope", "allow", "deny", "", " ", "x" * 300]),
    st.integers(-2, 5), st.sampled_from([2**63 - 1, 2**63, 2**64 - 1]), _json)
_requests = st.fixed_dictionaries({"op": st.one_of(st.sampled_from(OPS), _json)},
                                  optional={name: _field_values for name in FIELDS})
UNACCEPTABLE = ['{"op": "ping", "ref": NaN}', '{"op": "ping", "after": 1e999}', '{"op": "ping"', "[1,",
                '{"op": "subscribe", "stream": "tasks", "after": 18446744073709551616}', r'"\ud800"']
# One text frame: a request (with a ref to match its answer), some other JSON, or text that is not
# JSON agentwire accepts (malformed, or numbers no journal can hold).
_frames = st.one_of(
    _requests.map(lambda request: ("request", request)),
    _json.filter(lambda value: not isinstance(value, dict)).map(lambda value: ("json", value)),
    st.one_of(st.text(max_size=50), st.sampled_from(UNACCEPTABLE)).map(lambda text: ("text", text)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(frames=st.lists(_frames, min_size=1, max_size=12))
def test_fuzzed_frames_each_get_one_answer_and_the_socket_lives_on(server: Served,
                                                                   frames: list[tuple[str, Any]]) -> None:
    """Whatever text frames come, in whatever order: each gets exactly one ack or error, in order,
    with its ref when it had one (an error when it was not a JSON object or not JSON at all), within
    seconds; the socket stays open and the server keeps answering."""
    with probe(server) as p:
        for ref, (kind, frame) in enumerate(frames):
            if kind == "request":
                p.send({**frame, "ref": ref})
            elif kind == "json":
                p.send(orjson.dumps(frame).decode())
            else:
                p.send(frame)
            answer = _next_answer(p)
            if kind == "request":
                assert answer.get("ref") == ref, (frame, answer)
            else:
                assert answer["op"] == "error" and "ref" not in answer, (frame, answer)
                assert answer["error"]["code"] in ("bad_json", "bad_frame"), (frame, answer)
            if answer["op"] == "error":
                assert answer["error"]["code"] != "internal_error", (frame, answer)
                assert answer["error"]["message"], answer
        assert p.request("ping")["op"] == "ack"


@pytest.mark.parametrize(("frame", "code"), [(b"\x00\xff binary", 1003), (b"", 1003),
                                             ("x" * 5000, 1009), ("é" * 3000, 1009)])
def test_a_frame_that_cannot_be_answered_closes_the_socket_with_its_code(make_server: ServerFactory,
                                                                          frame: str | bytes, code: int) -> None:
    served = make_server(max_body=4096)
    with probe(served) as p:
        assert p.request("subscribe", stream="tasks")["op"] == "ack"
        p.ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            p.until(lambda f: False, timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    eventually(lambda: served.http.get("/healthz").json()["streams_open"] == 0, timeout=10)  # its subscription ended


def _next_answer(p: Probe) -> JSON:
    """The next ack or error (events and pings of the subscriptions a frame opened come between)."""
    while True:
        message = p.recv(timeout=15)
        if message.get("op") in ("ack", "error"):
            return message


# ----------------------------------------------------------------------------- auth


def test_auth_as_for_sse(make_server: ServerFactory) -> None:
    served = make_server()
    # Without the token the handshake is refused (the middleware closes before accepting: HTTP 403).
    for headers, path in (({}, ""), ({"authorization": "Bearer wrong"}, ""), ({}, "?token=wrong"),
                          ({"cookie": "agentwire_token=wrong"}, "")):
        with pytest.raises(InvalidStatus) as refused:
            with probe(served, headers, path):
                pass
        assert refused.value.response.status_code == 403
    for headers, path in (({"authorization": f"Bearer {TOKEN}"}, ""), ({}, f"?token={TOKEN}"),
                          ({"cookie": f"agentwire_token={TOKEN}"}, "")):
        with probe(served, headers, path) as p:
            assert p.request("ping")["op"] == "ack"


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
        _assert_contiguous(received, start + 1)
        head = served.tasks_head()
        with probe(served) as p:  # resume after the last seq received: every event exactly once
            p.request("subscribe", stream="tasks", after=received[-1]["seq"] if received else start)
            p.until(lambda f: f.get("seq") == head)
            assert received + p.events("tasks") == _read(served, "tasks", start, head)


def test_a_backlog_larger_than_the_buffer_replays_whole(make_server: ServerFactory) -> None:
    served = make_server(buffer_limit=64 * 1024)
    for number in range(100):
        served.http.post("/api/tasks", json={"title": f"card {number}",
                                             "context": {"output": "<p>" + "x" * 2000 + "</p>"}}).raise_for_status()
    with probe(served) as p:
        p.request("subscribe", stream="tasks", after=0)
        p.until(lambda f: f.get("seq") == 100, timeout=30)
        _assert_contiguous(p.events("tasks"))


# ----------------------------------------------------------------------------- many streams on one socket


def _fast_backoff() -> Any:
    def next_delay(self: client_module.Backoff) -> float:
        self.attempt += 1
        return 0.02

    return mock.patch.object(client_module.Backoff, "next_delay", next_delay)


def test_twenty_streams_on_one_socket_resume_after_cuts(make_server: ServerFactory) -> None:
    served = make_server(no_auth=True, token=None)
    sessions = [_name("multi") for _ in range(20)]
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
        assert got[session] == _journal(served, session), session


def test_client_transport_ws_behaves_as_sse(server: Served) -> None:
    session = _name("facade")
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
