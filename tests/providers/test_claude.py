"""The `claude` provider with the real Claude Code CLI (the one claude-agent-sdk bundles) against the
project's Anthropic fake: one live process per session, todos from whichever todo tool it uses,
cancel that leaves no process behind, warm quick turns, context kept across restarts and reaping,
rate limits, subagents, API errors. One server and one fake serve most tests (each its own session);
the fake answers in order, so each test queues exactly what its turns ask for."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from agentwire import providers
from tests.fakes import llm_servers as fake
from tests.support import claude_code as cc
from tests.support.browser import Dashboard, launch, new_context
from tests.support.eventually import eventually
from tests.support.redis_server import shared_redis_server
from tests.support.server import ServerProcess, running_app
from tests.support.turns import of, run_turn

JSON = dict[str, Any]


Env = cc.Env
CLAUDE_SERVER = {"quick_pool": 1}  # the module's server (the `env` fixture, tests/conftest.py)
pytestmark = pytest.mark.usefixtures("all_answers_used")


def texts(events: list[JSON]) -> tuple[str, str]:
    """(every text delta joined, every text.done joined)."""
    return "".join(d["text"] for d in of(events, "text.delta")), "".join(d["text"] for d in of(events, "text.done"))


def test_text_streams_and_the_agent_is_shown(env: Env) -> None:
    cwd = env.session("text")
    env.fake.enqueue(fake.thinking("Short and friendly.", "Hello! The journal keeps every event, in order."))
    events = run_turn(env.url, "text", "Say hello")

    assert events[-1]["type"] == "turn.completed"
    deltas, done = texts(events)
    assert deltas == done == "Hello! The journal keeps every event, in order."
    assert len(of(events, "text.delta")) > 1  # streamed, not in one piece
    assert "".join(d["text"] for d in of(events, "thinking.delta")) == "Short and friendly."
    # Kept as soon as the new Claude session starts (a turn killed half-way is resumed), then at its end.
    early, info = of(events, "agent.info")
    assert early["resume_id"] == info["resume_id"] and early["cost_usd_total"] == 0
    assert (info["name"], info["version"], info["model"], info["cwd"]) == ("claude-code", cc.VERSION, cc.MODEL,
                                                                          str(cwd))
    assert info["pid"] in cc.agents(env.home, cwd)
    usage = events[-1]["data"]["usage"]
    assert usage["output_tokens"] > 0 and usage["cost_usd"] > 0 and usage["session_id"] == info["resume_id"]
    state = httpx.get(f"{env.url}/api/konsole/text/state", timeout=10).json()
    assert state["agent"] == info


def test_two_turns_run_in_one_process_that_keeps_the_context(env: Env) -> None:
    cwd = env.session("two")
    eventually(lambda: len(cc.agents(env.home, cwd)) == 1)  # the quick lane's warm worker
    env.fake.enqueue(fake.text("First answer."), fake.text("Second answer."))
    since = env.seen()
    first = run_turn(env.url, "two", "First question")
    live = of(first, "agent.info")[0]["pid"]
    born = cc.started_at(live)
    started = time.monotonic()
    second = run_turn(env.url, "two", "Second question")

    assert [e[-1]["type"] for e in (first, second)] == ["turn.completed", "turn.completed"]
    assert of(first, "agent.info")[0]["pid"] == of(second, "agent.info")[0]["pid"] == live
    assert cc.started_at(live) == born
    # The warm worker and the live one, no other.
    assert len(cc.agents(env.home, cwd)) == 2
    assert time.monotonic() - started < 5
    later = env.bodies(since)[1]
    assert {"First question", "First answer.", "Second question"} <= set(cc.user_texts(later))
    # Per-turn cost, though Claude Code reports its running total.
    costs = [e[-1]["data"]["usage"]["cost_usd"] for e in (first, second)]
    assert of(second, "agent.info")[0]["cost_usd_total"] == pytest.approx(sum(costs), abs=1e-5)


def test_todos_come_only_from_the_todo_tool_call_that_worked(env: Env) -> None:
    env.session("todos")
    task = {"subject": "Fix the parser", "description": "Keep quoted commas", "activeForm": "Fixing the parser"}
    env.fake.enqueue(
        fake.Reply(blocks=(fake.Text("Planning."), fake.ToolCall("TodoWrite", fake.TODO_INPUT),
                           fake.ToolCall("TaskCreate", task))),
        fake.tool_call("TaskUpdate", {"taskId": "1", "status": "in_progress"}),
        fake.text("Working on it."))
    events = run_turn(env.url, "todos", "Plan the fix")

    calls = {d["name"]: d["call_id"] for d in of(events, "tool.call")}
    results = {d["call_id"]: d for d in of(events, "tool.result")}
    assert results[calls["TodoWrite"]]["is_error"] and "No such tool available: TodoWrite" in \
        results[calls["TodoWrite"]]["output"]
    assert not results[calls["TaskCreate"]]["is_error"]
    updates = of(events, "todo.updated")
    assert updates == [
        {"todos": [{"id": "1", "content": "Fix the parser", "status": "pending", "activeForm": "Fixing the parser"}]},
        {"todos": [{"id": "1", "content": "Fix the parser", "status": "in_progress",
                    "activeForm": "Fixing the parser"}]}]
    # Each after its call's result, never for the rejected TodoWrite.
    seqs = {e["data"].get("call_id"): e["seq"] for e in events if e["type"] == "tool.result"}
    update_seqs = [e["seq"] for e in events if e["type"] == "todo.updated"]
    assert update_seqs[0] > seqs[calls["TaskCreate"]] and update_seqs[1] > seqs[calls["TaskUpdate"]]
    state = httpx.get(f"{env.url}/api/konsole/todos/state", timeout=10).json()
    assert state["todos"] == updates[-1]["todos"]

    # The next turn goes on from the session's list: a second task, the first one deleted, an update
    # of a task that does not exist (Claude Code answers "Task not found", not an error), TaskList.
    env.fake.enqueue(
        fake.tool_call("TaskCreate", {"subject": "Write the report", "description": "For the team"}),
        fake.tool_call("TaskUpdate", {"taskId": "1", "status": "deleted"}),
        fake.tool_call("TaskUpdate", {"taskId": "9", "status": "completed"}),
        fake.tool_call("TaskList", {}),
        fake.text("Report next."))
    events = run_turn(env.url, "todos", "Now the report")
    report = {"id": "2", "content": "Write the report", "status": "pending", "activeForm": "Write the report"}
    assert [u["todos"] for u in of(events, "todo.updated")] == [[*updates[-1]["todos"], report], [report]]


def _sleeping_turn(env: Env, session: str, meanwhile: Callable[[], None], *, cancel: bool = True) -> list[JSON]:
    """A turn whose Bash call sleeps: once the command runs, `meanwhile()`, then (if `cancel`) cancel
    the turn; returns its events."""
    env.fake.enqueue(fake.tool_call("Bash", {"command": cc.SLEEP, "description": "Wait"}))
    done: list[bool] = []

    def on_event(envelope: JSON) -> None:
        if envelope["type"] == "tool.call" and not done:
            eventually(lambda: len(cc.sleeping(env.home)) == 1, timeout=20)
            meanwhile()
            done.append(True)
            if cancel:
                httpx.post(f"{env.url}/api/konsole/{session}/cancel", timeout=10).raise_for_status()

    return run_turn(env.url, session, "Wait for it", on_event=on_event)


def _request_of(env: Env, since: int, message: str) -> dict[str, Any]:
    """The first model request since `since` that carries `message`: the fake is shared by the module's
    sessions, so another session's agent may have asked in between."""
    found = [body for body in env.bodies(since) if message in cc.user_texts(body)]
    assert found, f"no model request carried {message!r}"
    return found[0]


def _live_agent(env: Env, cwd: Path, warm: set[int]) -> int:
    """The session's main-lane Claude Code: its one process that is not the quick lane's warm worker."""
    (pid,) = set(cc.agents(env.home, cwd)) - warm
    return pid


def test_cancel_during_a_bash_sleep_stops_the_tool_and_keeps_the_agent(env: Env) -> None:
    cwd = env.session("cancel")
    started = time.monotonic()
    events = _sleeping_turn(env, "cancel", lambda: None)
    assert events[-1]["type"] == "turn.cancelled"
    assert time.monotonic() - started < 10
    # The tool is gone, not orphaned: Claude Code stops it as it answers the interrupt, and the
    # stopped `sleep` may take a moment to be reaped after the cancel is journaled.
    eventually(lambda: cc.sleeping(env.home) == [], timeout=5, what="the interrupted sleep exits")
    (result,) = of(events, "tool.result")
    assert result["is_error"]
    # The process stays and serves the next turn, which knows about the interrupted one.
    pid = of(events, "agent.info")[0]["pid"]
    env.fake.enqueue(fake.text("Next one."))
    since = env.seen()
    after = run_turn(env.url, "cancel", "Go on")
    assert after[-1]["type"] == "turn.completed" and of(after, "agent.info")[0]["pid"] == pid
    assert "Wait for it" in cc.user_texts(_request_of(env, since, "Go on"))
    assert pid in cc.agents(env.home, cwd)


def test_an_agent_that_does_not_stop_is_stopped_with_everything_it_started(env: Env) -> None:
    cwd = env.session("frozen")
    eventually(lambda: len(cc.agents(env.home, cwd)) == 1)
    warm = set(cc.agents(env.home, cwd))
    frozen: list[int] = []

    def freeze() -> None:  # it can answer neither the interrupt nor SIGINT
        # Claude Code writes its transcript in the background: what a process frozen and killed had
        # not written yet is lost to its own --resume, whoever runs it. Freeze it once it has written
        # the exchange so far: the message and its Bash call.
        eventually(lambda: cc.transcribed(env.home, "Wait for it") and cc.transcribed(env.home, cc.SLEEP),
                   timeout=10, what="Claude Code's transcript")
        frozen.append(_live_agent(env, cwd, warm))
        os.kill(frozen[0], signal.SIGSTOP)

    events = _sleeping_turn(env, "frozen", freeze)
    assert events[-1]["type"] == "turn.cancelled"
    # Killed with everything it started (SIGKILL to its tag): gone once the kernel has reaped them.
    eventually(lambda: cc.sleeping(env.home) == [] and frozen[0] not in cc.processes(env.home), timeout=5,
               what="the frozen agent and its sleep are gone")
    # The next turn starts Claude Code again, on the same Claude session.
    env.fake.enqueue(fake.text("Back."))
    since = env.seen()
    after = run_turn(env.url, "frozen", "Are you back?")
    assert after[-1]["type"] == "turn.completed" and of(after, "agent.info")[0]["pid"] != frozen[0]
    assert "Wait for it" in cc.user_texts(_request_of(env, since, "Are you back?"))


def test_a_crash_of_the_agent_fails_the_turn_and_leaves_no_tool(env: Env) -> None:
    cwd = env.session("crash")
    eventually(lambda: len(cc.agents(env.home, cwd)) == 1)
    warm = set(cc.agents(env.home, cwd))
    events = _sleeping_turn(env, "crash", lambda: os.kill(_live_agent(env, cwd, warm), signal.SIGKILL),
                            cancel=False)
    assert events[-1]["type"] == "turn.failed"
    assert events[-1]["data"]["error"].startswith("Claude Code stopped")
    eventually(lambda: cc.sleeping(env.home) == [], timeout=5)
    env.fake.enqueue(fake.text("Back."))
    assert run_turn(env.url, "crash", "Again")[-1]["type"] == "turn.completed"


def test_a_quick_turn_after_idle_starts_on_a_live_process(env: Env) -> None:
    cwd = env.session("quick")
    eventually(lambda: len(cc.agents(env.home, cwd)) == 1)
    (warm,) = cc.agents(env.home, cwd)
    born = cc.started_at(warm)
    time.sleep(10)  # `claude -p` gives up after ~3 s without input; this one waits
    env.fake.enqueue(fake.text("Quick answer."))
    events = run_turn(env.url, "quick", "A quick one", lane="quick")

    assert events[-1]["type"] == "turn.completed" and {e["lane"] for e in events} == {"quick"}
    assert of(events, "agent.info")[0]["pid"] == warm and cc.started_at(warm) == born
    # The worker that served it is closed (a quick turn's context is its own); the pool refills.
    eventually(lambda: warm not in cc.processes(env.home) and len(cc.agents(env.home, cwd)) == 1, timeout=10)
    # The quick turn did not become the main lane's context, nor the agent the session header shows.
    assert httpx.get(f"{env.url}/api/konsole/quick/state", timeout=10).json()["agent"] == {}
    env.fake.enqueue(fake.text("Main answer."))
    since = env.seen()
    main = run_turn(env.url, "quick", "A main one")
    assert "A quick one" not in cc.user_texts(env.bodies(since)[0])
    shown = httpx.get(f"{env.url}/api/konsole/quick/state", timeout=10).json()["agent"]
    assert shown == of(main, "agent.info")[-1] and shown["pid"] != warm


def test_rate_limits_show_while_claude_code_retries(env: Env) -> None:
    env.session("limited")
    env.fake.enqueue(fake.rate_limited(1), fake.text("Made it."))
    events = run_turn(env.url, "limited", "Try")
    assert events[-1]["type"] == "turn.completed" and texts(events)[1] == "Made it."
    (limited,) = [d for d in of(events, "state") if d["agent_state"] == "rate_limited"]
    assert 500 <= limited["retry_in_ms"] <= 5000 and limited["attempt"] == 1 and limited["error_status"] == 429
    states = [d["agent_state"] for d in of(events, "state")]
    assert "writing" in states[states.index("rate_limited"):]  # and on once the retry answers


def test_an_api_error_shows_once_as_the_failed_turn(env: Env) -> None:
    env.session("apierror")
    env.fake.enqueue(fake.auth_error())
    events = run_turn(env.url, "apierror", "Hello?")
    assert events[-1]["type"] == "turn.failed"
    error = events[-1]["data"]["error"]
    assert error.startswith("Claude Code reported an error: API error 401: ") and "Invalid API key" in error
    assert of(events, "text.delta") == of(events, "text.done") == []
    messages = httpx.get(f"{env.url}/api/konsole/apierror/messages", timeout=10).json()["messages"]
    assert sum("Invalid API key" in str(entry) for entry in messages) == 1


def test_a_subagents_tool_calls_name_their_parent(env: Env) -> None:
    env.session("nested")
    env.fake.enqueue(
        fake.tool_call("Agent", {"description": "Look around", "prompt": "List the files",
                                 "subagent_type": "general-purpose", "run_in_background": False}),
        fake.tool_call("Bash", {"command": "echo nested", "description": "Echo"}),
        fake.text("The subagent saw: nested"), fake.text("Done."))
    events = run_turn(env.url, "nested", "Delegate it")
    assert events[-1]["type"] == "turn.completed"
    calls = of(events, "tool.call")
    assert [(c["name"], c.get("parent_call_id")) for c in calls] == [("Agent", None), ("Bash", calls[0]["call_id"])]
    results = {r["call_id"]: r for r in of(events, "tool.result")}
    assert results[calls[1]["call_id"]]["output"] == "nested"
    assert results[calls[1]["call_id"]]["parent_call_id"] == calls[0]["call_id"]
    assert "parent_call_id" not in results[calls[0]["call_id"]]
    assert texts(events)[1] == "Done."  # the subagent's own prose is its call's result, not the answer
    entries = httpx.get(f"{env.url}/api/konsole/nested/messages", timeout=10).json()["messages"]
    tools = [e for e in entries if e["kind"] == "tool"]
    assert tools[1]["parent_call_id"] == calls[0]["call_id"] and "parent_call_id" not in tools[0]


def _own_server(env: Env, journal: str, **config: Any) -> Any:
    return running_app(journal=journal, provider="claude", model=cc.MODEL, quick_pool=0, **config)


def test_a_restart_between_turns_keeps_the_context(env: Env) -> None:
    journal = f"sqlite:///{env.root}/restart.db"
    env.fake.enqueue(fake.tool_call("TaskCreate", {"subject": "Paint it", "activeForm": "Painting it"}),
                     fake.text("Remember: blue."),
                     fake.tool_call("TaskUpdate", {"taskId": "1", "status": "completed"}), fake.text("It was blue."))
    with _own_server(env, journal) as (url, _):
        first = run_turn(url, "restart", "My favourite colour is blue")
    since = env.seen()
    with _own_server(env, journal) as (url, _):
        second = run_turn(url, "restart", "What was my favourite colour?")
    assert second[-1]["type"] == "turn.completed"
    assert {"My favourite colour is blue", "Remember: blue."} <= set(cc.user_texts(env.bodies(since)[0]))
    # The todo list goes on from the journal too.
    assert of(second, "todo.updated") == [
        {"todos": [{"id": "1", "content": "Paint it", "status": "completed", "activeForm": "Painting it"}]}]
    before, after = of(first, "agent.info")[0], of(second, "agent.info")[0]
    assert after["resume_id"] == before["resume_id"] and after["pid"] != before["pid"]


def test_an_idle_agent_is_reaped_and_the_next_turn_resumes(env: Env) -> None:
    env.fake.enqueue(fake.text("Noted."), fake.text("Still here."))
    with _own_server(env, f"sqlite:///{env.root}/reap.db", agent_ttl=1.0) as (url, _):
        first = run_turn(url, "reap", "Note this: 42")
        pid = of(first, "agent.info")[0]["pid"]
        eventually(lambda: pid not in cc.processes(env.home), timeout=10)
        since = env.seen()
        second = run_turn(url, "reap", "What did I note?")
    assert second[-1]["type"] == "turn.completed" and of(second, "agent.info")[0]["pid"] != pid
    assert "Note this: 42" in cc.user_texts(env.bodies(since)[0])


@pytest.mark.redis
def test_turns_alternating_between_two_nodes_keep_one_context(env: Env) -> None:
    """Node A's live process falls behind once node B has run a turn: A notices (the session's record
    names B's turn, not its own last one) and resumes in a new process."""
    journal = f"{shared_redis_server().url}?prefix=claude-{time.monotonic_ns()}:"
    env.fake.enqueue(fake.text("A heard one."), fake.text("B heard two."), fake.text("A heard three."))
    with _own_server(env, journal) as (a, _), _own_server(env, journal) as (b, _):
        first = run_turn(a, "nodes", "One")
        since = env.seen()
        second = run_turn(b, "nodes", "Two")
        assert {"One", "A heard one."} <= set(cc.user_texts(env.bodies(since)[0]))
        since = env.seen()
        third = run_turn(a, "nodes", "Three")
        assert {"One", "A heard one.", "Two", "B heard two."} <= set(cc.user_texts(env.bodies(since)[0]))
        pids = [of(events, "agent.info")[-1]["pid"] for events in (first, second, third)]
        assert len(set(pids)) == 3 and pids[0] not in cc.processes(env.home)
        assert len({of(events, "agent.info")[-1]["resume_id"] for events in (first, second, third)}) == 1


@pytest.mark.browser
def test_the_dashboard_shows_the_agent_nested_calls_denials_and_rate_limits(env: Env) -> None:
    cwd = env.session("dash")
    env.fake.enqueue(
        fake.tool_call("Agent", {"description": "Look around", "prompt": "List the files",
                                 "subagent_type": "general-purpose", "run_in_background": False}),
        fake.tool_call("Bash", {"command": "echo nested", "description": "Echo"}),
        fake.text("The subagent saw: nested"),
        fake.tool_call("Write", {"file_path": str(cwd / "notes.txt"), "content": "hi"}),
        fake.text("Done, but I may not write."),
        fake.rate_limited(2), fake.text("After the wait."))
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            dash = Dashboard.open(new_context(browser), env.url, "dash")
            page = dash.page
            dash.send("Delegate it")
            # Claude Code asks before it writes; the person says no.
            page.click("#lane-main section.permission-pending button[data-decision='deny']")
            dash.wait_turns_done(1)
            assert page.inner_text("#session-agent") == f"Claude Code {cc.VERSION} · {cc.MODEL} · {cwd}"
            assert _tool_tree(page) == [("Agent", ["Bash"]), ("Write", [])]
            assert page.inner_text("#lane-main .end-denials") == f"NOT PERMITTED\nWrite {cwd / 'notes.txt'}"
            # The same page after a reload (the stream replayed, folded).
            page.reload()
            dash.wait_status("connected")
            dash.wait_turns_done(1)
            assert _tool_tree(page) == [("Agent", ["Bash"]), ("Write", [])]
            assert page.inner_text("#session-agent").startswith(f"Claude Code {cc.VERSION}")
            dash.send("Once more")
            page.wait_for_function("() => /^rate limited, retrying in \\d+\\.\\d s$/"
                                   ".test(document.querySelector('#agent-state').textContent)")
            dash.wait_turns_done(2)
            assert not dash.errors
        finally:
            browser.close()


def _tool_tree(page: Any) -> list[tuple[str, list[str]]]:
    """The main lane's top-level tool cards, each with the cards nested under it."""
    tree: list[tuple[str, list[str]]] = page.evaluate("""() => [...document.querySelectorAll(
        '#lane-main .assistant > details.tool')].map(card => {
            const next = card.nextElementSibling;
            const nested = next && next.classList.contains('tool-children')
                ? [...next.querySelectorAll('details.tool .tool-name')].map(e => e.textContent) : [];
            return [card.querySelector('.tool-name').textContent, nested];
        })""")
    return [(name, nested) for name, nested in tree]


def test_a_server_shutdown_mid_tool_leaves_no_process(env: Env) -> None:
    """SIGTERM to `agentwire serve` while Claude Code runs a Bash command: the turn ends as
    interrupted and neither the agent nor its command outlives the server."""
    home = cc.make_home(env.root / "shutdown-home")  # this server's agents, told apart from the others
    journal = f"sqlite:///{env.root}/shutdown.db"
    with ServerProcess(journal, args=["--provider", "claude", "--model", cc.MODEL], env={"HOME": str(home)},
                       log_path=env.root / "shutdown.log") as server:
        env.fake.enqueue(fake.tool_call("Bash", {"command": cc.SLEEP, "description": "Wait"}))
        with httpx.stream("POST", f"{server.url}/api/konsole/bye/stream", json={"message": "Wait for it"},
                          timeout=10) as response:
            assert response.status_code == 200  # the turn goes on without this reader
        eventually(lambda: len(cc.sleeping(home)) == 1, timeout=30)
        assert cc.agents(home)
        assert server.terminate(timeout=15) < 10
    assert cc.processes(home) == {}
    with ServerProcess(journal, args=["--provider", "claude"], env={"HOME": str(home)}) as server:
        turns = httpx.get(f"{server.url}/api/konsole/bye/messages", timeout=10).json()["messages"]
    assert turns[-1]["kind"] == "turn.failed" and turns[-1]["error"] == "interrupted"


def test_a_provider_whose_package_is_missing_is_refused_at_session_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    info = providers.PROVIDERS["claude"]
    monkeypatch.setitem(providers.PROVIDERS, "claude", dataclasses.replace(info, requires="no_such_sdk_here"))
    with running_app() as (url, _):
        response = httpx.post(f"{url}/api/konsole", json={"name": "s", "provider": "claude"}, timeout=10)
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("provider_unavailable", "provider")
    assert error["message"] == ("provider 'claude' needs the Python package no-such-sdk-here: "
                                "pip install 'agentwire[claude]'")
