"""What the dashboard's browser tests share: their server process, names, contexts and constants."""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext

import agentwire
from tests.support.browser import new_context
from tests.support.paths import FIXTURES
from tests.support.server import ServerProcess

SEEDS = [FIXTURES / "tasks" / name for name in ("seed_000.json", "seed_004.json")]
WS_READY = (Path(agentwire.__file__).parent / "ws.py").exists()
TRANSPORTS = ["sse", pytest.param("ws", marks=pytest.mark.skipif(not WS_READY, reason="no src/agentwire/ws.py yet"))]
HEARTBEAT = "1"  # seconds: the watchdog gives up on a silent connection after ~2.5 of them


@contextlib.contextmanager
def dashboard_process(folder: Path, *args: str) -> Iterator[ServerProcess]:
    """`agentwire serve` on a SQLite journal in `folder` with a short heartbeat (so a silent
    connection is noticed in seconds), its log in `folder/server.log`; `args` adds flags."""
    with ServerProcess(f"sqlite:///{folder}/journal.db", args=["--heartbeat", HEARTBEAT, *args],
                       log_path=folder / "server.log") as process:
        yield process


def unique_name(prefix: str) -> str:
    return f"{prefix}-{random.randrange(16**8):08x}"


def markers(text: str) -> list[str]:
    """The scripted agent tags every 50th delta `[50]`, `[100]`, …: each must be there exactly once."""
    return re.findall(r"\[\d+\]", text)


def open_context(browser: Browser, opened: list[BrowserContext], **options: Any) -> BrowserContext:
    """A new browser profile, added to `opened` (the `contexts` fixture closes them)."""
    context = new_context(browser, **options)
    opened.append(context)
    return context


def post_task(base: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{base}/api/tasks", json=body, timeout=10)
    assert response.status_code in (201, 409), response.text
    return body


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `dashboard_process` per test module (registered for every test by the root conftest.py)."""
    with dashboard_process(tmp_path_factory.mktemp("dashboard")) as process:
        yield process
