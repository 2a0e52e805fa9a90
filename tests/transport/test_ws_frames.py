"""The WebSocket transport (`/api/ws`): bad frames and limits, and a hypothesis fuzz of frames; each
gets its answer or its close code, and the socket lives on when it should."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from tests.support.eventually import eventually
from tests.support.server import Served, ServerFactory
from tests.support.turns import create_session
from tests.support.ws_probe import JSON, Probe, probe, unique_name

# ----------------------------------------------------------------------------- bad frames and limits


def test_bad_frames_get_an_error_and_the_connection_lives_on(make_server: ServerFactory) -> None:
    served = make_server(max_subscriptions=3)
    session = unique_name("bad")
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
        others = [unique_name("limit") for _ in range(3)]
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
