"""AG-UI over HTTP (`POST /api/agui`), driven by @ag-ui/client's own HttpAgent: the messages and state
it builds equal the journal's turn; the run resumes exactly with `Last-Event-ID`; cancel and failure
end the run the protocol's way; bad input gets a clear 4xx and writes nothing."""

from __future__ import annotations

import random
import time

import httpx
import orjson
import pytest

from agentwire.client import SseMessage
from tests.support.eventually import eventually
from tests.support.protocols import (
    AUTH,
    TOKEN,
    agui_parts,
    config,
    finish_node,
    journal_parts,
    port_of,
    run_node,
    start_node,
    turn_events,
    ui_message_parts,
    unique,
)
from tests.support.proxy import TcpProxy
from tests.support.sse import SseStream, parse_sse
from tests.support.turns import create_session, follow_until


def _body(thread: str, run: str, message: str = "what changed today?") -> dict[str, object]:
    return {"threadId": thread, "runId": run, "messages": [{"id": "u1", "role": "user", "content": message}]}


def _turn_of(url: str, session: str, run: str) -> str:
    """The one turn a run started: the `turn.started` whose origin names the run."""
    head = httpx.get(f"{url}/api/konsole/{session}/state", headers=AUTH).raise_for_status().json()["head"]
    events = follow_until(url, session, 0, lambda e: e.get("seq", 0) >= head, headers=AUTH)
    started = [e for e in events if e["type"] == "turn.started" and e["data"].get("origin") == {
        "protocol": "ag-ui", "run_id": run}]
    assert len(started) == 1, f"run {run} started {len(started)} turns"
    return str(started[0]["turn"])


def test_http_agent_builds_exactly_the_journal_turn(app_url: str) -> None:
    session = unique("agui")
    create_session(app_url, session, AUTH, options={"deltas": 20, "delay_ms": 0, "tool_calls": 2})
    result, stderr = run_node("agui.mjs", config(url=app_url, token=TOKEN, threadId=session, runId="run-1",
                                                 message="compare everything", state={"mine": 1}))
    assert "error" not in result, result
    assert "[ag-ui]" not in stderr  # nothing was stripped or translated on the way in: the events conform
    assert result["events"][0] == "RUN_STARTED" and result["events"][-1] == "RUN_FINISHED"
    assert result["outcome"] == "success" and result["runError"] is None
    for kind in ("REASONING_START", "REASONING_MESSAGE_CONTENT", "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT",
                 "TEXT_MESSAGE_END", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT",
                 "STATE_SNAPSHOT", "CUSTOM"):
        assert kind in result["events"], kind

    turn = _turn_of(app_url, session, "run-1")
    events = turn_events(app_url, session, turn, AUTH)
    expected = journal_parts(events, turn)
    assert [p[0] for p in expected].count("tool") == 6 and ("thinking" in [p[0] for p in expected])
    assert agui_parts(result["newMessages"]) == expected
    # The state: the client's own key kept, agentwire's todos and agent state set.
    todos = [e for e in events if e["type"] == "todo.updated"][-1]["data"]["todos"]
    assert result["state"]["mine"] == 1
    assert result["state"]["todos"] == todos
    assert result["state"]["agent"]["agent_state"] == "idle"
    # The task card the agent published, as the board has it.
    (card,) = [c["value"] for c in result["custom"] if c["name"] == "agentwire.task"]
    board = httpx.get(f"{app_url}/api/tasks/{card['id']}", headers=AUTH).raise_for_status().json()
    assert {key: board[key] for key in ("id", "title", "status", "tags", "session")} == {
        "id": card["id"], "title": card["title"], "status": card["status"], "tags": card["tags"], "session": session}


def test_runs_on_one_agent_keep_their_own_messages(app_url: str) -> None:
    """The scripted agent reuses its call ids every turn; AG-UI ids are the turn's, so the second run's
    tool calls are its own and not folded into the first run's messages."""
    session = unique("agui-twice")
    create_session(app_url, session, AUTH, options={"deltas": 5, "delay_ms": 0})
    result, _ = run_node("agui.mjs", config(url=app_url, token=TOKEN, threadId=session, runId="chat",
                                            messages=["first question", "second question"]))
    first, second = result["runs"]
    for run, name in ((first, "chat-1"), (second, "chat-2")):
        assert run["outcome"] == "success", run
        turn = _turn_of(app_url, session, name)
        assert agui_parts(run["newMessages"]) == journal_parts(turn_events(app_url, session, turn, AUTH), turn)


def test_a_turn_started_over_ag_ui_is_the_session_stream_everywhere(app_url: str) -> None:
    """The frames' ids are the session's seqs, and the running turn is visible to the AI SDK view."""
    session = unique("agui-seen")
    create_session(app_url, session, AUTH, options={"deltas": 300, "delay_ms": 10})
    with SseStream(port_of(app_url), "/api/agui", AUTH, method="POST",
                   body=orjson.dumps(_body(session, "run-seen"))) as stream:
        stream.read_until(lambda m: "TEXT_MESSAGE_CONTENT" in m.data)
        # While it runs: useChat's resume finds it and rebuilds the whole message so far and on.
        chat, _ = run_node("aisdk.mjs", "resume", config(url=app_url, token=TOKEN, id=session))
        stream.read_to_eof(30)
    turn = _turn_of(app_url, session, "run-seen")
    events = turn_events(app_url, session, turn, AUTH)
    assert chat["status"] == 200 and chat["message"]["id"] == turn
    assert ui_message_parts(chat["message"]) == journal_parts(events, turn)
    seqs = {e["seq"] for e in events if e.get("turn") == turn}
    frame_seqs = {int(m.id.split(".")[0]) for m in stream.messages if m.id is not None}
    assert frame_seqs <= seqs and max(frame_seqs) == max(seqs)


def _frames(messages: list[SseMessage]) -> list[tuple[str, str]]:
    return [(m.id, m.data) for m in messages if m.id is not None]


def test_cut_at_random_points_and_resumed_gives_every_frame_once(app_url: str) -> None:
    """Each connection through the proxy is cut after a random number of bytes, and the client posts
    the same run again with `Last-Event-ID` (none if it got no frame yet). Together the pieces are the
    whole run, each frame once, and the run started one turn."""
    port = port_of(app_url)
    rng = random.Random(1414)
    for attempt in range(3):
        session = unique(f"agui-cut{attempt}")
        create_session(app_url, session, AUTH, options={"deltas": 60, "delay_ms": 4, "tool_calls": 2})
        run = f"run-cut-{attempt}"
        body = orjson.dumps(_body(session, run))
        got: list[tuple[str, str]] = []
        with TcpProxy(port) as proxy:
            proxy.plan_cuts([rng.randrange(0, 9000) for _ in range(8)])
            for _ in range(40):
                headers = dict(AUTH)
                if got:
                    headers["last-event-id"] = got[-1][0]
                with SseStream(proxy.port, "/api/agui", headers, method="POST", body=body) as stream:
                    stream.read_to_eof(30)
                assert stream.status in (None, 200, 204), stream.head
                got += _frames(stream.messages)
                if got and orjson.loads(got[-1][1])["type"] == "RUN_FINISHED":
                    break
            assert proxy.cuts_done >= 3
        turn = _turn_of(app_url, session, run)
        events = turn_events(app_url, session, turn, AUTH)
        first = min(e["seq"] for e in events if e.get("turn") == turn)
        # The whole run, replayed from zero frames of its first event, is what the pieces add up to.
        with SseStream(port, "/api/agui", {**AUTH, "last-event-id": f"{first}.0"}, method="POST",
                       body=body) as whole:
            whole.read_to_eof(30)
        reference = _frames(whole.messages)
        assert [orjson.loads(d)["type"] for _, d in reference][::len(reference) - 1] == ["RUN_STARTED",
                                                                                        "RUN_FINISHED"]
        assert got == reference


def test_retrying_the_same_run_starts_no_second_turn(app_url: str) -> None:
    session = unique("agui-retry")
    create_session(app_url, session, AUTH, options={"deltas": 5, "delay_ms": 0})
    body = _body(session, "run-twice")
    first = httpx.post(f"{app_url}/api/agui", json=body, headers=AUTH, timeout=30)
    again = httpx.post(f"{app_url}/api/agui", json=body, headers=AUTH, timeout=30)
    assert first.status_code == again.status_code == 200
    assert first.headers["x-agentwire-turn"] == again.headers["x-agentwire-turn"]
    assert first.text.replace("retry: 1000\n\n", "") == again.text.replace("retry: 1000\n\n", "")
    _turn_of(app_url, session, "run-twice")  # exactly one turn.started for the run
    # Resumed inside one event's frames (after TOOL_CALL_START, before its ARGS), exactly the rest comes.
    frames = _frames(parse_sse(first.content))
    index = next(i for i, (id, data) in enumerate(frames) if id.endswith(".1") and "TOOL_CALL_START" in data)
    rest = httpx.post(f"{app_url}/api/agui", json=body, headers={**AUTH, "last-event-id": frames[index][0]},
                      timeout=30)
    assert _frames(parse_sse(rest.content)) == frames[index + 1:]
    # Resumed after its very last frame, nothing is left.
    done = httpx.post(f"{app_url}/api/agui", json=body, headers={**AUTH, "last-event-id": frames[-1][0]}, timeout=30)
    assert done.status_code == 204


def test_cancel_ends_the_run_as_cancelled_with_its_messages_closed(app_url: str) -> None:
    session = unique("agui-cancel")
    create_session(app_url, session, AUTH, options={"deltas": 400, "delay_ms": 10})
    process = start_node("agui.mjs", config(url=app_url, token=TOKEN, threadId=session, runId="run-cancel",
                                            message="long one"))
    try:
        eventually(lambda: httpx.get(f"{app_url}/api/konsole/{session}/state", headers=AUTH).json()["agent_state"]
                 == "writing", timeout=30)
        time.sleep(0.2)
        cancelled = httpx.post(f"{app_url}/api/konsole/{session}/cancel", headers=AUTH)
        assert cancelled.status_code == 200, cancelled.text
        result, _ = finish_node(process)
    finally:
        process.kill()
    assert result["outcome"] == "cancelled" and result["runError"] is None
    # The verifier accepted RUN_FINISHED, so the open text message was closed first.
    assert result["events"][-2:] == ["TEXT_MESSAGE_END", "RUN_FINISHED"]
    text = [m["content"] for m in result["newMessages"] if m["role"] == "assistant" and m.get("content")]
    turn = _turn_of(app_url, session, "run-cancel")
    assert [p for p in journal_parts(turn_events(app_url, session, turn, AUTH), turn) if p[0] == "text"] == [
        ("text", text[0])]


def test_a_failed_turn_is_a_run_error(app_url: str) -> None:
    session = unique("agui-fail")
    create_session(app_url, session, AUTH, options={"deltas": 10, "delay_ms": 0, "fail_at": 4})
    result, _ = run_node("agui.mjs", config(url=app_url, token=TOKEN, threadId=session, runId="run-fail",
                                            message="break"))
    assert result["runError"]["code"] == "turn_failed"
    assert "scripted failure" in result["runError"]["message"]
    assert result["events"][-1] == "RUN_ERROR" and "RUN_FINISHED" not in result["events"]


@pytest.mark.parametrize(("body", "field"), [
    ({"runId": "r", "messages": []}, "threadId"),
    ({"threadId": "t", "messages": []}, "runId"),
    ({"threadId": "t", "runId": "r", "messages": "hello"}, "messages"),
    ({"threadId": "t", "runId": "r", "messages": [{"id": "1", "role": "robot", "content": "hi"}]}, "messages.0"),
    ({"threadId": "t", "runId": "r", "messages": [{"id": "1", "role": "assistant", "content": "hi"}]}, "messages"),
    ({"threadId": "t", "runId": "r", "messages": [{"id": "1", "role": "user", "content": "  "}]}, "messages"),
    ({"threadId": "no spaces!", "runId": "r", "messages": [{"id": "1", "role": "user", "content": "hi"}]},
     "threadId"),
    ({"threadId": "t", "runId": "", "messages": [{"id": "1", "role": "user", "content": "hi"}]}, "runId"),
])
def test_malformed_run_input_is_a_422_and_writes_nothing(app_url: str, body: dict[str, object], field: str) -> None:
    if "threadId" in body and body["threadId"] == "t":
        body = {**body, "threadId": unique("agui-bad")}
    response = httpx.post(f"{app_url}/api/agui", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"].startswith(field) and error["message"]
    if isinstance(body.get("threadId"), str) and body["threadId"] != "no spaces!":
        assert httpx.get(f"{app_url}/api/konsole/{body['threadId']}", headers=AUTH).status_code == 404


def test_bad_resumes_are_refused(app_url: str) -> None:
    session = unique("agui-resume")
    create_session(app_url, session, AUTH, options={"deltas": 3, "delay_ms": 0})
    first = httpx.post(f"{app_url}/api/agui", json=_body(session, "run-a"), headers=AUTH, timeout=30)
    assert first.status_code == 200
    some_id = [line[4:] for line in first.text.splitlines() if line.startswith("id: ")][3]

    def post(body: dict[str, object], last_event_id: str) -> httpx.Response:
        return httpx.post(f"{app_url}/api/agui", json=body, headers={**AUTH, "last-event-id": last_event_id})

    unknown = post(_body(unique("agui-nothread"), "run-a"), some_id)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "session_not_found"
    # A frame of another run of the thread is refused, not quietly served as this run.
    other_run = post(_body(session, "run-never"), some_id)
    assert other_run.status_code == 409 and other_run.json()["error"]["code"] == "run_mismatch"
    garbage = post(_body(session, "run-a"), "12;drop")
    assert garbage.status_code == 400 and garbage.json()["error"]["field"] == "Last-Event-ID"
    beyond = post(_body(session, "run-a"), "999999")
    assert beyond.status_code == 404 and beyond.json()["error"]["code"] == "position_not_found"
    # Before the session's first turn, there is no turn to resume.
    before = post(_body(session, "run-a"), "1")
    assert before.status_code == 404 and before.json()["error"]["code"] == "position_not_found"


def test_http_agent_follows_a_turn_started_by_use_chat(app_url: str) -> None:
    """A turn started with POST /api/chat, followed by HttpAgent from zero frames of its first event
    (`Last-Event-ID: <seq>.0`): its verifier accepts the whole run, and the messages equal the turn."""
    session = unique("agui-follow")
    create_session(app_url, session, AUTH, options={"deltas": 200, "delay_ms": 5})
    body = orjson.dumps({"id": session, "messages": [{"id": "u1", "role": "user",
                                                      "parts": [{"type": "text", "text": "from useChat"}]}]})
    with SseStream(port_of(app_url), "/api/chat", AUTH, method="POST", body=body) as chat:
        start = chat.read_until(lambda m: '"type":"start"' in m.data)
        result, stderr = run_node("agui.mjs", config(url=app_url, token=TOKEN, threadId=session, runId="watching",
                                                     message="(not sent: following)", lastEventId=f"{start.id}.0"))
        chat.read_to_eof(30)
    assert "error" not in result and "[ag-ui]" not in stderr, result
    assert result["events"][0] == "RUN_STARTED" and result["outcome"] == "success"
    turn = chat.headers["x-agentwire-turn"]
    assert agui_parts(result["newMessages"]) == journal_parts(turn_events(app_url, session, turn, AUTH), turn)
    # Following started nothing: the session has the one turn useChat started.
    state = httpx.get(f"{app_url}/api/konsole/{session}/messages", headers=AUTH).json()
    assert [m["turn"] for m in state["messages"] if m["kind"] == "message"] == [turn]


def test_http_agent_reports_the_error_of_a_refused_run(app_url: str) -> None:
    result, _ = run_node("agui.mjs", config(url=app_url, token=TOKEN, threadId="bad thread", runId="r",
                                            message="hi"))
    assert result["status"] == 422 and "validation_error" in result["error"] and "threadId" in result["error"]
