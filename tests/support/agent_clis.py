"""The real Codex CLI and Gemini CLI (installed by `npm ci` into the repository's node_modules), each
with a throwaway home of its own whose configuration points it at the project's fakes on 127.0.0.1:
`CODEX_HOME/config.toml` names a Responses-API model provider, `~/.gemini/settings.json` picks the API
key login and `GOOGLE_GEMINI_BASE_URL` the fake. That is the user's own configuration as agentwire
finds it; agentwire adds nothing to it."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentwire.config import Config
from agentwire.providers.agent_mcp import writable_by_others
from tests.fakes import openai_responses
from tests.fakes.llm_servers import FakeLLMServer, RecordedRequest
from tests.support.paths import ROOT
from tests.support.server import free_port
from tests.support.turns import create_session

BINARIES = {"codex": ROOT / "node_modules" / ".bin" / "codex", "gemini-cli": ROOT / "node_modules" / ".bin" / "gemini"}
AGENTS = ("codex", "gemini-cli")
FAKE = {"codex": "responses", "gemini-cli": "gemini"}  # the FakeLLMServer provider each one talks to
MODEL = {"codex": "gpt-5.5", "gemini-cli": "gemini-2.5-flash"}  # models the CLIs know (no fallback warnings)
VERSION = {"codex": "0.171.0", "gemini-cli": "0.61.0"}  # as pinned in package-lock.json
CODEX_KEY = "FAKE_RESPONSES_KEY"


@dataclass
class AgentHome:
    """One test's machine as the CLIs see it."""

    llm: FakeLLMServer
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def codex_home(self) -> Path:
        return self.root / "codex-home"

    def write(self) -> AgentHome:
        self.codex_home.mkdir(parents=True)
        (self.home / ".gemini").mkdir(parents=True)
        (self.root / "tmp").mkdir()
        # No retries: an API error ends the run at once instead of after Codex's backoff.
        (self.codex_home / "config.toml").write_text(f"""model = "{MODEL['codex']}"
model_provider = "fake"

[model_providers.fake]
name = "fake"
base_url = "{self.llm.url}/v1"
env_key = "{CODEX_KEY}"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[tools.update_plan]
enabled = true
""")
        (self.home / ".gemini" / "settings.json").write_text(json.dumps({
            "security": {"auth": {"selectedType": "gemini-api-key"}},
            "privacy": {"usageStatisticsEnabled": False}}))
        return self

    def env(self) -> dict[str, str]:
        return {"HOME": str(self.home), "CODEX_HOME": str(self.codex_home), CODEX_KEY: "sk-fake-responses",
                "GEMINI_API_KEY": "gemini-test-0000", "GOOGLE_GEMINI_BASE_URL": self.llm.url,
                "TMPDIR": str(self.root / "tmp")}

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)
        for name in ("GOOGLE_API_KEY", "OPENAI_API_KEY", "CODEX_API_KEY", "GEMINI_CLI_SYSTEM_DEFAULTS_PATH"):
            monkeypatch.delenv(name, raising=False)

    def processes(self) -> dict[int, list[str]]:
        """Live processes started with this home (the CLIs and everything they started): pid → argv."""
        marker = f"HOME={self.home}".encode()
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as file:
                    if marker not in file.read().split(b"\0"):
                        continue
                with open(f"/proc/{entry}/stat", "rb") as file:
                    if file.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    found[int(entry)] = [a.decode(errors="replace") for a in file.read().split(b"\0") if a]
            except OSError:
                continue
        return found

    def running(self, text: str) -> bool:
        return any(text in " ".join(argv) for argv in self.processes().values())


def config(**overrides: object) -> Config:
    values: dict[str, object] = {"port": free_port(), "journal": "memory://", "no_auth": True,
                                 "codex_bin": str(BINARIES["codex"]), "gemini_bin": str(BINARIES["gemini-cli"])}
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]


@contextlib.contextmanager
def prepared_home(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentHome]:
    """A fake model server and a home configured for it, in the environment of this process (whose
    server starts the CLIs). For a test module's `agent_home` fixture."""
    with FakeLLMServer() as llm:
        home = AgentHome(llm, root).write()
        home.patch(monkeypatch)
        yield home


def _real_home() -> Path:
    """The user's own home from the password database: the tests point `HOME` at a temporary one."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


@contextlib.contextmanager
def private_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`XDG_CACHE_HOME` in a directory no other user may write to, up to the root: Gemini CLI ignores
    system settings files anywhere else. The tests' temporary directories are under /tmp, and so may
    be the checkout itself (a CI clone): then the user's own cache, which is private."""
    base = next((candidate for candidate in (ROOT / ".pytest_cache", _real_home() / ".cache" / "agentwire-tests")
                 if writable_by_others(candidate.parent) is None), None)
    assert base is not None, "no directory private up to the root for Gemini CLI's settings file"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as directory:
        monkeypatch.setenv("XDG_CACHE_HOME", directory)
        yield Path(directory)


def agent_session(url: str, agent: str, cwd: Path, name: str = "s", **options: object) -> None:
    """Create session `name` running `agent` with a model it knows, in `cwd`, with `options`."""
    create_session(url, name, provider=agent, model=MODEL[agent], options={"cwd": str(cwd), **options})


def texts_sent(agent: str, request: RecordedRequest, role: str) -> list[str]:
    """The texts of `role` ("user" or "assistant") a request to the fake carried: the context."""
    body = request.json or {}
    if agent == "codex":
        return openai_responses.texts(body, role)
    gemini_role = "model" if role == "assistant" else role
    return [part["text"] for content in body.get("contents", []) if content.get("role") == gemini_role
            for part in content.get("parts", []) if "text" in part]


def tools_offered(agent: str, request: RecordedRequest) -> list[str]:
    body = request.json or {}
    if agent == "codex":
        return [str(t.get("name") or t.get("type")) for t in body.get("tools", [])]
    return [d["name"] for t in body.get("tools", []) for d in t.get("functionDeclarations", [])]
