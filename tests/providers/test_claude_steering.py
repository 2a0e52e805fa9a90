"""Steering the real Claude Code (the CLI claude-agent-sdk bundles, against the project's Anthropic fake)
from agentwire: a tool that needs permission waits for a person's answer (allow, deny, always allow,
no answer in time, an answer from another node), and the board tools reach it as the in-process MCP
server `agentwire`. The dashboard side of both: tests/web/test_dashboard_steering.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.sync_api import Browser

from tests.fakes import llm_servers as fake
from tests.support import claude_code as cc
from tests.support.browser import Dashboard, new_context
from tests.support.eventually import eventually
from tests.support.redis_server import shared_redis_server
from tests.support.server import running_app
from tests.support.turns import AskingTurn, of, run_turn

JSON = dict[str, Any]
Env = cc.Env
CLAUDE_SERVER = {"quick_pool": 0}  # the module's server (the `env` fixture, tests/conftest.py)
pytestmark = pytest.mark.usefixtures("all_answers_used")


def write(path: Path, content: str = "hello from Claude\n") -> fake.Reply:
    return fake.tool_call("Write", {"file_path": str(path), "content": content})


def test_a_write_waits_for_the_answer_and_allow_writes_it(env: Env, pool: ThreadPoolExecutor) -> None:
    cwd = env.session("allow")
    target = cwd / "notes.txt"
    env.fake.enqueue(write(target), fake.text("Written."))
    asked = AskingTurn(env.url, "allow", "Write a note", pool)
    data = asked.request["data"]
    assert (data["tool"], data["input"], data["title"]) == ("Write", {"file_path": str(target),
                                                                      "content": "hello from Claude\n"},
                                                            "Write notes.txt")
    assert data["call_id"].startswith("toolu_") and data["rule"] == {"tool": "Write"}
    state = httpx.get(f"{env.url}/api/konsole/allow/state", timeout=10).json()
    assert [p["request_id"] for p in state["permissions"]] == [asked.id]
    time.sleep(1.0)  # Claude Code waits: nothing is written, the turn goes nowhere
    assert not target.exists() and not asked.turn.done()

    assert asked.answer(decision="allow").status_code == 200
    events = asked.events()
    assert events[-1]["type"] == "turn.completed"
    assert target.read_text() == "hello from Claude\n"
    (result,) = [d for d in of(events, "tool.result") if d["call_id"] == data["call_id"]]
    assert not result["is_error"] and "notes.txt" in result["output"]
    assert "permission_denials" not in events[-1]["data"]
    assert httpx.get(f"{env.url}/api/konsole/allow/state", timeout=10).json()["permissions"] == []


def test_deny_does_not_write_and_the_turn_ends(env: Env, pool: ThreadPoolExecutor) -> None:
    cwd = env.session("deny")
    target = cwd / "notes.txt"
    env.fake.enqueue(write(target), fake.text("Understood, I will not write it."))
    since = env.seen()
    asked = AskingTurn(env.url, "deny", "Write a note", pool)
    assert asked.answer(decision="deny", message="Not this file, please").status_code == 200
    events = asked.events()
    assert events[-1]["type"] == "turn.completed" and not target.exists()
    (result,) = [d for d in of(events, "tool.result") if d["call_id"] == asked.request["data"]["call_id"]]
    assert result["is_error"] and "Not this file, please" in result["output"]
    # Claude Code read the reason (the next request to the model carries it) and reports the denial.
    assert "Not this file, please" in str(env.bodies(since)[1]["messages"][-1])
    assert events[-1]["data"]["permission_denials"] == [
        {"tool": "Write", "call_id": asked.request["data"]["call_id"], "input": asked.request["data"]["input"]}]
    entries = httpx.get(f"{env.url}/api/konsole/deny/messages", timeout=10).json()["messages"]
    assert entries[-1]["permission_denials"][0]["tool"] == "Write"


def test_always_allow_lets_the_next_identical_request_through(env: Env, pool: ThreadPoolExecutor) -> None:
    cwd = env.session("always")
    target = cwd / "notes.txt"
    env.fake.enqueue(write(target), fake.text("Once."), write(target), fake.text("Twice."))
    asked = AskingTurn(env.url, "always", "Write a note", pool)
    answer = asked.answer(decision="allow", remember=True)
    assert answer.json()["rule"] == {"tool": "Write"}
    assert asked.events()[-1]["type"] == "turn.completed"
    target.unlink()
    again = run_turn(env.url, "always", "Write it again")
    assert again[-1]["type"] == "turn.completed"
    assert of(again, "permission.requested") == [] and target.exists()


def test_unknown_settled_and_unanswered_requests(env: Env, pool: ThreadPoolExecutor) -> None:
    cwd = env.root / "late"
    cwd.mkdir()
    target = cwd / "notes.txt"
    env.fake.enqueue(write(target), fake.text("Nobody answered, so I did not write."))
    journal = f"sqlite:///{env.root}/late.db"
    with running_app(journal=journal, provider="claude", model=cc.MODEL, quick_pool=0,
                     permission_timeout=2.0) as (url, _):
        httpx.post(f"{url}/api/konsole", json={"name": "late", "options": {"cwd": str(cwd)}},
                   timeout=10).raise_for_status()
        asked = AskingTurn(url, "late", "Write a note", pool)
        unknown = httpx.post(f"{url}/api/konsole/late/permissions/perm_0000", json={"decision": "allow"}, timeout=10)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "permission_not_found"
        events = asked.events()
        assert events[-1]["type"] == "turn.completed" and not target.exists()
        (decided,) = of(events, "permission.decided")
        assert (decided["decision"], decided["by"]) == ("deny", "timeout")
        assert decided["message"] == "Nobody answered the request to use Write within 2 s, so it was denied."
        waited = next(e["ts"] for e in events if e["type"] == "permission.decided") - asked.request["ts"]
        assert 1900 <= waited < 10_000
        late = asked.answer(url, decision="allow")
        assert late.status_code == 409 and late.json()["error"]["code"] == "permission_settled"


def test_cancel_while_a_request_waits_ends_the_turn_and_keeps_the_agent(env: Env, pool: ThreadPoolExecutor) -> None:
    cwd = env.session("cancelled")
    env.fake.enqueue(write(cwd / "notes.txt"))
    asked = AskingTurn(env.url, "cancelled", "Write a note", pool)
    started = time.monotonic()
    httpx.post(f"{env.url}/api/konsole/cancelled/cancel", timeout=10).raise_for_status()
    events = asked.events()
    assert events[-1]["type"] == "turn.cancelled" and time.monotonic() - started < 5
    assert [(d["decision"], d["by"]) for d in of(events, "permission.decided")] == [("deny", "cancel")]
    assert not (cwd / "notes.txt").exists()
    pid = of(events, "agent.info")[0]["pid"]
    env.fake.enqueue(fake.text("Still here."))
    after = run_turn(env.url, "cancelled", "Are you there?")
    assert after[-1]["type"] == "turn.completed" and of(after, "agent.info")[0]["pid"] == pid


@pytest.mark.redis
def test_the_answer_works_from_another_node(env: Env, pool: ThreadPoolExecutor) -> None:
    """Claude Code runs on node A; the request is answered on node B of the same Redis."""
    journal = f"{shared_redis_server().url}?prefix=steer-{time.monotonic_ns()}:"
    cwd = env.root / "nodes"
    cwd.mkdir()
    target = cwd / "notes.txt"
    env.fake.enqueue(write(target), fake.text("Written on A, allowed on B."))

    def node() -> Any:
        return running_app(journal=journal, provider="claude", model=cc.MODEL, quick_pool=0)

    with node() as (a, _), node() as (b, _):
        httpx.post(f"{a}/api/konsole", json={"name": "nodes", "options": {"cwd": str(cwd)}},
                   timeout=10).raise_for_status()
        asked = AskingTurn(a, "nodes", "Write a note", pool)
        pending = httpx.get(f"{b}/api/konsole/nodes/state", timeout=10).json()["permissions"]
        assert [p["request_id"] for p in pending] == [asked.id]
        assert asked.answer(b, decision="allow").status_code == 200
        events = asked.events()
        assert events[-1]["type"] == "turn.completed" and target.exists()
        assert of(events, "agent.info")[0]["pid"] in cc.agents(env.home, cwd)  # it ran on A's process
        assert asked.answer(a, decision="deny").status_code == 409


def test_task_create_over_mcp_puts_a_sanitized_card_on_the_board(env: Env) -> None:
    env.session("cards")
    card = {"title": "Pick a fix", "description": "Two ways to go", "tags": ["parser"],
            "output": '<h3 onclick="steal()">Options</h3><script>alert(1)</script><p>A or B</p>',
            "choices": [{"label": "Fix A", "value": "Go with fix A", "primary": True},
                        {"label": "Fix B", "value": "Go with fix B"}]}
    env.fake.enqueue(fake.tool_call("mcp__agentwire__task_create", card), fake.text("Card published."))
    events = run_turn(env.url, "cards", "Ask me which fix")
    assert events[-1]["type"] == "turn.completed"
    assert of(events, "permission.requested") == []  # agentwire's own tools never ask
    (call,) = of(events, "tool.call")
    (result,) = of(events, "tool.result")
    assert call["name"] == "mcp__agentwire__task_create" and not result["is_error"]
    task_id = httpx.get(f"{env.url}/api/tasks", timeout=10).json()["tasks"][0]["id"]
    assert task_id in result["output"]
    task = httpx.get(f"{env.url}/api/tasks/{task_id}", timeout=10).json()
    assert (task["title"], task["session"], task["createdBy"], task["tags"]) == ("Pick a fix", "cards", "claude",
                                                                                 ["parser"])
    assert task["context"]["output"] == "<h3>Options</h3><p>A or B</p>"
    assert [c["value"] for c in task["context"]["choices"]] == ["Go with fix A", "Go with fix B"]

    # Bad input is the agent's to read and correct, not a failed turn; an update of its card works.
    env.fake.enqueue(fake.tool_call("mcp__agentwire__task_create", {"description": "no title"}),
                     fake.tool_call("mcp__agentwire__task_update", {"id": task_id, "status": "in_progress"}),
                     fake.text("Updated."))
    events = run_turn(env.url, "cards", "Mark it in progress")
    bad, update = of(events, "tool.result")
    assert bad["is_error"] and "title" in bad["output"]
    assert not update["is_error"]
    assert httpx.get(f"{env.url}/api/tasks/{task_id}", timeout=10).json()["status"] == "in_progress"

    # A choice clicked is the session's next message, which Claude Code hears.
    env.fake.enqueue(fake.text("Fix A it is."))
    since = env.seen()
    chosen = httpx.post(f"{env.url}/api/tasks/{task_id}/choose", json={"value": "Go with fix A"}, timeout=10)
    assert chosen.status_code == 200
    turn = chosen.json()["turn"]["id"]
    eventually(lambda: not httpx.get(f"{env.url}/api/konsole/cards/state", timeout=10).json()["running"], 60,
               "the chosen turn to finish", interval=0.1)
    messages = httpx.get(f"{env.url}/api/konsole/cards/messages", timeout=10).json()["messages"]
    assert [m["text"] for m in messages if m["turn"] == turn and m["kind"] == "message"] == ["Go with fix A"]
    assert "Go with fix A" in cc.user_texts(env.bodies(since)[0])


def test_claude_code_outside_agentwire_publishes_through_agentwire_mcp(env: Env) -> None:
    """The README's set-up: a project's `.mcp.json` starts `agentwire mcp` for a Claude Code that
    agentwire does not run (here `claude -p` in a shell); its card lands in the named session."""
    home = env.root / "outside-home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_text(orjson.dumps({
        "permissions": {"allow": ["mcp__agentwire"]}, "enableAllProjectMcpServers": True}).decode())
    project = env.root / "outside-project"
    project.mkdir()
    agentwire = str(Path(sys.executable).parent / "agentwire")
    (project / ".mcp.json").write_text(orjson.dumps({"mcpServers": {"agentwire": {
        "command": agentwire, "args": ["mcp", "--session", "outside", "--agent", "claude"],
        "env": {"AGENTWIRE_URL": env.url}}}}).decode())
    env.fake.enqueue(fake.tool_call("mcp__agentwire__task_create", {
        "title": "Tests pass", "output": "<p>All green<img src=x onerror=alert(1)></p>",
        "choices": [{"label": "Ship it", "value": "Ship it"}]}), fake.text("Published."))
    done = subprocess.run([str(cc.BUNDLED), "-p", "Publish the result", "--model", cc.MODEL, "--output-format", "json"],
                          cwd=project, env={**os.environ, "HOME": str(home)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert result["result"] == "Published." and result["permission_denials"] == []
    (task,) = [t for t in httpx.get(f"{env.url}/api/tasks", timeout=10).json()["tasks"] if t["session"] == "outside"]
    assert (task["title"], task["createdBy"]) == ("Tests pass", "claude")
    assert task["context"]["output"] == '<p>All green<img src="x"></p>'


@pytest.mark.browser
def test_a_reloaded_page_shows_the_waiting_request_and_answers_it(env: Env, browser: Browser) -> None:
    cwd = env.session("reload")
    target = cwd / "notes.txt"
    env.fake.enqueue(write(target, "line one\nline two\n"), fake.text("Both lines are written."))
    context = new_context(browser)
    try:
        dash = Dashboard.open(context, env.url, "reload")
        page = dash.page
        dash.send("Write two lines")
        page.wait_for_selector("#lane-main section.permission-pending")
        page.reload()
        dash.wait_status("connected")
        card = page.locator("#lane-main section.permission-pending")
        card.wait_for()
        assert card.locator(".perm-title").inner_text() == "Write notes.txt"
        assert card.locator(".diff > span").all_inner_texts() == ["+ line one\n", "+ line two\n"]
        assert not target.exists() and page.title() == "⚠ 1 waiting · reload — agentwire"
        card.locator("button[data-decision='allow']").click()
        page.wait_for_selector("#lane-main section.permission-allowed")
        dash.wait_turns_done(1)
        dash.wait_text("Both lines are written.")
        assert target.read_text() == "line one\nline two\n"
        assert not dash.errors
    finally:
        context.close()


@pytest.mark.browser
def test_a_choice_on_claudes_card_starts_its_next_turn_with_that_value(env: Env, browser: Browser) -> None:
    env.session("choice")
    env.fake.enqueue(fake.tool_call("mcp__agentwire__task_create", {
        "title": "Which way?", "output": "<p>Pick one</p>",
        "choices": [{"label": "Left", "value": "Take the left path"},
                    {"label": "Right", "value": "Take the right path", "primary": True}]}),
        fake.text("Asked on the board."))
    assert run_turn(env.url, "choice", "Ask me where to go")[-1]["type"] == "turn.completed"
    (task,) = [t for t in httpx.get(f"{env.url}/api/tasks", timeout=10).json()["tasks"] if t["session"] == "choice"]
    env.fake.enqueue(fake.text("Right it is."))
    since = env.seen()
    context = new_context(browser)
    try:
        dash = Dashboard.open(context, env.url, "choice", view="board")
        page = dash.page
        card = page.locator(f"article.task[data-id='{task['id']}']")
        card.wait_for()
        card.locator("button.choice", has_text="Right").click()
        page.wait_for_selector("#view-console:not([hidden])")
        dash.wait_turns_done(2)
        dash.wait_text("Right it is.")
        assert page.locator("#lane-main .msg.user .body").last.inner_text() == "Take the right path"
        assert "Take the right path" in cc.user_texts(env.bodies(since)[0])
        assert not dash.errors
    finally:
        context.close()
