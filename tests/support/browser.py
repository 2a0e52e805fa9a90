"""Drive the dashboard in Debian's Chromium with Playwright: launch, open a session, read the console.

Playwright's own browser downloads are never used: the system `chromium` is launched headless with a
fresh, throw-away profile (Playwright gives every `launch()` its own temporary user-data dir).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright

from tests.support.eventually import eventually

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RECONNECTING = re.compile(r"^reconnecting \(attempt \d+, next in (\d+\.\ds|now)\)$")
TIMING = re.compile(r"^⏱️ \d+\.\ds · \d+ tools? · TTFE \d+% · Thinking \d+% · Tools \d+%")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# The marks of a module whose tests drive Chromium (`pytestmark = BROWSER_TESTS`).
BROWSER_TESTS = [pytest.mark.browser,
                 pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed")]


def launch(playwright: Playwright) -> Browser:
    path = chromium_path()
    assert path is not None, "Debian's chromium is needed: apt-get install -y chromium"
    return playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)


def new_context(browser: Browser, **options: Any) -> BrowserContext:
    context = browser.new_context(viewport=options.pop("viewport", {"width": 1280, "height": 860}), **options)
    context.set_default_timeout(20_000)
    return context


@dataclass
class Dashboard:
    """One page of the dashboard, opened on a session with a transport."""

    page: Page
    base: str
    errors: list[str]

    @classmethod
    def open(cls, context: BrowserContext, base: str, session: str, transport: str = "sse",
             view: str | None = None) -> Dashboard:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        fragment = "#/board" if view == "board" else f"#/s/{session}"
        if view == "board":
            # Init scripts run in every frame, the sandboxed task frames too: only the page's own.
            page.add_init_script(f"if (window === window.top) localStorage.setItem('agentwire.session', {session!r})")
        page.goto(f"{base}/?transport={transport}{fragment}")
        dashboard = cls(page, base, errors)
        dashboard.wait_status("connected")
        return dashboard

    # status

    def status_text(self) -> str:
        return self.page.inner_text("#net-text").strip()

    def wait_status(self, state: str, timeout: float = 20_000) -> str:
        self.page.wait_for_selector(f"#net-status[data-state='{state}']", timeout=timeout)
        return self.status_text()

    # console

    def send(self, text: str) -> None:
        self.page.fill("#input", text)
        self.page.press("#input", "Enter")

    def lane_text(self, lane: str = "main") -> str:
        text: str = self.page.eval_on_selector(f"#lane-{lane}", "el => el.textContent")
        return text

    def turns(self, lane: str = "main") -> list[str]:
        statuses: list[str] = self.page.eval_on_selector_all(f"#lane-{lane} .turn",
                                                             "els => els.map(e => e.dataset.status)")
        return statuses

    def wait_turns_done(self, count: int, lane: str = "main", timeout: float = 60_000) -> None:
        self.page.wait_for_function(
            """([lane, count]) => {
                const turns = [...document.querySelectorAll(`#lane-${lane} .turn`)];
                const ended = ['completed', 'failed', 'cancelled'];
                return turns.length >= count && turns.every(t => ended.includes(t.dataset.status));
            }""", arg=[lane, count], timeout=timeout)

    def wait_text(self, needle: str, lane: str = "main", timeout: float = 20_000) -> None:
        self.page.wait_for_function(
            "([lane, needle]) => document.querySelector(`#lane-${lane}`).textContent.includes(needle)",
            arg=[lane, needle], timeout=timeout)

    def wait_heartbeat_known(self, below_ms: float = 5000) -> None:
        """Until the page knows the server's heartbeat (from `stream.open`, or from the silence before a
        ping): only then can its watchdog tell a silent connection quickly."""
        self.page.wait_for_function("ms => window.__aw.net.heartbeatMs < ms", arg=below_ms)

    def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = self.page.evaluate("JSON.parse(JSON.stringify(window.__aw.metrics))")
        return metrics

    def net_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.page.evaluate(
            "({...window.__aw.net.stats, heartbeatMs: window.__aw.net.heartbeatMs})")
        return stats


def create_session(base: str, name: str, **options: Any) -> None:
    response = httpx.post(f"{base}/api/konsole", json={"name": name, "options": options}, timeout=10)
    assert response.status_code == 201, response.text


def session_state(base: str, session: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{base}/api/konsole/{session}/state", timeout=10).raise_for_status().json()
    return state


def wait_idle(base: str, session: str, timeout: float = 60.0) -> dict[str, Any]:
    state: dict[str, Any] = eventually(
        lambda: (s := session_state(base, session)) and not s["running"] and not s["queued"] and s, timeout,
        f"session {session} idle", interval=0.05)
    return state
