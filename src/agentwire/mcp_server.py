"""The board tools over MCP, as the server named `agentwire` (an agent sees `mcp__agentwire__task_create`
and `mcp__agentwire__task_update`), both from the one definition in `board_tools.py`:

- `sdk_server(run)`: in process, for the `claude` provider: claude-agent-sdk's `create_sdk_mcp_server`,
  whose calls travel over Claude Code's own control channel (nothing listens anywhere);
- `agentwire mcp` (`serve_stdio`): a stdio server on the official `mcp` SDK for every other
  MCP-capable agent — Codex, Gemini CLI, or Claude Code outside agentwire — which reaches the board
  over the server's REST API (`--url`, `--token`) on behalf of one session (`--session`).

A call with bad input is answered as a tool error the agent can read and correct (`isError`, as the
MCP specification asks for errors that come from the tool); a call of a tool that does not exist is
an MCP error. Neither ends the server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from agentwire.board_tools import BOARD_TOOLS, run_board_tool
from agentwire.providers import ToolOutcome
from agentwire.tasks import TaskIn, TaskPatch
from agentwire.types import JSON, AgentwireError

if TYPE_CHECKING:
    from claude_agent_sdk import McpSdkServerConfig
    from mcp.server import Server

log = logging.getLogger("agentwire.mcp")

SERVER_NAME = "agentwire"
TOOL_PREFIX = f"mcp__{SERVER_NAME}__"  # how Claude Code names the tools of the server
VERSION = "1"
ToolRunner = Callable[[str, JSON], Awaitable[ToolOutcome]]


def sdk_server(run: ToolRunner) -> McpSdkServerConfig:
    """The in-process server for claude-agent-sdk (`ClaudeAgentOptions.mcp_servers`)."""
    from claude_agent_sdk import SdkMcpTool, create_sdk_mcp_server

    def handler(name: str) -> Callable[[Any], Awaitable[dict[str, Any]]]:
        async def call(arguments: Any) -> dict[str, Any]:
            outcome = await run(name, arguments if isinstance(arguments, dict) else {})
            return {"content": [{"type": "text", "text": outcome.output}], "is_error": outcome.is_error}

        return call

    tools: list[SdkMcpTool[Any]] = [SdkMcpTool(spec.name, spec.description, spec.input_schema, handler(spec.name))
                                    for spec in BOARD_TOOLS]
    return create_sdk_mcp_server(SERVER_NAME, VERSION, tools)


def stdio_server(run: ToolRunner) -> Server[Any]:
    """The same tools on a lowlevel `mcp` server (the tool list is fixed, so no decorators)."""
    from mcp.server import Server
    from mcp.shared.exceptions import MCPError
    from mcp.types import INVALID_PARAMS, CallToolResult, ListToolsResult, TextContent, Tool

    tools = [Tool(name=spec.name, description=spec.description, input_schema=spec.input_schema)
             for spec in BOARD_TOOLS]
    names = {spec.name for spec in BOARD_TOOLS}

    async def list_tools(ctx: Any, params: Any) -> ListToolsResult:
        return ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: Any) -> CallToolResult:
        if params.name not in names:
            raise MCPError(INVALID_PARAMS, f"unknown tool {params.name!r}: this server has {', '.join(sorted(names))}")
        outcome = await run(params.name, dict(params.arguments or {}))
        return CallToolResult(content=[TextContent(type="text", text=outcome.output)], is_error=outcome.is_error)

    server: Server[Any] = Server(SERVER_NAME, version=VERSION, on_list_tools=list_tools, on_call_tool=call_tool)
    return server


class RestBoard:
    """`board_tools.BoardAccess` over the server's REST API: the board of an agentwire server that an
    agent outside it publishes to."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def create(self, body: TaskIn) -> JSON:
        return await self._call("POST", "/api/tasks", body.model_dump(mode="json", exclude_none=True))

    async def get(self, task_id: str) -> JSON:
        return await self._call("GET", f"/api/tasks/{quote(task_id, safe='')}")

    async def update(self, task_id: str, patch: TaskPatch) -> JSON:
        return await self._call("PATCH", f"/api/tasks/{quote(task_id, safe='')}",
                                patch.model_dump(mode="json", exclude_unset=True))

    async def _call(self, method: str, path: str, body: JSON | None = None) -> JSON:
        try:
            response = await self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise AgentwireError(f"cannot reach agentwire at {self.client.base_url}: {exc}",
                                 code="unreachable", status=502) from exc
        try:
            answer: JSON = response.json()
        except ValueError:
            answer = {}
        if response.is_success:
            return answer
        error = answer.get("error")
        if not isinstance(error, dict):
            error = {}
        raise AgentwireError(str(error.get("message") or f"HTTP {response.status_code}"),
                             code=str(error.get("code") or "http_error"), status=response.status_code)


async def serve_stdio(url: str, token: str | None, session: str, agent: str) -> None:
    """`agentwire mcp`: serve the board tools on stdin/stdout until the agent closes them."""
    from mcp.server.stdio import stdio_server as stdio

    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=30) as client:
        board = RestBoard(client)

        async def run(name: str, input: JSON) -> ToolOutcome:
            return await run_board_tool(board, name, input, session=session, agent=agent)

        server = stdio_server(run)
        async with stdio() as (read, write):
            await server.run(read, write, server.create_initialization_options())
