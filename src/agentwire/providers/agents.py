"""Which agents this server can run, and why not: `GET /api/agents` and the 422 at session creation
(`check_provider`, with `cli_missing` as the agent CLIs' `ProviderInfo.check`).

Agent CLIs (Claude Code, Codex, Gemini CLI) are found where the server's setting for them says
(`--claude-bin`, `--codex-bin`, `--gemini-bin`, given to the provider in its options by
`Console._options`), else Claude Code is the one claude-agent-sdk bundles and the others are looked
up on PATH; they are available when the binary is found and the user's own configuration has
credentials for it. Versions come from `<binary> --version`, cached per binary file and asked with a
timeout, so a hanging CLI cannot hold up the listing. SDK providers are available when their key
variable is set; their version is their SDK's.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentwire.types import JSON, AgentwireError

VERSION_TIMEOUT = 15.0  # seconds: a Node CLI on a busy machine takes a few
_VERSION = re.compile(r"\d+\.\d+[\w.+-]*")


@dataclass(frozen=True, slots=True)
class AgentCli:
    label: str
    binary: str  # looked up on PATH unless the server names another (or `bundled` has one)
    option: str  # the provider option the server's setting for another binary arrives in
    flag: str  # that setting's flag
    env: str  # …and its environment twin
    credentials: Callable[[], str | None]  # None when credentials are there, else what is missing
    version_env: tuple[tuple[str, str], ...] = ()
    bundled: Callable[[], str | None] | None = None  # the copy a Python package brings, if it has one
    approval: bool = False  # honours the session option `approval`


def codex_home() -> Path:
    return Path(os.environ.get("CODEX_HOME") or Path.home() / ".codex")


def codex_credentials() -> str | None:
    """Codex reads `$CODEX_HOME/config.toml`: a custom model provider names its key variable
    (`env_key`); the built-in OpenAI provider needs a login (`auth.json`) or OPENAI_API_KEY/CODEX_API_KEY."""
    path = codex_home() / "config.toml"
    try:
        config = tomllib.loads(path.read_text()) if path.exists() else {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return f"codex cannot use its configuration {path}: {exc}"
    provider_id = str(config.get("model_provider") or "openai")
    provider = (config.get("model_providers") or {}).get(provider_id)
    if isinstance(provider, dict):
        key = provider.get("env_key")
        if isinstance(key, str) and key and not os.environ.get(key):
            return f"codex needs an API key: set {key} (env_key of model provider {provider_id!r} in {path})"
        if not provider.get("requires_openai_auth"):
            return None
    elif provider_id != "openai":
        return None  # a built-in local provider (ollama, lmstudio): nothing to sign in to
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("CODEX_API_KEY") or (codex_home() / "auth.json").exists():
        return None
    return "codex is not signed in: run `codex login`, or set OPENAI_API_KEY"


def gemini_credentials() -> str | None:
    """Gemini CLI takes a key from the environment (or `~/.gemini/.env`), Vertex AI settings, or a Google
    login it keeps in `~/.gemini/oauth_creds.json`."""
    if any(os.environ.get(name) for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY")):
        return None
    if any(os.environ.get(name) == "true" for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA")):
        return None
    home = Path(os.environ.get("GEMINI_CLI_HOME") or Path.home()) / ".gemini"
    if (home / "oauth_creds.json").exists():
        return None
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if re.search(r"^\s*(export\s+)?GEMINI_API_KEY\s*=\s*\S", (home / ".env").read_text(), re.M):
            return None
    return "gemini-cli needs an API key: set GEMINI_API_KEY (or sign in by running `gemini` once)"


def claude_bundled() -> str | None:
    """The Claude Code CLI claude-agent-sdk runs unless told another: the copy it bundles (the SDK's
    own lookup, `_bundled/claude` beside its package), if the package is installed."""
    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "_bundled" / "claude"
    return str(path) if path.is_file() else None


CLIS: dict[str, AgentCli] = {
    # Claude Code signs in to an account or takes ANTHROPIC_API_KEY: not checked (it says so itself).
    "claude": AgentCli("Claude Code", "claude", "claude_bin", "--claude-bin", "AGENTWIRE_CLAUDE_BIN",
                       lambda: None, bundled=claude_bundled),
    "codex": AgentCli("Codex CLI", "codex", "codex_bin", "--codex-bin", "AGENTWIRE_CODEX_BIN", codex_credentials,
                      approval=True),
    # Without NO_RELAUNCH, Gemini CLI starts a second copy of itself just to print its version.
    "gemini-cli": AgentCli("Gemini CLI", "gemini", "gemini_bin", "--gemini-bin", "AGENTWIRE_GEMINI_BIN",
                           gemini_credentials, (("GEMINI_CLI_NO_RELAUNCH", "1"),), approval=True),
}
LABELS = {"scripted": "Scripted demo agent", "cli": "Stream-json CLI command", "anthropic": "Anthropic API",
          "openai": "OpenAI API", "gemini": "Gemini API"}

_versions: dict[tuple[str, float], str | None] = {}


def _named(name: str, options: JSON) -> str | None:
    """The binary the server's setting names for provider `name` (in its options), if any."""
    named = options.get(CLIS[name].option)
    return named if isinstance(named, str) and named else None


def find(name: str, options: JSON) -> str | None:
    """The full path of the CLI for provider `name` with these options, or None when there is none."""
    named = _named(name, options)
    if named is not None:
        return shutil.which(named)
    bundled = CLIS[name].bundled
    return (bundled() if bundled is not None else None) or shutil.which(CLIS[name].binary)


def cli_missing(name: str, options: JSON) -> str | None:
    """Why provider `name` (an agent CLI) cannot run here with these options, or None."""
    cli = CLIS[name]
    if find(name, options) is None:
        named = _named(name, options)
        where = f"{named!r} is not an executable" if named else f"{cli.binary!r} is not on PATH"
        return f"{name}: {where}; install {cli.label} or point {cli.flag} / {cli.env} at it"
    return cli.credentials()


async def version(name: str, options: JSON) -> str | None:
    """`<binary> --version` of the CLI for provider `name`, cached per binary file (path, mtime)."""
    path = find(name, options)
    if path is None:
        return None
    try:
        key = (path, os.stat(path).st_mtime)
    except OSError:
        return None
    if key not in _versions:
        _versions[key] = await _ask_version(path, dict(CLIS[name].version_env))
    return _versions[key]


async def _ask_version(path: str, env: dict[str, str]) -> str | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            path, "--version", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env={**os.environ, **env})
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), VERSION_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None
    found = _VERSION.search(out.decode(errors="replace"))
    return found.group(0) if found else None


async def describe(name: str, options: JSON, cli_command: list[str]) -> JSON:
    """One entry of `GET /api/agents`: {name, label, version, available, reason, approval}. `options`:
    the server's settings for the provider (`Console.settings`)."""
    from agentwire.providers import PROVIDERS, check_provider, package_version

    cli, requires = CLIS.get(name), PROVIDERS[name].requires
    entry: JSON = {"name": name, "label": cli.label if cli else LABELS.get(name, name), "version": None,
                   "available": True, "reason": None, "approval": bool(cli and cli.approval)}
    try:
        check_provider(name, options)
    except AgentwireError as exc:
        entry["reason"] = exc.message
    if cli is not None:  # the CLI's own version (for Claude Code: the one the SDK bundles, unless named)
        entry["version"] = await version(name, options)
    elif requires is not None:
        entry["version"] = package_version(requires)
    elif name == "scripted":
        entry["version"] = package_version("agentwire")
    elif name == "cli" and cli_command and shutil.which(cli_command[0]) is None:
        entry["reason"] = entry["reason"] or f"cli: {cli_command[0]!r} (the server's --cli-command) is not on PATH"
    entry["available"] = entry["reason"] is None
    return entry
