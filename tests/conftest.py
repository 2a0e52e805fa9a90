from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Playwright, sync_playwright

from agentwire.config import Config
from tests.support import claude_code as cc
from tests.support.agent_clis import AgentHome, prepared_home, private_cache
from tests.support.browser import launch, new_context
from tests.support.protocols import served
from tests.support.server import TOKEN, Served, ServerFactory, free_port, running_app

# Fixtures of their own modules, offered to every test: `dashboard` (tests/support/dashboard.py),
# `backend` and `journal_at` (tests/support/journal_backends.py), `redis_server` and `redis_url`
# (tests/support/redis_server.py).
pytest_plugins = ["tests.support.dashboard", "tests.support.journal_backends", "tests.support.redis_server"]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers with Config overrides; SQLite journal in tmp_path and a token unless overridden."""
    with contextlib.ExitStack() as stack:
        count = 0

        def make(**overrides: Any) -> Served:
            nonlocal count
            count += 1
            values: dict[str, Any] = {"port": free_port(), "journal": f"sqlite:///{tmp_path}/journal{count}.db",
                                      "token": TOKEN}
            values.update(overrides)
            url, config = stack.enter_context(running_app(Config(**values)))
            auth = {} if config.no_auth else {"authorization": f"Bearer {config.token}"}
            http = stack.enter_context(httpx.Client(base_url=url, headers=auth, timeout=30))
            return Served(url, config, http, auth)

        yield make


@pytest.fixture
def server(make_server: ServerFactory) -> Served:
    """A server with a short heartbeat, so tests that wait for pings wait little."""
    return make_server(heartbeat=0.2)


@pytest.fixture
def agent_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentHome]:
    """A fake model server and a throwaway home whose Codex CLI and Gemini CLI configuration points at it,
    in this process's environment (see tests/support/agent_clis.py)."""
    with prepared_home(tmp_path, monkeypatch) as home:
        yield home


@pytest.fixture
def agent_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`XDG_CACHE_HOME` where Gemini CLI accepts agentwire's settings files (see `private_cache`)."""
    with private_cache(monkeypatch) as directory:
        yield directory


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server per module for the protocol views (AG-UI, AI SDK), with a token their clients send."""
    with served(tmp_path_factory.mktemp("protocols")) as url:
        yield url


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, one per test module (tests/support/browser.py)."""
    launched = launch(playwright)
    yield launched
    launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile per test."""
    opened = new_context(browser)
    yield opened
    opened.close()


@pytest.fixture
def contexts(browser: Browser) -> Iterator[list[BrowserContext]]:
    """Extra contexts a test opens (each one an independent browser profile), closed at the end."""
    opened: list[BrowserContext] = []
    yield opened
    for context in opened:
        context.close()


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[cc.Env]:
    """The real Claude Code for a test module: a `claude`-provider server on the Anthropic fake, with a
    HOME of its own; the module's `CLAUDE_SERVER` dict adds server settings (e.g. `quick_pool`)."""
    settings = getattr(request.module, "CLAUDE_SERVER", {})
    with cc.claude_server(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]), **settings) as state:
        yield state


@pytest.fixture
def all_answers_used(env: cc.Env) -> Iterator[None]:
    """The fake answers in order: a test must use exactly what it queued (`pytestmark` of the modules)."""
    yield
    assert not env.fake.pending(), "the test queued answers its turns did not ask for"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for what a test runs beside itself (a turn that waits, say)."""
    with ThreadPoolExecutor(4) as executor:
        yield executor
