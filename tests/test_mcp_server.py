"""The board tools over MCP, driven by the official MCP SDK's client: `agentwire mcp` as an agent starts
it (a subprocess on stdio, reaching a running server's REST API), and the in-process server the
`claude` provider hands Claude Code (connected in process). Both list the same tools with the same
JSON schemas; a call with bad input is a tool error the agent reads (the server lives on), a tool
that does not exist an MCP error. With the real Claude Code outside agentwire (the README's
`.mcp.json`): tests/providers/test_claude_steering.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult

from agentwire.board_tools import BOARD_TOOLS, run_board_tool
from agentwire.mcp_server import RestBoard, sdk_server
from agentwire.providers import PROVIDERS, ProviderInfo, ToolOutcome, TurnIO
from agentwire.types import JSON
from tests.support.eventually import eventually
from tests.support.server import free_port, running_app
from tests.support.turns import create_session, run_turn

TOKEN = "mcp-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    journal = f"sqlite:///{tmp_path_factory.mktemp('mcp')}/journal.db"
    with running_app(journal=journal, token=TOKEN) as (served, _):
        yield served


def stdio(url: str, session: str, agent: str = "codex", token: str = TOKEN) -> StdioServerParameters:
    """`agentwire mcp` as an agent's MCP configuration starts it (the token in its environment)."""
    return StdioServerParameters(command=sys.executable, args=["-m", "agentwire", "mcp", "--url", url,
                                                               "--session", session, "--agent", agent],
                                 env={"AGENTWIRE_TOKEN": token})


@asynccontextmanager
async def connected(kind: str, url: str, session: str, agent: str = "codex") -> AsyncIterator[Client]:
    if kind == "stdio":
        async with Client(stdio(url, session, agent), mode="legacy") as client:  # the handshake agents use today
            yield client
        return
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        board = RestBoard(http)

        async def run(name: str, input: JSON) -> ToolOutcome:
            return await run_board_tool(board, name, input, session=session, agent=agent)

        async with Client(sdk_server(run)["instance"]) as client:
            yield client


def call(kind: str, url: str, session: str, *calls: tuple[str, JSON], agent: str = "codex") -> list[CallToolResult]:
    async def scenario() -> list[CallToolResult]:
        async with connected(kind, url, session, agent) as client:
            return [await client.call_tool(name, arguments) for name, arguments in calls]

    return anyio.run(scenario)


def text(result: CallToolResult) -> str:
    (content,) = result.content
    assert content.type == "text"
    return content.text


def card(url: str, task_id: str) -> JSON:
    task: JSON = httpx.get(f"{url}/api/tasks/{task_id}", headers=AUTH, timeout=10).raise_for_status().json()
    return task


KINDS = pytest.mark.parametrize("kind", ["stdio", "sdk"])


@KINDS
def test_the_tools_are_listed_with_their_schemas(url: str, kind: str) -> None:
    async def scenario() -> tuple[Any, list[Any]]:
        async with connected(kind, url, "listing") as client:
            return client.server_info, (await client.list_tools()).tools

    server_info, tools = anyio.run(scenario)
    assert server_info is not None and server_info.name == "agentwire"
    assert [(t.name, t.description, t.input_schema) for t in tools] == [
        (spec.name, spec.description, spec.input_schema) for spec in BOARD_TOOLS]
    assert tools[0].input_schema["required"] == ["title"] and tools[1].input_schema["required"] == ["id"]


@KINDS
def test_task_create_publishes_a_sanitized_card_of_the_session(url: str, kind: str) -> None:
    session = f"pub-{kind}"
    create_session(url, session, headers=AUTH, options={"deltas": 3, "delay_ms": 0})
    (created,) = call(kind, url, session, ("task_create", {
        "title": "Review the parser", "description": "Two fixes", "status": "in_progress", "tags": ["parser"],
        "output": '<p onmouseover="x()">Fix <b>A</b><script>alert(1)</script></p>',
        "choices": [{"label": "A", "value": "Take fix A", "primary": True}, {"label": "B", "value": "Take fix B"}]}))
    assert not created.is_error
    answer = orjson.loads(text(created))
    task = card(url, answer["id"])
    assert answer == {"id": task["id"], "status": "in_progress"}
    assert (task["session"], task["createdBy"], task["title"], task["tags"]) == (session, "codex",
                                                                                 "Review the parser", ["parser"])
    assert task["context"]["output"] == "<p>Fix <b>A</b></p>"
    assert task["context"]["choices"][0] == {"label": "A", "value": "Take fix A", "primary": True}
    # A choice clicked on it is the session's next message.
    chosen = httpx.post(f"{url}/api/tasks/{task['id']}/choose", json={"value": "Take fix B"}, headers=AUTH,
                        timeout=10).raise_for_status().json()
    messages = httpx.get(f"{url}/api/konsole/{session}/messages", headers=AUTH, timeout=10).json()["messages"]
    assert {"turn": chosen["turn"]["id"], "text": "Take fix B"} in [
        {"turn": m["turn"], "text": m["text"]} for m in messages if m["kind"] == "message"]
    (updated,) = call(kind, url, session, ("task_update", {"id": task["id"], "status": "completed",
                                                           "output": "<i>done</i>"}))
    assert not updated.is_error and orjson.loads(text(updated)) == {"id": task["id"], "status": "completed"}
    assert card(url, task["id"])["context"]["output"] == "<i>done</i>"
    eventually(lambda: not httpx.get(f"{url}/api/konsole/{session}/state", headers=AUTH, timeout=10).json()["running"])


@KINDS
def test_bad_input_is_a_tool_error_and_the_server_lives_on(url: str, kind: str) -> None:
    session = f"bad-{kind}"
    other = call(kind, url, "someone-else", ("task_create", {"title": "Not yours"}))[0]
    foreign = orjson.loads(text(other))["id"]
    results = call(kind, url, session,
                   ("task_create", {"description": "no title"}),
                   ("task_create", {"title": "x", "status": "done"}),
                   ("task_create", {"title": "x", "choices": [{"label": "only a label"}]}),
                   ("task_update", {"id": "no-such-card", "status": "completed"}),
                   ("task_update", {"id": foreign, "status": "completed"}),
                   ("task_create", {"title": "Still here"}))
    *bad, fine = results
    assert all(result.is_error for result in bad), [text(r) for r in bad]
    messages = [text(result) for result in bad]
    # Each names what is wrong (claude-agent-sdk checks the schema first, in its own words).
    assert "title" in messages[0] and ("status" in messages[1] or "'done'" in messages[1]) and "value" in messages[2]
    assert "no task with id 'no-such-card'" in messages[3]
    assert messages[4] == f"task_update failed: task {foreign!r} belongs to session 'someone-else', not to this one"
    assert card(url, foreign)["status"] == "pending"
    assert not fine.is_error and card(url, orjson.loads(text(fine))["id"])["session"] == session


@KINDS
def test_a_tool_that_does_not_exist_is_an_mcp_error(url: str, kind: str) -> None:
    async def scenario() -> tuple[MCPError | CallToolResult, CallToolResult]:
        async with connected(kind, url, "unknown") as client:
            try:
                missing: MCPError | CallToolResult = await client.call_tool("task_delete", {"id": "x"})
            except MCPError as exc:
                missing = exc
            return missing, await client.call_tool("task_create", {"title": "After the error"})

    missing, after = anyio.run(scenario)
    if kind == "stdio":
        assert isinstance(missing, MCPError) and missing.code == INVALID_PARAMS
        assert missing.message == "unknown tool 'task_delete': this server has task_create, task_update"
    else:  # claude-agent-sdk answers an unknown tool with a tool error of its own making
        assert isinstance(missing, CallToolResult) and missing.is_error and "task_delete" in text(missing)
    assert not after.is_error


def test_a_wrong_token_or_no_server_is_a_readable_tool_error(url: str) -> None:
    async def scenario(params: StdioServerParameters) -> CallToolResult:
        async with Client(params, mode="legacy") as client:
            return await client.call_tool("task_create", {"title": "x"})

    refused = anyio.run(scenario, stdio(url, "tokens", token="wrong"))
    assert refused.is_error and text(refused).startswith("task_create failed: ") and "token" in text(refused)
    gone = anyio.run(scenario, stdio(f"http://127.0.0.1:{free_port()}", "tokens"))
    assert gone.is_error and "cannot reach agentwire at http://127.0.0.1:" in text(gone)


def test_agentwire_mcp_needs_a_session(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "agentwire", "mcp", "--url", "http://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("agentwire mcp: --session (or AGENTWIRE_SESSION) names the session the cards "
                                   "belong to")
    bad = subprocess.run([sys.executable, "-m", "agentwire", "mcp", "--session", "no spaces"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "bad session name 'no spaces'" in bad.stderr


class McpAgent:
    """An agent provider as the CLI agents are wired (issue 16's `agent_mcp.board_server`): it starts
    the MCP server the turn names (`io.mcp_command()`) and publishes a card through it."""

    name = "mcp-agent"

    def __init__(self, model: str, options: JSON) -> None:
        self.model = model

    async def close(self) -> None:
        pass

    async def run(self, io: TurnIO) -> None:
        command, env = io.mcp_command()
        async with Client(StdioServerParameters(command=command[0], args=command[1:], env=env), mode="legacy") as c:
            result = await c.call_tool("task_create", {"title": io.message, "choices": [
                {"label": "Again", "value": "Publish it again"}]})
        await io.text_done(0, text(result))


def test_a_turn_names_the_mcp_server_its_agent_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(PROVIDERS, "mcp-agent", ProviderInfo(f"{__name__}:McpAgent", None, "m"))
    # host 0.0.0.0: the agent reaches it through loopback
    with running_app(journal=f"sqlite:///{tmp_path}/j.db", token=TOKEN, host="0.0.0.0") as (served, _):
        create_session(served, "agent-cards", headers=AUTH, provider="mcp-agent")
        events = run_turn(served, "agent-cards", "Card from the agent", headers=AUTH)
        assert events[-1]["type"] == "turn.completed"
        (done,) = [e["data"]["text"] for e in events if e["type"] == "text.done"]
        task = card(served, orjson.loads(done)["id"])
        assert (task["title"], task["session"], task["createdBy"]) == ("Card from the agent", "agent-cards",
                                                                       "mcp-agent")
