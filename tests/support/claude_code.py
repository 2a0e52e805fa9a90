"""The real Claude Code CLI for tests: the one claude-agent-sdk bundles (so the Python lock pins it),
run against the project's Anthropic fake with a HOME of its own, and the processes it leaves."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import claude_agent_sdk
import pytest

from tests.fakes.llm_servers import FakeLLMServer
from tests.support.eventually import eventually
from tests.support.procs import started_at, with_environ
from tests.support.server import running_app
from tests.support.turns import create_session

__all__ = ["BUNDLED", "MODEL", "SLEEP", "VERSION", "Env", "agents", "claude_env", "claude_server", "make_home",
           "patched_env", "processes", "sleeping", "started_at", "user_texts"]

BUNDLED = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
VERSION = (BUNDLED.parent / "claude.version").read_text().split()[0]  # "2.1.332 (Claude Code)"
MODEL = "claude-sonnet-4-5"
# A command Claude Code runs in the Bash tool for a long time (a bare `sleep 300` it refuses).
SLEEP = "echo started && sleep 300 && echo slept"


class Env:
    """A server running the `claude` provider against the Anthropic fake, with a HOME of its own."""

    def __init__(self, server: FakeLLMServer, home: Path, root: Path) -> None:
        self.fake = server
        self.home = home
        self.root = root
        self.url = ""

    def session(self, name: str, **body: Any) -> Path:
        """A session working in a directory of its own (so its processes can be told apart)."""
        cwd = self.root / name
        cwd.mkdir()
        create_session(self.url, name, provider="claude", model=MODEL, options={"cwd": str(cwd)}, **body)
        return cwd

    def seen(self) -> int:
        return len(self.fake.requests)

    def bodies(self, since: int) -> list[dict[str, Any]]:
        return [r.json for r in self.fake.requests[since:]]


@contextmanager
def claude_server(root: Path, **config: Any) -> Iterator[Env]:
    """The fake, Claude Code's environment, and a server (SQLite journal in `root`) with `config`."""
    home = make_home(root / "home")
    with FakeLLMServer() as server, patched_env(claude_env(server, home)):
        state = Env(server, home, root)
        with running_app(**{"journal": f"sqlite:///{root}/journal.db", "provider": "claude", "model": MODEL,
                            **config}) as (url, _):
            state.url = url
            yield state
        # Shutting down stops every agent and everything they started (warm quick workers too).
        eventually(lambda: not processes(home), timeout=10)


def claude_env(server: FakeLLMServer, home: Path) -> dict[str, str]:
    """What Claude Code needs to talk to the fake and to nothing else, and no settings but ours."""
    return {
        "ANTHROPIC_BASE_URL": server.anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant-test-0000",
        "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
        "HOME": str(home),
    }


def make_home(path: Path) -> Path:
    """A HOME whose Claude Code settings allow the Bash tool (a headless run asks nobody)."""
    (path / ".claude").mkdir(parents=True, exist_ok=True)
    (path / ".claude" / "settings.json").write_text(json.dumps({"permissions": {"allow": ["Bash"]}}))
    return path


@contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    """The server under test runs in this process: its agents inherit our environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            patch.setenv(name, value)
        for name in ("ANTHROPIC_AUTH_TOKEN", "CLAUDE_CONFIG_DIR", "CLAUDECODE", "CLAUDE_CODE_ENABLE_TASKS"):
            patch.delenv(name, raising=False)
        yield


def processes(home: Path) -> dict[int, str]:
    """pid → command line of every live process started with this HOME (agents and their tools)."""
    return with_environ(f"HOME={home}")


def agents(home: Path, cwd: Path | None = None) -> dict[int, str]:
    """The Claude Code processes among them (optionally: those working in `cwd`)."""
    found = {pid: cmd for pid, cmd in processes(home).items() if cmd.startswith(str(BUNDLED))}
    if cwd is not None:
        found = {pid: cmd for pid, cmd in found.items() if _cwd(pid) == str(cwd)}
    return found


def sleeping(home: Path) -> list[int]:
    return [pid for pid, cmd in processes(home).items() if cmd.startswith("sleep 300")]


def transcribed(home: Path, text: str) -> bool:
    """Whether Claude Code has written `text` into one of its session transcripts under `home`
    (`~/.claude/projects/<cwd>/<session>.jsonl`, what `--resume` reads back)."""
    return any(text in path.read_text(errors="replace")
               for path in (home / ".claude" / "projects").glob("*/*.jsonl"))


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def user_texts(body: dict[str, Any]) -> list[str]:
    """Every text the request sends as the user's or the assistant's (its conversation so far)."""
    texts = []
    for message in body.get("messages", []):
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
            continue
        for block in content:
            if block.get("type") == "text":
                texts.append(block["text"])
    return texts
