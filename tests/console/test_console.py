"""The console over HTTP: turns on two lanes, recovery after a cut, cancel, queueing, failures."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentwire.console.transcript import TERMINAL
from tests.support.eventually import eventually
from tests.support.server import ServerProcess, running_app
from tests.support.turns import (
    comparable,
    create_session,
    first_event_ms,
    follow_until,
    on_type,
    post_turn_cut,
    run_turn,
    sse_events,
    transcript_of,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("console") / "journal.db"
    with running_app(journal=f"sqlite:///{db}") as (url, _):
        yield url


def _name(prefix: str) -> str:
    return f"{prefix}-{random.randrange(10**9)}"


def test_turn_stream_carries_every_kind_of_event(server: str) -> None:
    session = _name("kinds")
    create_session(server, session, options={"deltas": 30, "delay_ms": 0, "tool_calls": 2})
    events = run_turn(server, session, "show me everything")
    kinds = [e["type"] for e in events]
    for kind in ("turn.started", "state", "thinking.delta", "thinking.done", "text.delta", "text.done",
                 "tool.call", "tool.result", "todo.updated", "turn.completed"):
        assert kind in kinds, kind
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    turn = events[0]["turn"]
    assert all(e["turn"] == turn and e["lane"] == "main" for e in events)
    done = events[-1]["data"]
    timing = done["timing"]
    assert set(timing) == {"totalMs", "ttfeMs", "thinkingMs", "toolExecutionMs", "toolCallCount",
                           "ttfePct", "thinkingPct", "toolsPct"}
    assert timing["toolCallCount"] == 2 + 4  # two lookups, three todo_write, one task_create
    assert done["usage"]["output_tokens"] > 0
    text = "".join(e["data"]["text"] for e in events if e["type"] == "text.delta" and e["data"]["block"] == 0)
    assert text == next(e["data"]["text"] for e in events if e["type"] == "text.done" and e["data"]["block"] == 0)


def test_cut_post_response_recovers_the_exact_transcript(server: str) -> None:
    """The reconnect bug this replaces: after a cut, assistant text went missing. For many cut points
    in a long turn, the transcript rebuilt via GET …/events + Last-Event-ID equals the uncut one."""
    options = {"deltas": 2500, "delay_ms": 0, "tool_calls": 2}
    reference_session = _name("ref")
    create_session(server, reference_session, options=options)
    reference = run_turn(server, reference_session, "a long answer please")
    expected = comparable(transcript_of(reference))
    assert sum(1 for e in reference if e["type"] == "text.delta") == 2500 + 3

    rng = random.Random(7)
    approx_bytes = 300 * len(reference)  # about the size of the whole response
    cut_points = sorted({rng.randrange(50, approx_bytes) for _ in range(12)} | {60, 400, approx_bytes // 2})
    for cut_at in cut_points:
        session = _name("cut")
        create_session(server, session, options=options)
        before = post_turn_cut(server, session, "a long answer please", cut_at)
        journaled = [e for e in before if e.get("seq") is not None]
        last = journaled[-1]["seq"] if journaled else 0
        turn = journaled[0]["turn"] if journaled else None
        finished = bool(journaled) and journaled[-1]["type"] in TERMINAL

        def is_end(e: dict[str, object], turn: object = turn) -> bool:
            return e.get("seq") is not None and e["type"] in TERMINAL and (turn is None or e.get("turn") == turn)

        rest = [] if finished else follow_until(server, session, last, is_end)
        combined = journaled + [e for e in rest if e.get("seq") is not None and e.get("turn") is not None]
        if turn is None:  # cut before the first event: the turn is the one the session stream shows
            turn = next(e["turn"] for e in combined if e.get("turn"))
        mine = [e for e in combined if e.get("turn") == turn]
        seqs = [e["seq"] for e in mine]
        assert seqs == sorted(set(seqs)), f"duplicate or reordered events at cut {cut_at}"
        assert comparable(transcript_of(mine)) == expected, f"transcript differs at cut {cut_at}"


@pytest.fixture(scope="module")
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server in its own process: a latency measured against a server in a thread of the test
    process would include the test's own threads holding the GIL."""
    db = tmp_path_factory.mktemp("console-process") / "journal.db"
    with ServerProcess(f"sqlite:///{db}") as process:
        yield process.url


def test_quick_turn_starts_at_once_beside_a_long_main_turn(server_process: str) -> None:
    server = server_process
    session = _name("quick")
    create_session(server, session, options={"deltas": 400, "delay_ms": 10, "tool_calls": 0, "thinking": False})
    main_events: list[dict[str, Any]] = []
    main_started = threading.Event()

    def main_turn() -> None:
        started = on_type("text.delta", main_started)

        def on_event(event: dict[str, Any]) -> None:
            main_events.append(event)
            started(event)

        run_turn(server, session, "the long one", on_event=on_event)

    thread = threading.Thread(target=main_turn)
    thread.start()
    assert main_started.wait(20)
    firsts = []
    quick_runs = []
    for index in range(3):
        elapsed, turn = first_event_ms(server, session, f"quick question {index}")
        firsts.append(elapsed / 1000)

        def ends(event: dict[str, Any], turn: str = turn) -> bool:
            return event.get("turn") == turn and event["type"] in TERMINAL

        quick_runs.append([e for e in follow_until(server, session, 0, ends) if e.get("turn") == turn])
    thread.join(60)
    print(f"quick turn first event after {[round(f * 1000, 1) for f in firsts]} ms")
    assert statistics.median(firsts) < 0.100
    assert main_events[-1]["type"] == "turn.completed"
    main_turn_id = main_events[0]["turn"]
    assert all(e["lane"] == "main" and e["turn"] == main_turn_id for e in main_events)
    for events in quick_runs:
        assert events[-1]["type"] == "turn.completed"
        assert all(e["lane"] == "quick" and e["turn"] == events[0]["turn"] for e in events)
    # The lanes really ran side by side: main deltas were journaled between a quick turn's start and end.
    quick_span = (quick_runs[0][0]["seq"], quick_runs[0][-1]["seq"])
    assert any(quick_span[0] < e["seq"] < quick_span[1] for e in main_events if e["type"] == "text.delta")
    # A quick turn has its own context: its history is not the main lane's.
    state = httpx.get(f"{server}/api/konsole/{session}/state").json()
    assert state["agent_state"] == "idle" and state["running"] == []


def test_cancel_during_text(server: str) -> None:
    session = _name("cancel-text")
    create_session(server, session, options={"deltas": 5000, "delay_ms": 5})
    seen = threading.Event()
    result: list[list[dict[str, Any]]] = []
    thread = threading.Thread(target=lambda: result.append(run_turn(
        server, session, "go", on_event=on_type("text.delta", seen))))
    thread.start()
    assert seen.wait(20)
    response = httpx.post(f"{server}/api/konsole/{session}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelling"
    thread.join(20)
    events = result[0]
    assert events[-1]["type"] == "turn.cancelled"
    assert events[-1]["data"]["reason"] == "cancelled by user"
    assert sum(1 for e in events if e["type"] == "text.delta") < 5000
    assert httpx.get(f"{server}/api/konsole/{session}/state").json()["agent_state"] == "idle"


def test_cancel_during_a_tool_call(server: str) -> None:
    session = _name("cancel-tool")
    create_session(server, session, options={"deltas": 10, "delay_ms": 3000, "thinking": False, "tool_calls": 1})
    seen = threading.Event()
    result: list[list[dict[str, Any]]] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "tool.call" and event["data"]["name"] == "lookup":
            seen.set()

    thread = threading.Thread(target=lambda: result.append(run_turn(server, session, "go", on_event=on_event)))
    thread.start()
    assert seen.wait(20)
    state = httpx.get(f"{server}/api/konsole/{session}/state").json()
    assert state["agent_state"] == "running_tool"
    assert [c["name"] for c in state["outstanding_tool_calls"]] == ["lookup"]
    started = time.monotonic()
    httpx.post(f"{server}/api/konsole/{session}/cancel", json={})
    thread.join(20)
    events = result[0]
    assert events[-1]["type"] == "turn.cancelled"
    assert time.monotonic() - started < 2.5  # the 3 s tool pause was interrupted, not waited out
    lookups = [e for e in events if e["type"] == "tool.result" and e["data"]["call_id"].startswith("call_lookup")]
    assert lookups == []


@pytest.mark.parametrize("lane", ["main", "quick"])
def test_a_turn_started_without_a_stream_comes_on_the_session_stream(server: str, lane: str) -> None:
    """`POST …/turns` answers {turn, first_seq} at once; the session's events carry the turn from there."""
    session = _name("command")
    create_session(server, session, options={"deltas": 40, "delay_ms": 1, "tool_calls": 0})
    answer = httpx.post(f"{server}/api/konsole/{session}/turns", json={"message": "over there", "lane": lane})
    assert answer.status_code == 200, answer.text
    started = answer.json()
    assert set(started) == {"turn", "session", "lane", "first_seq"}
    assert (started["session"], started["lane"]) == (session, lane)
    events = follow_until(server, session, started["first_seq"] - 1,
                          lambda e: e.get("turn") == started["turn"] and e["type"] in TERMINAL)
    mine = [e for e in events if e.get("turn") == started["turn"]]
    assert mine[0]["seq"] == started["first_seq"] and mine[0]["type"] in ("turn.started", "turn.queued")
    assert mine[-1]["type"] == "turn.completed" and all(e["lane"] == lane for e in mine)
    assert sum(e["type"] == "text.delta" for e in mine) >= 40
    empty = httpx.post(f"{server}/api/konsole/{session}/turns", json={"message": "", "lane": lane})
    assert empty.status_code == 422


def test_main_lane_queues_and_rejects(server: str) -> None:
    session = _name("queue")
    create_session(server, session, options={"deltas": 150, "delay_ms": 10, "thinking": False, "tool_calls": 0})
    first_events: list[dict[str, Any]] = []
    seen = threading.Event()
    first = threading.Thread(target=lambda: first_events.extend(run_turn(
        server, session, "first", on_event=on_type("text.delta", seen))))
    first.start()
    assert seen.wait(20)
    rejected = httpx.post(f"{server}/api/konsole/{session}/stream", params={"if_busy": "reject"},
                          json={"message": "not now"})
    assert rejected.status_code == 409
    assert rejected.json()["error"]["code"] == "turn_in_progress"
    second = run_turn(server, session, "second")
    first.join(20)
    assert second[0]["type"] == "turn.queued" and second[0]["data"]["position"] == 1
    assert second[1]["type"] == "turn.started"
    assert second[-1]["type"] == "turn.completed"
    assert first_events[-1]["type"] == "turn.completed"
    # The second turn started only after the first ended.
    assert second[1]["seq"] > first_events[-1]["seq"]
    messages = httpx.get(f"{server}/api/konsole/{session}/messages").json()["messages"]
    users = [m["text"] for m in messages if m["role"] == "user"]
    assert users == ["first", "second"]


def test_provider_failure_is_a_readable_turn_failed_and_server_keeps_serving(server: str) -> None:
    session = _name("fail")
    create_session(server, session, options={"deltas": 20, "delay_ms": 0, "fail_at": 5})
    events = run_turn(server, session, "this will fail")
    assert events[-1]["type"] == "turn.failed"
    assert "scripted failure at delta 5" in events[-1]["data"]["error"]
    assert "timing" in events[-1]["data"]
    texts = [e for e in events if e["type"] == "text.delta"]
    assert len(texts) == 5
    other = _name("after-fail")
    create_session(server, other, options={"deltas": 5, "delay_ms": 0})
    assert run_turn(server, other, "still there?")[-1]["type"] == "turn.completed"


def test_session_is_created_on_first_use_with_the_default_provider(server: str) -> None:
    session = _name("auto")
    assert httpx.get(f"{server}/api/konsole/{session}/state").status_code == 404
    events = run_turn(server, session, "hello")
    assert events[0]["data"]["provider"] == "scripted"
    sessions = httpx.get(f"{server}/api/konsole").json()["sessions"]
    listed = next(s for s in sessions if s["name"] == session)
    assert listed["provider"] == "scripted" and listed["model"] and listed["agent_state"] == "idle"


def test_messages_and_state_fold_the_stream(server: str) -> None:
    session = _name("fold")
    create_session(server, session, options={"deltas": 40, "delay_ms": 0})
    events = run_turn(server, session, "fold me")
    body = httpx.get(f"{server}/api/konsole/{session}/messages").json()
    assert body["seq"] == events[-1]["seq"]
    kinds = [m["kind"] for m in body["messages"]]
    assert kinds[0] == "message" and kinds[-1] == "turn.completed"
    assert kinds.count("text") == 2 and kinds.count("thinking") == 1
    assert body["todos"] and all(t["status"] == "completed" for t in body["todos"])
    state = httpx.get(f"{server}/api/konsole/{session}/state").json()
    assert state["head"] == events[-1]["seq"] and state["epoch"]
    assert state["usage"]["output_tokens"] > 0


def test_fold_on_catch_up_sends_finished_blocks_as_one_done(server: str) -> None:
    session = _name("catchup")
    create_session(server, session, options={"deltas": 300, "delay_ms": 0})
    events = run_turn(server, session, "fold on replay")
    folded = follow_until(server, session, 0, lambda e: e.get("seq") is not None and e["type"] in TERMINAL,
                          params={"fold": 1})
    journaled = [e for e in folded if e.get("seq") is not None]
    assert not any(e["type"] in ("text.delta", "thinking.delta") for e in journaled)
    seqs = [e["seq"] for e in journaled]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert comparable(transcript_of(journaled)) == comparable(transcript_of(events))
    # Every other event is unchanged, byte for byte in content.
    by_seq = {e["seq"]: e for e in events}
    assert all(by_seq[e["seq"]] == e for e in journaled if e["seq"] in by_seq)


def test_fold_keeps_live_deltas_of_a_running_block(server: str) -> None:
    session = _name("catchup-live")
    create_session(server, session, options={"deltas": 200, "delay_ms": 10, "thinking": False, "tool_calls": 0})
    seen = threading.Event()
    thread = threading.Thread(target=lambda: run_turn(
        server, session, "live", on_event=on_type("text.delta", seen)))
    thread.start()
    assert seen.wait(20)
    folded = follow_until(server, session, 0, lambda e: e.get("seq") is not None and e["type"] in TERMINAL,
                          params={"fold": 1})
    thread.join(20)
    deltas = [e for e in folded if e["type"] == "text.delta"]
    assert deltas, "the block still open at subscribe time comes as its deltas"
    text = "".join(e["data"]["text"] for e in deltas if e["data"]["block"] == 0)
    done = next(e for e in folded if e["type"] == "text.done" and e["data"]["block"] == 0)
    assert text == done["data"]["text"]


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"message": ""}, 422, "empty_message"),
    ({"message": "   "}, 422, "empty_message"),
    ({"message": "x" * 100_001}, 413, "message_too_large"),
    ({"message": 5}, 422, "validation_error"),
    ({}, 422, "validation_error"),
    ({"message": "hi", "extra": 1}, 422, "validation_error"),
])
def test_bad_messages_are_refused_and_nothing_is_written(server: str, body: dict[str, object], status: int,
                                                         code: str) -> None:
    session = _name("bad")
    create_session(server, session)
    head = httpx.get(f"{server}/api/konsole/{session}/state").json()["head"]
    response = httpx.post(f"{server}/api/konsole/{session}/stream", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert httpx.get(f"{server}/api/konsole/{session}/state").json()["head"] == head


def test_bad_sessions_and_providers(server: str) -> None:
    bad_name = httpx.post(f"{server}/api/konsole/has%20space/stream", json={"message": "hi"})
    assert bad_name.status_code == 422 and bad_name.json()["error"]["code"] == "bad_session_name"
    unknown = httpx.post(f"{server}/api/konsole", json={"name": _name("p"), "provider": "nope"})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["field"] == "provider" and "nope" in unknown.json()["error"]["message"]
    options = httpx.post(f"{server}/api/konsole", json={"name": _name("o"), "options": {"deltas": "many"}})
    assert options.status_code == 422 and "deltas" in options.json()["error"]["field"]
    name = _name("dup")
    create_session(server, name)
    assert httpx.post(f"{server}/api/konsole", json={"name": name}).status_code == 409
    assert httpx.post(f"{server}/api/konsole/{name}/cancel").status_code == 409
    assert httpx.get(f"{server}/api/konsole/nobody-{name}/events").status_code == 404
    assert httpx.post(f"{server}/api/konsole/{name}/cancel", json={"turn": "t_nope"}).status_code == 404


def test_missing_api_key_is_refused_at_session_creation(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    response = httpx.post(f"{server}/api/konsole", json={"name": _name("k"), "provider": "anthropic"})
    assert response.status_code == 422
    assert "ANTHROPIC_API_KEY" in response.json()["error"]["message"]


def test_task_choice_becomes_the_next_user_message(server: str) -> None:
    session = _name("choose")
    create_session(server, session, options={"deltas": 5, "delay_ms": 0})
    run_turn(server, session, "make me a card")
    tasks = httpx.get(f"{server}/api/tasks", params={"limit": 1000}).json()["tasks"]
    card = next(t for t in tasks if t["session"] == session)
    value = card["context"]["choices"][0]["value"]
    response = httpx.post(f"{server}/api/tasks/{card['id']}/choose", json={"value": value})
    assert response.status_code == 200, response.text
    turn_id = response.json()["turn"]["id"]
    events = follow_until(server, session, 0, lambda e: e.get("turn") == turn_id and e["type"] in TERMINAL)
    started = next(e for e in events if e.get("turn") == turn_id and e["type"] == "turn.started")
    assert started["data"]["message"] == value
    assert httpx.get(f"{server}/api/tasks/{card['id']}").json()["context"]["chosen"] == value
    wrong = httpx.post(f"{server}/api/tasks/{card['id']}/choose", json={"value": "not a choice"})
    assert wrong.status_code == 422


def test_restart_marks_running_turns_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "restart.db"
    with running_app(journal=f"sqlite:///{db}") as (url, _):
        create_session(url, "long", options={"deltas": 100000, "delay_ms": 5})
        seen = threading.Event()

        def reader() -> None:
            try:
                run_turn(url, "long", "never ends", on_event=on_type("text.delta", seen))
            except httpx.HTTPError:
                pass

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        assert seen.wait(20)
    thread.join(10)
    with running_app(journal=f"sqlite:///{db}") as (url, _):
        events = follow_until(url, "long", 0, lambda e: e.get("seq") is not None and e["type"] in TERMINAL)
        assert events[-1]["type"] == "turn.failed"
        assert events[-1]["data"]["error"] == "interrupted"
        eventually(lambda: httpx.get(f"{url}/api/konsole/long/state").json()["running"] == [])
        # The lane is free again: a new turn starts at once even with if_busy=reject.
        with httpx.stream("POST", f"{url}/api/konsole/long/stream", params={"if_busy": "reject"},
                          json={"message": "again"}, timeout=30) as response:
            assert response.status_code == 200
            first = next(e for e in sse_events(response) if e.get("seq") is not None)
        assert first["type"] == "turn.started"
        assert httpx.post(f"{url}/api/konsole/long/cancel").status_code == 200
