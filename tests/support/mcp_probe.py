"""A tiny stdio MCP server (official `mcp` SDK) that records, in the file named by its first argument,
that it started and every call of its one tool, `probe_note` — to show an agent CLI really started a
configured MCP server and called it."""

from __future__ import annotations

import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

server = MCPServer("probe")
LOG = Path(sys.argv[1])


@server.tool()
def probe_note(text: str) -> str:
    """Write a note into the probe's log."""
    with LOG.open("a") as log:
        log.write(f"called {text}\n")
    return f"noted: {text}"


if __name__ == "__main__":
    with LOG.open("a") as log:
        log.write("started\n")
    server.run("stdio")
