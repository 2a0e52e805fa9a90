"""Codex CLI and Gemini CLI turns in the console's own checks (the transcript folded from deltas equals the
final one; a cut response resumes to the same transcript), a session the CLI forgot, the MCP server
each CLI is given, `GET /api/agents` (Claude Code too), and the 422s at session creation, for the same
reasons the listing gives."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from agentwire import providers
from agentwire.console.transcript import TERMINAL
from agentwire.providers import agent_mcp
from agentwire.providers.agent_mcp import McpServer
from tests.fakes import llm_servers as fake
from tests.support import claude_code as cc
from tests.support.agent_clis import (
    AGENTS,
    FAKE,
    MODEL,
    VERSION,
    AgentHome,
    agent_session,
    config,
)
from tests.support.paths import ROOT, TESTS
from tests.support.server import running_app
from tests.support.turns import comparable, create_session, follow_until, post_turn_cut, run_turn, transcript_of

pytestmark = pytest.mark.timeout(180)



SHELL = {"codex": ("exec_command", {"cmd": "printf 'listed %s\\n' files"}),
         "gemini-cli": ("run_shell_command", {"command": "printf 'listed %s\\n' files", "description": "list"})}
ANSWER = "I listed the files; there are none worth mentioning, so the directory is as clean as it gets."


def _script(home: AgentHome, agent: str) -> None:
    home.llm.enqueue(fake.tool_call(*SHELL[agent]), fake.text(ANSWER), provider=FAKE[agent])


def _terminal(event: dict[str, object]) -> bool:
    return event.get("seq") is not None and event["type"] in TERMINAL


@pytest.mark.parametrize("agent", AGENTS)
def test_the_transcript_from_deltas_equals_the_final_one_and_a_cut_resumes_to_it(
        agent_home: AgentHome, agent: str, tmp_path: Path) -> None:
    options = {"cwd": str(tmp_path), "approval": "full"}
    with running_app(config()) as (url, _):
        create_session(url, "reference", provider=agent, model=MODEL[agent], options=options)
        _script(agent_home, agent)
        events = run_turn(url, "reference", "List the files")
        assert events[-1]["type"] == "turn.completed", events[-1]
        expected = comparable(transcript_of(events))
        kinds = [entry["kind"] for entry in expected["entries"]]
        assert kinds == ["message", "tool", "text", "turn.completed"], kinds
        # The server's fold, and a replay that folds finished blocks, show what the deltas showed.
        messages = httpx.get(f"{url}/api/konsole/reference/messages").json()["messages"]
        assert [e["text"] for e in messages if e["kind"] == "text"] == [ANSWER]
        folded = follow_until(url, "reference", 0, _terminal, params={"fold": 1})
        assert comparable(transcript_of(folded)) == expected
        cut_short = 0
        for number, cut_at in enumerate((350, 1500, 3000)):
            name = f"cut-{number}"
            create_session(url, name, provider=agent, model=MODEL[agent], options=options)
            _script(agent_home, agent)
            before = [e for e in post_turn_cut(url, name, "List the files", cut_at) if e.get("seq") is not None]
            cut_short += not (before and _terminal(before[-1]))
            rest = [] if before and _terminal(before[-1]) else follow_until(
                url, name, before[-1]["seq"] if before else 0, _terminal)
            resumed = before + [e for e in rest if e.get("seq") is not None and e.get("turn")]
            assert [e["seq"] for e in resumed] == sorted({e["seq"] for e in resumed})
            assert comparable(transcript_of(resumed)) == expected, f"{agent} transcript differs at cut {cut_at}"
        assert cut_short == 3, "every cut fell inside the turn"


@pytest.mark.parametrize("agent", AGENTS)
def test_a_session_the_cli_forgot_starts_afresh(agent_home: AgentHome, agent: str, tmp_path: Path) -> None:
    agent_home.llm.enqueue(fake.text("One."), fake.text("Two."), provider=FAKE[agent])
    with running_app(config()) as (url, _):
        agent_session(url, agent, tmp_path)
        first = run_turn(url, "s", "One?")
        # The CLI's own record of the conversation is gone (another machine, a cleaned home).
        shutil.rmtree(agent_home.codex_home / "sessions" if agent == "codex" else agent_home.home / ".gemini" / "tmp")
        second = run_turn(url, "s", "Two?")
    assert second[-1]["type"] == "turn.completed", second[-1]
    ids = [next(e["data"]["resume_id"] for e in turn if e["type"] == "agent.info") for turn in (first, second)]
    assert ids[0] != ids[1]


@pytest.mark.parametrize("agent", AGENTS)
def test_the_cli_starts_the_mcp_server_it_is_given_and_calls_it(
        agent_home: AgentHome, agent_cache: Path, agent: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "probe.log"
    probe = McpServer("probe", [sys.executable, str(TESTS / "support" / "mcp_probe.py"), str(log)])
    monkeypatch.setattr(agent_mcp, "board_server", lambda io: probe)
    # How each CLI names a server's tool: Codex in a namespace, Gemini CLI with a prefix.
    tool = {"codex": "mcp__probe/probe_note", "gemini-cli": "mcp_probe_probe_note"}[agent]
    agent_home.llm.enqueue(fake.tool_call(tool, {"text": "card published"}), fake.text("Noted."), provider=FAKE[agent])
    with running_app(config()) as (url, _):
        agent_session(url, agent, tmp_path)
        events = run_turn(url, "s", "Publish a card")
    assert log.read_text().splitlines() == ["started", "called card published"]
    call = next(e["data"] for e in events if e["type"] == "tool.call")
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert call["name"] in ("mcp__probe__probe_note", "mcp_probe_probe_note") and call["input"] == {
        "text": "card published"}
    assert result["output"] == "noted: card published" and result["is_error"] is False
    assert list(agent_cache.glob("agentwire/*")) == []  # Gemini's settings file is gone after the run


@pytest.mark.parametrize("agent", AGENTS)
def test_the_cli_publishes_a_card_of_its_session_through_agentwire_mcp(
        agent_home: AgentHome, agent_cache: Path, agent: str, tmp_path: Path) -> None:
    """The real board server (`agentwire mcp`, as `board_server` names it), behind a token."""
    tool = {"codex": "mcp__agentwire/task_create", "gemini-cli": "mcp_agentwire_task_create"}[agent]
    card = {"title": "Tests are green", "output": "<p>All <b>12</b> pass<script>alert(1)</script></p>",
            "choices": [{"label": "Ship", "value": "Ship it"}]}
    agent_home.llm.enqueue(fake.tool_call(tool, card), fake.text("Published."), provider=FAKE[agent])
    auth = {"authorization": "Bearer mcp-wiring-token"}
    with running_app(config(no_auth=False, token="mcp-wiring-token")) as (url, _):
        create_session(url, "s", headers=auth, provider=agent, model=MODEL[agent],
                       options={"cwd": str(tmp_path), "approval": "read-only"})
        events = run_turn(url, "s", "Publish the result", headers=auth)
        assert events[-1]["type"] == "turn.completed", events[-1]
        result = next(e["data"] for e in events if e["type"] == "tool.result")
        assert result["is_error"] is False, result
        (task,) = httpx.get(f"{url}/api/tasks", headers=auth, timeout=10).json()["tasks"]
    assert (task["title"], task["session"], task["createdBy"]) == ("Tests are green", "s", agent)
    assert task["context"]["output"] == "<p>All <b>12</b> pass</p>"
    assert task["context"]["choices"] == [{"label": "Ship", "value": "Ship it", "primary": False}]
    assert task["id"] in result["output"]
    assert list(agent_cache.glob("agentwire/*")) == []


def test_agents_are_listed_with_version_and_availability(agent_home: AgentHome, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch, running_app(config(codex_bin=None, gemini_bin=str(ROOT / "no-gemini"))) as (
            url, _):
        patch.setenv("PATH", str(tmp_path))  # no codex on PATH, and no --codex-bin
        listed = {a["name"]: a for a in httpx.get(f"{url}/api/agents").json()["agents"]}
    assert {"scripted", "cli", "anthropic", "openai", "gemini", "codex", "gemini-cli"} <= set(listed)
    assert listed["scripted"]["available"] is True
    gemini = listed["gemini-cli"]
    assert gemini["available"] is False and gemini["version"] is None
    assert "no-gemini" in gemini["reason"] and "--gemini-bin" in gemini["reason"]
    assert listed["codex"]["available"] is False and "'codex' is not on PATH" in listed["codex"]["reason"]
    with running_app(config()) as (url, _):
        listed = {a["name"]: a for a in httpx.get(f"{url}/api/agents").json()["agents"]}
    for agent in AGENTS:
        assert listed[agent] | {"label": None} == {"name": agent, "label": None, "version": VERSION[agent],
                                                   "available": True, "reason": None, "approval": True}
    # Claude Code: the CLI claude-agent-sdk bundles, whatever PATH has; it takes no approval option.
    assert listed["claude"] == {"name": "claude", "label": "Claude Code", "version": cc.VERSION, "available": True,
                                "reason": None, "approval": False}


def test_a_missing_python_package_is_one_reason_for_the_422_and_the_listing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    info = providers.PROVIDERS["openai"]
    monkeypatch.setitem(providers.PROVIDERS, "openai", dataclasses.replace(info, requires="no-such-sdk-here"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with running_app(config()) as (url, _):
        response = httpx.post(f"{url}/api/konsole", json={"name": "s", "provider": "openai"})
        listed = {a["name"]: a for a in httpx.get(f"{url}/api/agents").json()["agents"]}
    reason = "provider 'openai' needs the Python package no-such-sdk-here: pip install 'agentwire[providers]'"
    assert response.status_code == 422 and response.json()["error"] == {
        "code": "provider_unavailable", "message": reason, "field": "provider"}
    assert listed["openai"] == {"name": "openai", "label": "OpenAI API", "version": None, "available": False,
                                "reason": reason, "approval": False}
    assert listed["anthropic"]["version"] == importlib.metadata.version("anthropic")


@pytest.mark.parametrize(("agent", "variable"), [("codex", "FAKE_RESPONSES_KEY"), ("gemini-cli", "GEMINI_API_KEY")])
def test_a_missing_key_or_binary_is_a_422_naming_it(agent_home: AgentHome, agent: str, variable: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(variable)
    with running_app(config()) as (url, _):
        response = httpx.post(f"{url}/api/konsole", json={"name": "s", "provider": agent})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "provider_unavailable"
        assert variable in response.json()["error"]["message"]
        assert httpx.get(f"{url}/api/konsole/s").status_code == 404
    monkeypatch.setenv(variable, "set-again")
    with running_app(config(codex_bin=str(ROOT / "missing-codex"), gemini_bin=str(ROOT / "missing-gemini"))) as (
            url, _):
        response = httpx.post(f"{url}/api/konsole", json={"name": "s", "provider": agent})
        assert response.status_code == 422 and "missing-" in response.json()["error"]["message"]
        bad = httpx.post(f"{url}/api/konsole", json={"name": "t", "provider": "scripted",
                                                     "options": {"approval": "everything"}})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "options.approval"
