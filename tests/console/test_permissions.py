"""Tool-permission requests with the scripted agent (session option `ask_permission`): the request is
journaled and listed in the state while the agent waits; `POST …/permissions/{id}` answers it once
(409 after, 404 for an id never asked, 422 for a bad body); no answer in time is a deny with its
reason; a cancelled turn settles what it asked; "always allow" holds for the session, also after a
restart. The same with the real Claude Code: tests/providers/test_claude_steering.py; over the WebSocket:
tests/transport/test_ws.py; from another node on Redis: tests/cluster/test_multinode.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from agentwire.console.permissions import allows, command_prefix, rule_for
from tests.support.server import Served, ServerFactory
from tests.support.turns import AskingTurn, create_session, of, run_turn

JSON = dict[str, Any]
OPTIONS = {"ask_permission": True, "deltas": 6, "delay_ms": 0, "tool_calls": 1}


def test_the_agent_waits_for_the_answer_and_the_request_is_in_the_state(server: Served,
                                                                        pool: ThreadPoolExecutor) -> None:
    create_session(server.url, "wait", headers=server.auth, options=OPTIONS)
    asking = AskingTurn(server.url, "wait", "Take notes", pool, headers=server.auth)
    data = asking.request["data"]
    assert data["tool"] == "Write" and data["input"]["file_path"] == "notes/take-notes.md"
    assert data["turn"] == asking.request["turn"] and data["call_id"] == "call_write_1"
    assert data["rule"] == {"tool": "Write"} and data["expires_at"] > asking.request["ts"] + 590_000
    state = server.http.get("/api/konsole/wait/state").json()
    assert state["agent_state"] == "waiting_for_permission"
    assert [(p["request_id"], p["status"], p["tool"]) for p in state["permissions"]] == [(asking.id, "pending",
                                                                                         "Write")]
    listed = {s["name"]: s for s in server.http.get("/api/konsole").json()["sessions"]}
    assert listed["wait"]["pending_permissions"] == 1
    # Waiting: the write has not happened, the turn goes nowhere.
    assert not asking.turn.done()
    transcript = server.http.get("/api/konsole/wait/messages").json()["messages"]
    write = next(e for e in transcript if e["kind"] == "tool" and e["name"] == "Write")
    assert not write["done"]

    answer = asking.answer(decision="allow")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"session": "wait", "request_id": asking.id, "decision": "allow", "by": "user",
                             "message": "", "seq": asking.request["seq"] + 1}
    events = asking.events()
    assert events[-1]["type"] == "turn.completed"
    (decided,) = [e for e in events if e["type"] == "permission.decided"]
    assert decided["seq"] == answer.json()["seq"] and decided["turn"] == asking.request["turn"]
    result = next(d for d in of(events, "tool.result") if d["call_id"] == "call_write_1")
    assert not result["is_error"]
    seqs = {e["type"]: e["seq"] for e in events if e["type"] in ("permission.decided", "tool.result")}
    assert seqs["permission.decided"] < next(e["seq"] for e in events if e["type"] == "tool.result"
                                             and e["data"]["call_id"] == "call_write_1")
    state = server.http.get("/api/konsole/wait/state").json()
    assert state["permissions"] == [] and state["agent_state"] == "idle"
    entry = next(e for e in server.http.get("/api/konsole/wait/messages").json()["messages"]
                 if e["kind"] == "permission")
    assert (entry["status"], entry["by"], entry["request_id"]) == ("allowed", "user", asking.id)


def test_a_deny_reaches_the_agent_with_its_message(server: Served, pool: ThreadPoolExecutor) -> None:
    create_session(server.url, "deny", headers=server.auth, options=OPTIONS)
    asking = AskingTurn(server.url, "deny", "Take notes", pool, headers=server.auth)
    assert asking.answer(decision="deny", message="Not in that folder").status_code == 200
    events = asking.events()
    assert events[-1]["type"] == "turn.completed"
    result = next(d for d in of(events, "tool.result") if d["call_id"] == "call_write_1")
    assert result == {**result, "is_error": True, "output": "Not in that folder"}
    assert "I left the note alone" in "".join(d["text"] for d in of(events, "text.done"))


def test_answers_that_cannot_be_taken(server: Served, pool: ThreadPoolExecutor) -> None:
    create_session(server.url, "once", headers=server.auth, options=OPTIONS)
    asking = AskingTurn(server.url, "once", "Take notes", pool, headers=server.auth)
    path = f"/api/konsole/once/permissions/{asking.id}"
    for body, field in (({"decision": "maybe"}, "decision"), ({}, "decision"),
                        ({"decision": "deny", "remember": True}, "remember"),
                        ({"decision": "allow", "extra": 1}, "extra"), ({"decision": "allow", "message": 5}, "message")):
        refused = server.http.post(path, json=body)
        assert refused.status_code == 422, body
        assert (refused.json()["error"]["code"], refused.json()["error"]["field"]) == ("validation_error", field)
    unknown = server.http.post("/api/konsole/once/permissions/perm_nope", json={"decision": "allow"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "permission_not_found"
    elsewhere = server.http.post(f"/api/konsole/nobody/permissions/{asking.id}", json={"decision": "allow"})
    assert elsewhere.status_code == 404 and elsewhere.json()["error"]["code"] == "session_not_found"
    assert not asking.turn.done()  # none of that answered it

    assert asking.answer(decision="deny").status_code == 200
    again = asking.answer(decision="allow")
    assert again.status_code == 409
    assert again.json()["error"] == {"code": "permission_settled", "message":
                                     f"permission request {asking.id!r} was already answered: denied by user"}
    events = asking.events()
    assert [d["decision"] for d in of(events, "permission.decided")] == ["deny"]
    assert of(events, "permission.decided")[0]["message"] == "The user denied permission to use Write."


def test_no_answer_in_time_is_a_deny_that_says_why(make_server: ServerFactory, pool: ThreadPoolExecutor) -> None:
    served = make_server(permission_timeout=1.0)
    create_session(served.url, "late", headers=served.auth, options=OPTIONS)
    asking = AskingTurn(served.url, "late", "Take notes", pool, headers=served.auth)
    assert asking.request["data"]["expires_at"] - asking.request["ts"] in range(900, 1100)
    events = asking.events()
    (decided,) = of(events, "permission.decided")
    assert decided == {"request_id": asking.id, "decision": "deny", "by": "timeout",
                       "message": "Nobody answered the request to use Write within 1 s, so it was denied."}
    assert events[-1]["type"] == "turn.completed"
    result = next(d for d in of(events, "tool.result") if d["call_id"] == "call_write_1")
    assert result["is_error"] and "within 1 s" in result["output"]
    late = asking.answer(decision="allow")
    assert late.status_code == 409 and "denied by timeout" in late.json()["error"]["message"]


def test_cancelling_the_turn_settles_what_it_asked(server: Served, pool: ThreadPoolExecutor) -> None:
    create_session(server.url, "stop", headers=server.auth, options=OPTIONS)
    asking = AskingTurn(server.url, "stop", "Take notes", pool, headers=server.auth)
    server.http.post("/api/konsole/stop/cancel", json={}).raise_for_status()
    events = asking.events()
    after = [e["type"] for e in events if e["seq"] > asking.request["seq"] and e["type"] != "state"]
    assert after == ["permission.decided", "turn.cancelled"]
    assert of(events, "permission.decided") == [{
        "request_id": asking.id, "decision": "deny", "by": "cancel",
        "message": "The turn was cancelled while this request waited for an answer."}]
    assert server.http.get("/api/konsole/stop/state").json()["permissions"] == []
    assert asking.answer(decision="allow").status_code == 409


def test_always_allow_holds_for_the_session_and_survives_a_restart(make_server: ServerFactory,
                                                                   pool: ThreadPoolExecutor, tmp_path: Path) -> None:
    journal = f"sqlite:///{tmp_path}/remember.db"
    served = make_server(journal=journal)
    create_session(served.url, "keep", headers=served.auth, options=OPTIONS)
    create_session(served.url, "other", headers=served.auth, options=OPTIONS)
    asking = AskingTurn(served.url, "keep", "Take notes", pool, headers=served.auth)
    answer = asking.answer(decision="allow", remember=True).json()
    assert (answer["remember"], answer["rule"]) == (True, {"tool": "Write"})
    assert asking.events()[-1]["type"] == "turn.completed"

    again = run_turn(served.url, "keep", "Take more notes", headers=served.auth)
    assert of(again, "permission.requested") == [] and again[-1]["type"] == "turn.completed"
    assert not next(d for d in of(again, "tool.result") if d["call_id"] == "call_write_1")["is_error"]
    # Another session is asked as before.
    other = AskingTurn(served.url, "other", "Take notes", pool, headers=served.auth)
    assert other.answer(decision="deny").status_code == 200
    other.events()

    restarted = make_server(journal=journal)
    after = run_turn(restarted.url, "keep", "And after a restart", headers=restarted.auth)
    assert of(after, "permission.requested") == [] and after[-1]["type"] == "turn.completed"


def test_a_quick_turn_asks_too(server: Served, pool: ThreadPoolExecutor) -> None:
    create_session(server.url, "quickly", headers=server.auth, options=OPTIONS)
    asking = AskingTurn(server.url, "quickly", "Quick notes", pool, lane="quick", headers=server.auth)
    assert asking.request["lane"] == "quick"
    assert server.http.get("/api/konsole/quickly/state").json()["permissions"][0]["lane"] == "quick"
    assert asking.answer(decision="allow").status_code == 200
    assert asking.events()[-1]["type"] == "turn.completed"


def test_the_route_declares_its_answers(server: Served) -> None:
    route = server.http.get("/openapi.json").json()["paths"]["/api/konsole/{session}/permissions/{request_id}"]
    answers = route["post"]["responses"]
    assert {"200", "404", "409", "422"} <= set(answers)
    assert answers["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/DecisionOut"}
    assert answers["409"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    body = route["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/DecisionIn"}


@pytest.mark.parametrize(("command", "prefix"), [
    ("git status --short", "git status"), ("ls -la /tmp", "ls"), ("npm test", "npm test"), ("  pwd ", "pwd"),
    ("git status && rm -rf ~", "git status && rm -rf ~"), ("echo hi > notes.txt", "echo hi > notes.txt"),
])
def test_a_bash_rule_is_the_commands_prefix(command: str, prefix: str) -> None:
    assert command_prefix(command) == prefix
    assert rule_for("Bash", {"command": command}) == {"tool": "Bash", "prefix": prefix}


def test_a_rule_allows_what_it_names_and_nothing_joined_to_it() -> None:
    rules = [rule_for("Bash", {"command": "git status"}), rule_for("Edit", {"file_path": "a.py"})]
    assert allows(rules, "Bash", {"command": "git status --short"})
    assert allows(rules, "Bash", {"command": "git status"})
    assert allows(rules, "Edit", {"file_path": "b.py", "old_string": "x", "new_string": "y"})
    assert not allows(rules, "Bash", {"command": "git statusx"})
    assert not allows(rules, "Bash", {"command": "git push"})
    assert not allows(rules, "Bash", {"command": "git status; rm -rf ~"})
    assert not allows(rules, "Bash", {"command": "git status $(rm -rf ~)"})
    assert not allows(rules, "Bash", {"command": "git status\nrm -rf ~"})
    assert not allows(rules, "Write", {"file_path": "a.py", "content": ""})
    joined = [rule_for("Bash", {"command": "make && make test"})]
    assert allows(joined, "Bash", {"command": "make && make test"})
    assert not allows(joined, "Bash", {"command": "make && make test && rm -rf ~"})
