"""The AI SDK UI message stream (`POST /api/chat`, `GET /api/chat/{id}/stream`), read with the `ai`
package's own code: every chunk validates against `uiMessageChunkSchema`, and the message that
`readUIMessageStream` (and useChat's engine, over a cut connection) builds equals the journal's turn."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from tests.support.eventually import eventually
from tests.support.protocols import (
    AUTH,
    TOKEN,
    config,
    data_parts,
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
from tests.support.turns import create_session


def _state(url: str, session: str) -> dict[str, object]:
    state: dict[str, object] = httpx.get(f"{url}/api/konsole/{session}/state", headers=AUTH).raise_for_status().json()
    return state


def _streams_open(url: str) -> int:
    count: int = httpx.get(f"{url}/healthz", headers=AUTH).raise_for_status().json()["streams_open"]
    return count


def _turns(url: str, session: str) -> list[str]:
    messages = httpx.get(f"{url}/api/konsole/{session}/messages", headers=AUTH).raise_for_status().json()["messages"]
    return [entry["turn"] for entry in messages if entry["kind"] == "message"]


def _chat_body(session: str, parts: list[dict[str, object]], **extra: object) -> dict[str, object]:
    return {"id": session, "trigger": "submit-message", "messages": [{"id": "u1", "role": "user", "parts": parts}],
            **extra}


def test_read_ui_message_stream_builds_exactly_the_journal_turn(app_url: str) -> None:
    session = unique("chat")
    create_session(app_url, session, AUTH, options={"deltas": 20, "delay_ms": 0, "tool_calls": 2})
    result, _ = run_node("aisdk.mjs", "read", config(url=app_url, token=TOKEN, id=session,
                                                          message="compare everything"))
    assert result["status"] == 200 and result["header"] == "v1"
    assert result["invalid"] == [] and result["errors"] == []  # every chunk is a valid UIMessageChunk
    types = result["chunkTypes"]
    assert types[:2] == ["start", "start-step"] and types[-2:] == ["finish-step", "finish"]
    assert types.count("start-step") == types.count("finish-step") == 2  # one step per model call
    message = result["message"]
    (turn,) = _turns(app_url, session)
    events = turn_events(app_url, session, turn, AUTH)
    assert message["id"] == turn and message["role"] == "assistant"
    assert ui_message_parts(message) == journal_parts(events, turn)
    assert [p[0] for p in ui_message_parts(message)].count("tool") == 6
    # Todos: one data part, replaced as the list changed, holding the journal's last list.
    (todos,) = data_parts(message, "todos")
    assert todos["data"]["todos"] == [e for e in events if e["type"] == "todo.updated"][-1]["data"]["todos"]
    # The task card, as the board has it; the agent state is transient, so not in the message.
    (task,) = data_parts(message, "task")
    board = httpx.get(f"{app_url}/api/tasks/{task['id']}", headers=AUTH).raise_for_status().json()
    assert (task["data"]["title"], task["data"]["status"], board["session"]) == (board["title"], board["status"],
                                                                                  session)
    assert data_parts(message, "state") == [] and "data-state" in types
    done = events[-1]["data"]
    assert message["metadata"] == {"session": session, "turn": turn, "lane": "main", "stop_reason": "end_turn",
                                   "usage": done["usage"], "timing": done["timing"]}


def test_use_chat_cut_mid_turn_resumes_the_whole_message(app_url: str) -> None:
    """useChat's engine with DefaultChatTransport: the POST's stream is cut mid-turn by a proxy, the
    chat sees a disconnect, `resumeStream()` GETs /api/chat/{id}/stream, and the replay rebuilds the
    whole message: one user message, one assistant message, equal to the journal's turn."""
    session = unique("chat-cut")
    create_session(app_url, session, AUTH, options={"deltas": 300, "delay_ms": 8, "tool_calls": 1})
    with TcpProxy(port_of(app_url)) as proxy:
        proxy.plan_cuts([6000])
        result, _ = run_node("aisdk.mjs", "chat", config(url=f"http://127.0.0.1:{proxy.port}", resumeUrl=app_url,
                                                         token=TOKEN, id=session, message="a long answer"))
        assert proxy.cuts_done == 1
    # Node's fetch reports the cut as "terminated", which the chat does not take for a network
    # disconnect (a browser's "network error" it does, and resumes by itself); here we resume by hand.
    assert result["afterSend"] == {"status": "error", "error": "terminated"} and result["resumed"]
    assert result["finishes"][0]["isError"] is True
    assert result["finishes"][-1] == {"isDisconnect": False, "isError": False, "finishReason": "stop"}
    assert result["status"] == "ready"
    (turn,) = _turns(app_url, session)
    user, assistant = result["messages"]
    assert user["role"] == "user" and assistant["id"] == turn
    assert ui_message_parts(assistant) == journal_parts(turn_events(app_url, session, turn, AUTH), turn)
    assert [part["type"] for part in assistant["parts"]].count("step-start") == 2  # the replay did not double


def test_resume_is_204_without_a_running_turn_and_404_for_an_unknown_session(app_url: str) -> None:
    session = unique("chat-idle")
    create_session(app_url, session, AUTH, options={"deltas": 3, "delay_ms": 0})
    assert httpx.get(f"{app_url}/api/chat/{session}/stream", headers=AUTH).status_code == 204
    run_node("aisdk.mjs", "read", config(url=app_url, token=TOKEN, id=session, message="quick"))
    after, _ = run_node("aisdk.mjs", "resume", config(url=app_url, token=TOKEN, id=session))
    assert after["status"] == 204
    unknown = httpx.get(f"{app_url}/api/chat/{unique('nobody')}/stream", headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "session_not_found"
    bad = httpx.get(f"{app_url}/api/chat/no%20spaces/stream", headers=AUTH)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "path.id"


def test_resume_with_last_event_id_continues_exactly(app_url: str) -> None:
    """agentwire's extension: a client that kept the frame ids continues after the last one it got."""
    session = unique("chat-exact")
    create_session(app_url, session, AUTH, options={"deltas": 60, "delay_ms": 3})
    port = port_of(app_url)
    body = orjson.dumps(_chat_body(session, [{"type": "text", "text": "go"}]))
    with TcpProxy(port) as proxy:
        proxy.plan_cuts([3500])
        with SseStream(proxy.port, "/api/chat", AUTH, method="POST", body=body) as cut:
            cut.read_to_eof(30)
    head = [(m.id, m.data) for m in cut.messages]
    assert head and head[-1][1] != "[DONE]"
    with SseStream(port, f"/api/chat/{session}/stream", {**AUTH, "last-event-id": str(head[-1][0])}) as rest:
        rest.read_to_eof(30)
    with SseStream(port, f"/api/chat/{session}/stream", {**AUTH, "last-event-id": f"{head[0][0]}.0"}) as whole:
        whole.read_to_eof(30)
    assert rest.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert head + [(m.id, m.data) for m in rest.messages] == [(m.id, m.data) for m in whole.messages]
    assert whole.messages[-1].data == "[DONE]"


def test_cancel_aborts_the_message_and_a_client_abort_does_not_cancel(app_url: str) -> None:
    session = unique("chat-cancel")
    create_session(app_url, session, AUTH, options={"deltas": 400, "delay_ms": 10})
    # A client that goes away (useChat's stop(), a closed tab) leaves the turn running: it resumes.
    body = orjson.dumps(_chat_body(session, [{"type": "text", "text": "go on"}]))
    with SseStream(port_of(app_url), "/api/chat", AUTH, method="POST", body=body) as gone:
        gone.read_until(lambda m: '"text-delta"' in m.data)
    time.sleep(0.3)
    assert _state(app_url, session)["agent_state"] == "writing"
    eventually(lambda: _streams_open(app_url) == 0)  # the client that left is gone
    process = start_node("aisdk.mjs", "resume", config(url=app_url, token=TOKEN, id=session))
    try:
        eventually(lambda: _streams_open(app_url) == 1)  # the resumed stream is open: cancel now
        assert httpx.post(f"{app_url}/api/konsole/{session}/cancel", headers=AUTH).status_code == 200
        result, _ = finish_node(process)
    finally:
        process.kill()
    assert result["invalid"] == [] and result["chunkTypes"][-3:] == ["text-end", "finish-step", "abort"]
    (turn,) = _turns(app_url, session)
    events = turn_events(app_url, session, turn, AUTH)
    assert events[-1]["type"] == "turn.cancelled"
    assert ui_message_parts(result["message"]) == journal_parts(events, turn)


def test_a_failed_turn_is_an_error_chunk(app_url: str) -> None:
    session = unique("chat-fail")
    create_session(app_url, session, AUTH, options={"deltas": 10, "delay_ms": 0, "fail_at": 4})
    result, _ = run_node("aisdk.mjs", "read", config(url=app_url, token=TOKEN, id=session, message="break"))
    assert result["chunkTypes"][-2:] == ["error", "finish"]
    assert len(result["errors"]) == 1 and "scripted failure" in result["errors"][0]


@pytest.mark.parametrize(("body", "code"), [
    ({"trigger": "submit-message", "messages": []}, "validation_error"),  # no id
    (_chat_body("X", [{"type": "file", "url": "data:,", "mediaType": "text/plain"}]), "no_user_text"),
    (_chat_body("X", [{"type": "text", "text": "   "}]), "no_user_text"),
    ({"id": "X", "messages": [{"id": "a", "role": "assistant", "parts": [{"type": "text", "text": "hi"}]}]},
     "no_user_text"),
    ({"id": "X", "messages": []}, "no_user_text"),
    ({"id": "X", "messages": [{"id": "a", "role": "user"}]}, "validation_error"),  # no parts
    (_chat_body("X", [{"type": "text", "text": "hi"}], trigger="resume-everything"), "validation_error"),
    (_chat_body("no spaces!", [{"type": "text", "text": "hi"}]), "validation_error"),
])
def test_bad_chat_requests_are_a_422_and_write_nothing(app_url: str, body: dict[str, object], code: str) -> None:
    session = unique("chat-bad")
    if body.get("id") == "X":
        body = {**body, "id": session}
    response = httpx.post(f"{app_url}/api/chat", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert httpx.get(f"{app_url}/api/konsole/{session}", headers=AUTH).status_code == 404


def test_a_turn_from_the_console_api_is_seen_by_use_chat(app_url: str) -> None:
    """A turn started with POST /api/konsole/{s}/stream (the dashboard's way) is resumed by useChat."""
    session = unique("chat-dash")
    create_session(app_url, session, AUTH, options={"deltas": 300, "delay_ms": 10})
    port = port_of(app_url)
    with SseStream(port, f"/api/konsole/{session}/stream", AUTH, method="POST",
                   body=orjson.dumps({"message": "from the dashboard"})) as dashboard:
        dashboard.read_until(lambda m: m.event == "text.delta")
        eventually(lambda: _state(app_url, session)["agent_state"] == "writing")
        result, _ = run_node("aisdk.mjs", "resume", config(url=app_url, token=TOKEN, id=session))
        dashboard.read_to_eof(30)
    (turn,) = _turns(app_url, session)
    assert result["message"]["id"] == turn
    assert ui_message_parts(result["message"]) == journal_parts(turn_events(app_url, session, turn, AUTH), turn)
    assert [m.id for m in parse_sse(bytes(dashboard.body)) if m.id][-1] == str(
        turn_events(app_url, session, turn, AUTH)[-1]["seq"])
