"""A stdio MCP server for the agent CLIs, added for one run without touching the user's configuration.

`board_server(io)` is the server agentwire gives every Codex and Gemini CLI turn: its board tools,
`agentwire mcp` for the turn's session (`TurnIO.mcp_command`: the command, and the server's URL and
token in its environment). What each CLI is told:

- Codex: `-c mcp_servers.<name>.…` overrides (`command`, `args`, `env_vars`: the names of the server's
  variables, whose values Codex's own environment carries), `required = true` so Codex
  waits for the server before its first model call (without it, a server that takes a second to start
  — any Python one — is missing from that call's tools), and `default_tools_approval_mode = "approve"`,
  since our own tools never ask for permission (without it a read-only run refuses them: "MCP tool call
  requires approval, but approval policy is never").
- Gemini CLI: a "system defaults" settings file (`GEMINI_CLI_SYSTEM_DEFAULTS_PATH`), the lowest
  settings layer, so the user's own settings still win; `mcpServers` are merged by name across layers.
  The server is `trust`ed (no confirmation). Gemini CLI ignores a system settings file in a directory
  others may write to (as /tmp), so the file lives in agentwire's own directory under the user's cache
  (`$XDG_CACHE_HOME/agentwire`, mode 0700). System defaults the machine already has are kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agentwire.providers import TurnIO

log = logging.getLogger("agentwire.providers")

NAME = "agentwire"
GEMINI_DEFAULTS_VARIABLE = "GEMINI_CLI_SYSTEM_DEFAULTS_PATH"
_GEMINI_MACHINE_DEFAULTS = Path("/etc/gemini-cli/system-defaults.json")


@dataclass(frozen=True, slots=True)
class McpServer:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def board_server(io: TurnIO) -> McpServer | None:
    """The MCP server an agent CLI gets for this turn: agentwire's board tools (`agentwire mcp`), its
    cards in the turn's session, `createdBy` the provider's name."""
    return McpServer(NAME, *io.mcp_command())


def codex_overrides(server: McpServer) -> list[str]:
    """The server's `env` goes by name only (`env_vars`: Codex hands the server those variables of its
    own environment, `codex_environment`): a value on Codex's command line, like the server's token,
    would be readable by every user of the machine in `ps`."""
    key = f"mcp_servers.{server.name}"
    values = {"command": toml(server.command[0]), "args": toml(server.command[1:]), "required": "true",
              "default_tools_approval_mode": toml("approve")}
    if server.env:
        values["env_vars"] = toml(sorted(server.env))
    return [part for name, value in values.items() for part in ("-c", f"{key}.{name}={value}")]


def codex_environment(server: McpServer | None) -> dict[str, str]:
    """What Codex's own environment adds for `server` (the values `codex_overrides` names)."""
    return dict(server.env) if server is not None else {}


def toml(value: str | list[str]) -> str:
    """A TOML string or array of strings. JSON's string escapes are TOML's, except that TOML wants DEL
    escaped too, and `ensure_ascii=False` keeps characters outside the BMP out of surrogate escapes."""
    if isinstance(value, list):
        return "[" + ", ".join(toml(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def writable_by_others(path: Path) -> Path | None:
    """The first of `path` and its parents that a group or other users may write to (Gemini CLI's
    rule for a settings file it will read), or None when there is none."""
    for directory in (path, *path.parents):
        with contextlib.suppress(OSError):
            if directory.stat().st_mode & 0o022:
                return directory
    return None


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agentwire"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


@contextlib.contextmanager
def gemini_settings(server: McpServer, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The environment (`env` plus the settings variable) for a Gemini CLI run that has `server`; the
    settings file is removed when the run is over."""
    current = Path(env.get(GEMINI_DEFAULTS_VARIABLE) or _GEMINI_MACHINE_DEFAULTS)
    try:
        settings = json.loads(current.read_text()) if current.exists() else {}
    except (OSError, ValueError):
        settings = {}  # Gemini CLI would not use it either
    if not isinstance(settings, dict):
        settings = {}
    servers = settings.get("mcpServers")
    if not isinstance(servers, dict):
        servers = settings["mcpServers"] = {}
    servers[server.name] = {"command": server.command[0], "args": server.command[1:], "env": server.env,
                            "trust": True}
    directory = cache_dir()
    if (insecure := writable_by_others(directory)) is not None:
        log.warning("Gemini CLI will not read agentwire's MCP settings in %s: others may write to %s "
                    "(set XDG_CACHE_HOME to a private directory)", directory, insecure)
    handle, path = tempfile.mkstemp(prefix="gemini-", suffix=".json", dir=directory)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(settings, file)
        yield {**env, GEMINI_DEFAULTS_VARIABLE: path}
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
