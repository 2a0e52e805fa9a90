"""Codex CLI and Gemini CLI as agents (`codex`, `gemini-cli` providers): the real CLIs from the repository's
node_modules, each with a throwaway home configured for the project's fakes, through the whole server.
What both must show is parametrized over both; what only one has (Gemini's `write_todos`, Codex's
`todo_list` and file changes) is tested for that one."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes import llm_servers as fake
from tests.support.agent_clis import (
    AGENTS,
    BINARIES,
    FAKE,
    MODEL,
    VERSION,
    AgentHome,
    agent_session,
    config,
    texts_sent,
    tools_offered,
)
from tests.support.eventually import eventually
from tests.support.server import ServerProcess, running_app
from tests.support.turns import create_session, on_type, run_turn

pytestmark = pytest.mark.timeout(120)



def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"]["text"] for e in events if e["type"] == "text.done")  # type: ignore[index]


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == kind]  # type: ignore[misc]


@pytest.mark.parametrize("agent", AGENTS)
def test_text_usage_and_the_agent_record(agent_home: AgentHome, agent: str, tmp_path: Path) -> None:
    agent_home.llm.enqueue(fake.text("Hello from the fake model, streamed in parts."), provider=FAKE[agent])
    with running_app(config()) as (url, _):
        agent_session(url, agent, tmp_path)
        events = run_turn(url, "s", "Say hello")
        state = httpx.get(f"{url}/api/konsole/s/state").json()
    assert events[0]["type"] == "turn.started" and events[0]["data"]["provider"] == agent
    deltas = "".join(e["text"] for e in _of(events, "text.delta"))  # type: ignore[misc]
    assert deltas == _text(events) == "Hello from the fake model, streamed in parts."
    end = events[-1]
    assert end["type"] == "turn.completed", end
    assert end["data"]["usage"]["input_tokens"] > 0 and end["data"]["usage"]["output_tokens"] > 0
    assert end["data"]["timing"]["totalMs"] > 0
    info = _of(events, "agent.info")[0]
    assert info["name"] == agent and info["version"] == VERSION[agent] and info["approval"] == "read-only"
    assert info["cwd"] == str(tmp_path) and info["model"] == MODEL[agent] and info["resume_id"]
    assert state["agent"] == info
    # The CLI ran in the session's directory, with the user's own configuration and key.
    request = agent_home.llm.requests_for(FAKE[agent])[-1]
    assert request.api_key in ("sk-fake-responses", "gemini-test-0000")
    assert any(str(tmp_path) in text for text in texts_sent(agent, request, "user"))


@pytest.mark.parametrize("agent", AGENTS)
def test_a_shell_command_and_its_output(agent_home: AgentHome, agent: str, tmp_path: Path) -> None:
    command = {"codex": ("exec_command", {"cmd": "printf 'shell-%s\\n' says-42; exit 3"}),
               "gemini-cli": ("run_shell_command", {"command": "printf 'shell-%s\\n' says-42; exit 3",
                                                    "description": "print a number"})}[agent]
    agent_home.llm.enqueue(fake.tool_call(*command), fake.text("The command printed 42."), provider=FAKE[agent])
    with running_app(config()) as (url, _):
        # Gemini CLI offers its shell only with approval "full"; Codex runs commands in its read-only sandbox.
        options = {"cwd": str(tmp_path), **({"approval": "full"} if agent == "gemini-cli" else {})}
        create_session(url, "s", provider=agent, model=MODEL[agent], options=options)
        events = run_turn(url, "s", "Run it")
    call, result = _of(events, "tool.call")[0], _of(events, "tool.result")[0]
    assert call["name"] == command[0] and "printf" in str(call["input"])
    assert result["call_id"] == call["call_id"] and "shell-says-42" in result["output"]
    if agent == "codex":  # Codex reports the exit code; Gemini CLI's stream-json does not
        assert result["is_error"] is True and "[exit code 3]" in result["output"]
    assert _text(events) == "The command printed 42."
    assert events[-1]["type"] == "turn.completed" and events[-1]["data"]["timing"]["toolCallCount"] == 1
    # The model got the command's output back.
    assert "shell-says-42" in str(agent_home.llm.requests_for(FAKE[agent])[-1].json)


@pytest.mark.parametrize("agent", AGENTS)
def test_turns_continue_the_session_also_after_a_restart(agent_home: AgentHome, agent: str, tmp_path: Path) -> None:
    agent_home.llm.enqueue(fake.text("First answer."), fake.text("Second answer."), fake.text("Third answer."),
                           provider=FAKE[agent])
    # `agentwire serve` in a process of its own, told where the CLIs are by its flags, then started again.
    flags = ["--codex-bin", str(BINARIES["codex"]), "--gemini-bin", str(BINARIES["gemini-cli"])]
    with ServerProcess(f"sqlite:///{tmp_path}/journal.db", args=flags) as server:
        agent_session(server.url, agent, tmp_path)
        first = run_turn(server.url, "s", "Remember the word quince.")
        second = run_turn(server.url, "s", "Which word?")
        server.terminate()
        server.start()
        third = run_turn(server.url, "s", "And once more?")
    ids = [_of(turn, "agent.info")[0]["resume_id"] for turn in (first, second, third)]
    assert ids[0] and ids == [ids[0]] * 3, ids
    assert [_text(t) for t in (first, second, third)] == ["First answer.", "Second answer.", "Third answer."]
    last = agent_home.llm.requests_for(FAKE[agent])[-1]
    users = texts_sent(agent, last, "user")
    assert [m for m in ("Remember the word quince.", "Which word?", "And once more?") if m in users] == [
        "Remember the word quince.", "Which word?", "And once more?"]
    assert "First answer." in texts_sent(agent, last, "assistant")


@pytest.mark.parametrize("agent", AGENTS)
def test_a_quick_turn_has_its_own_context(agent_home: AgentHome, agent: str, tmp_path: Path) -> None:
    agent_home.llm.enqueue(fake.text("Main answer."), fake.text("Quick answer."), provider=FAKE[agent])
    with running_app(config()) as (url, _):
        agent_session(url, agent, tmp_path)
        main = run_turn(url, "s", "The main question.")
        quick = run_turn(url, "s", "A quick one.", lane="quick")
        state = httpx.get(f"{url}/api/konsole/s/state").json()
    assert _text(quick) == "Quick answer." and quick[-1]["type"] == "turn.completed"
    assert "The main question." not in texts_sent(agent, agent_home.llm.requests_for(FAKE[agent])[-1], "user")
    main_id, quick_id = (_of(t, "agent.info")[0]["resume_id"] for t in (main, quick))
    assert quick_id != main_id and state["agent"]["resume_id"] == main_id


@pytest.mark.parametrize("agent", AGENTS)
def test_an_api_error_is_one_readable_turn_failed(agent_home: AgentHome, agent: str, tmp_path: Path) -> None:
    agent_home.llm.enqueue(fake.auth_error(), provider=FAKE[agent])
    with running_app(config()) as (url, _):
        agent_session(url, agent, tmp_path)
        events = run_turn(url, "s", "This will fail")
        assert httpx.get(f"{url}/healthz").status_code == 200
    end = events[-1]
    assert end["type"] == "turn.failed", end
    error = end["data"]["error"]
    expected = {"codex": "Incorrect API key provided", "gemini-cli": "API key not valid"}[agent]
    assert error.startswith(f"{agent}: ") and expected in error, error
    assert "{" not in error.split(expected)[0], f"the message is readable, not a JSON dump: {error}"
    shown = [e for e in events if e["type"] in ("text.delta", "text.done", "turn.failed")
             and expected in str(e["data"])]
    assert shown == [end], "the error is shown once"


@pytest.mark.parametrize("agent", AGENTS)
def test_cancel_during_a_sleep_leaves_no_process(agent_home: AgentHome, agent: str, tmp_path: Path) -> None:
    sleep = {"codex": ("exec_command", {"cmd": "sleep 301"}),
             "gemini-cli": ("run_shell_command", {"command": "sleep 301", "description": "wait"})}[agent]
    agent_home.llm.enqueue(fake.tool_call(*sleep), fake.text("never"), provider=FAKE[agent])
    with running_app(config()) as (url, _):
        agent_session(url, agent, tmp_path, approval="full")
        started = threading.Event()
        events: list[dict[str, Any]] = []
        thread = threading.Thread(target=lambda: events.extend(run_turn(
            url, "s", "Wait a while", on_event=on_type("tool.call", started))))
        thread.start()
        assert started.wait(60)
        eventually(lambda: agent_home.running("sleep 301"), timeout=30)
        assert httpx.post(f"{url}/api/konsole/s/cancel").json()["status"] == "cancelling"
        thread.join(30)
    assert events[-1]["type"] == "turn.cancelled", events[-1]
    assert agent_home.processes() == {}


@pytest.mark.parametrize("agent", AGENTS)
def test_an_agent_that_dies_fails_the_turn_and_leaves_no_process(agent_home: AgentHome, agent: str,
                                                                 tmp_path: Path) -> None:
    sleep = {"codex": ("exec_command", {"cmd": "sleep 302"}),
             "gemini-cli": ("run_shell_command", {"command": "sleep 302", "description": "wait"})}[agent]
    agent_home.llm.enqueue(fake.tool_call(*sleep), provider=FAKE[agent])
    with running_app(config()) as (url, _):
        agent_session(url, agent, tmp_path, approval="full")
        events: list[dict[str, Any]] = []
        thread = threading.Thread(target=lambda: events.extend(run_turn(url, "s", "Wait")))
        thread.start()
        eventually(lambda: agent_home.running("sleep 302"), timeout=60)
        # The CLI itself dies (Codex's native binary; Gemini CLI's node), not the shell it started.
        cli = {"codex": "codex-linux", "gemini-cli": "/.bin/gemini"}[agent]
        pids = [pid for pid, argv in agent_home.processes().items() if any(cli in arg for arg in argv[:2])]
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        thread.join(30)
    end = events[-1]
    assert end["type"] == "turn.failed" and "was killed by SIGKILL" in end["data"]["error"], end
    assert agent_home.processes() == {}


def test_gemini_write_todos_is_todo_updated(agent_home: AgentHome, tmp_path: Path) -> None:
    todos = [{"description": "Read the failing test", "status": "completed"},
             {"description": "Fix the parser", "status": "in_progress"}]
    agent_home.llm.enqueue(fake.tool_call("write_todos", {"todos": todos}), fake.text("Planned."), provider="gemini")
    with running_app(config()) as (url, _):
        create_session(url, "s", provider="gemini-cli", model=MODEL["gemini-cli"],
                       options={"cwd": str(tmp_path), "approval": "full"})
        events = run_turn(url, "s", "Plan it")
        state = httpx.get(f"{url}/api/konsole/s/state").json()
    expected = [{"content": "Read the failing test", "status": "completed", "activeForm": "Read the failing test"},
                {"content": "Fix the parser", "status": "in_progress", "activeForm": "Fix the parser"}]
    assert _of(events, "todo.updated") == [{"todos": expected}]
    assert state["todos"] == expected
    kinds = [e["type"] for e in events]
    assert kinds.index("todo.updated") > kinds.index("tool.result")  # only once the CLI accepted the list


def test_codex_todo_list_is_todo_updated(agent_home: AgentHome, tmp_path: Path) -> None:
    plan = {"explanation": "start", "plan": [{"step": "Read the failing test", "status": "completed"},
                                             {"step": "Fix the parser", "status": "in_progress"}]}
    agent_home.llm.enqueue(fake.tool_call("update_plan", plan), fake.text("Planned."), provider="responses")
    with running_app(config()) as (url, _):
        create_session(url, "s", provider="codex", options={"cwd": str(tmp_path)})
        events = run_turn(url, "s", "Plan it")
    expected = [{"content": "Read the failing test", "status": "completed", "activeForm": "Read the failing test"},
                {"content": "Fix the parser", "status": "pending", "activeForm": "Fix the parser"}]
    assert _of(events, "todo.updated") == [{"todos": expected}]  # started and completed: one update, not two
    assert events[-1]["type"] == "turn.completed"
    # No model named: Codex runs the one its configuration picks, and the header says which.
    assert _of(events, "agent.info")[0]["model"] == "gpt-5.5"
    assert agent_home.llm.requests_for("responses")[0].model == "gpt-5.5"


@pytest.mark.parametrize("approval", ["read-only", "full"])
def test_approval_decides_what_codex_may_change(agent_home: AgentHome, approval: str, tmp_path: Path) -> None:
    patch = "*** Begin Patch\n*** Add File: made.txt\n+made by the agent\n*** End Patch\n"
    agent_home.llm.enqueue(fake.tool_call("apply_patch", {"input": patch}), fake.text("Tried."), provider="responses")
    with running_app(config()) as (url, _):
        create_session(url, "s", provider="codex", options={"cwd": str(tmp_path), "approval": approval})
        events = run_turn(url, "s", "Make a file")
    assert _of(events, "agent.info")[0]["approval"] == approval and events[-1]["type"] == "turn.completed"
    if approval == "full":
        call, result = _of(events, "tool.call")[0], _of(events, "tool.result")[0]
        assert call["name"] == "apply_patch" and call["input"]["changes"][0]["path"] == str(tmp_path / "made.txt")
        assert result == {**result, "is_error": False, "output": f"add {tmp_path / 'made.txt'}"}
        assert (tmp_path / "made.txt").read_text() == "made by the agent\n"
    else:
        # Codex refuses the patch before applying it (no file_change item) and tells the model why.
        assert not (tmp_path / "made.txt").exists() and _of(events, "tool.call") == []
        outputs = agent_home.llm.requests_for("responses")[-1].tool_results()
        assert "read-only sandbox" in outputs[-1]["output"]


@pytest.mark.parametrize("approval", ["read-only", "full"])
def test_approval_decides_which_tools_gemini_offers(agent_home: AgentHome, approval: str, tmp_path: Path) -> None:
    agent_home.llm.enqueue(fake.text("Fine."), provider="gemini")
    with running_app(config()) as (url, _):
        create_session(url, "s", provider="gemini-cli", model=MODEL["gemini-cli"],
                       options={"cwd": str(tmp_path), "approval": approval})
        events = run_turn(url, "s", "Hello")
    offered = tools_offered("gemini-cli", agent_home.llm.requests_for("gemini")[-1])
    assert "read_file" in offered
    assert ({"run_shell_command", "write_file", "write_todos"} <= set(offered)) is (approval == "full")
    assert _of(events, "agent.info")[0]["approval"] == approval


def test_codex_reasoning_is_thinking(agent_home: AgentHome, tmp_path: Path) -> None:
    agent_home.llm.enqueue(fake.thinking(), provider="responses")
    with running_app(config()) as (url, _):
        create_session(url, "s", provider="codex", options={"cwd": str(tmp_path)})
        events = run_turn(url, "s", "Think first")
    assert [e["text"] for e in _of(events, "thinking.done")] == [fake.THOUGHT]
    assert "".join(e["text"] for e in _of(events, "thinking.delta")) == fake.THOUGHT  # type: ignore[misc]
    assert _text(events) == fake.THOUGHT_ANSWER
    kinds = [e["type"] for e in events]
    assert kinds.index("thinking.done") < kinds.index("text.delta")


@pytest.mark.parametrize("agent", AGENTS)
def test_a_server_shutdown_mid_turn_leaves_no_process(agent_home: AgentHome, agent: str, tmp_path: Path) -> None:
    sleep = {"codex": ("exec_command", {"cmd": "sleep 303"}),
             "gemini-cli": ("run_shell_command", {"command": "sleep 303", "description": "wait"})}[agent]
    agent_home.llm.enqueue(fake.tool_call(*sleep), provider=FAKE[agent])
    journal = f"sqlite:///{tmp_path}/journal.db"
    with running_app(config(journal=journal)) as (url, _):
        agent_session(url, agent, tmp_path, approval="full")

        def reader() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server goes away under it
                run_turn(url, "s", "Wait")

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        eventually(lambda: agent_home.running("sleep 303"), timeout=60)
    thread.join(10)
    assert agent_home.processes() == {}
    with running_app(config(journal=journal)) as (url, _):
        state = httpx.get(f"{url}/api/konsole/s/state").json()
        assert state["running"] == [] and state["agent"]["name"] == agent
