"""The WebSocket transport (`/api/ws`, §6): requests and their answers, positions, the fold, decisions,
heartbeat and auth (tests/support/ws_probe.py drives the socket)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from tests.support.server import TOKEN, Served, ServerFactory
from tests.support.turns import create_session, run_turn
from tests.support.ws_probe import JSON, assert_contiguous, journal_of, probe, terminal_of, unique_name

# ----------------------------------------------------------------------------- subscribe, send, cancel


def test_subscribe_replays_then_goes_live(server: Served) -> None:
    session = unique_name("live")
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
        p.until(terminal_of(sent["turn"]))
        events = p.events(f"konsole/{session}")
        assert_contiguous(events)
        assert events[: len(first_turn) + 1][1:] == first_turn
        assert events == journal_of(server, session)


def test_positions_follow_the_resume_rules(server: Served) -> None:
    session = unique_name("pos")
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
        p.until(terminal_of(sent["turn"]))
        assert p.events(stream)[0]["seq"] == head + 1 == sent["first_seq"]

    with probe(server) as p:  # tasks: from now
        tasks_head = server.tasks_head()
        p.request("subscribe", stream="tasks")
        assert p.frames[-2]["data"]["from"] == tasks_head + 1
        server.http.post("/api/tasks", json={"title": "after subscribing"}).raise_for_status()
        created = p.until(lambda f: f.get("type") == "task.created")[-1]
        assert created["seq"] == tasks_head + 1 and created["data"]["task"]["title"] == "after subscribing"


def test_fold_sends_finished_blocks_whole(server: Served) -> None:
    session = unique_name("fold")
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
    session = unique_name("lanes")
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
        p.until(terminal_of(quick["turn"]))
        cancelled = p.request("cancel", session=session)
        assert cancelled["op"] == "ack" and cancelled["turn"] == main["turn"] and cancelled["status"] == "cancelling"
        end = p.until(terminal_of(main["turn"]))[-1]
        assert end["type"] == "turn.cancelled"
        again = p.request("cancel", session=session)
        assert again["op"] == "error" and again["error"]["code"] == "no_running_turn"
        assert_contiguous(p.events(f"konsole/{session}"))


def test_decide_answers_a_permission_request(server: Served) -> None:
    session = unique_name("decide")
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
        assert p.until(terminal_of(turn))[-1]["type"] == "turn.completed"
        (decided,) = [f for f in p.events(f"konsole/{session}") if f["type"] == "permission.decided"]
        assert decided["seq"] == ack["first_seq"] and decided["data"]["by"] == "user"
        assert_contiguous(p.events(f"konsole/{session}"))


def test_unsubscribe_stops_a_stream(server: Served) -> None:
    session = unique_name("unsub")
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


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 70_000])
def test_frames_written_straight_to_the_socket_are_what_a_websocket_client_reads(size: int) -> None:
    """The sink path builds server frames itself (once per event); websockets' own client parser
    must read them as the text messages they carry, at each of the three length encodings."""
    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.protocol import State
    from websockets.uri import parse_uri

    from agentwire.ws import ws_wire

    reader = ClientProtocol(parse_uri("ws://127.0.0.1/api/ws"), max_size=None, state=State.OPEN)
    payload = b"x" * size
    reader.receive_data(ws_wire(payload) + ws_wire(b'{"op":"ping"}'))
    frames = reader.events_received()
    assert [(frame.opcode, frame.data) for frame in frames if isinstance(frame, Frame)] == [
        (Opcode.TEXT, payload), (Opcode.TEXT, b'{"op":"ping"}')]
    assert len(frames) == 2
