"""The dashboard's loads that must succeed (the board's snapshot, the console's transcript after a
reset) go through the one retry helper: a failing load is tried again after ~250 ms, then ~500 ms, …
(±20 %), and the page ends up showing what the server holds. Real Chromium, real server."""

from __future__ import annotations

import re
import time

import httpx
from playwright.sync_api import Browser, BrowserContext, Route

from tests.support.browser import BROWSER_TESTS, Dashboard, new_context
from tests.support.server import running_app
from tests.support.turns import create_session, run_turn

pytestmark = BROWSER_TESTS


class Flaky:
    """Answers 503 to the first `failures` requests of a route, then lets them through; notes when each came."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.times: list[float] = []

    def __call__(self, route: Route) -> None:
        self.times.append(time.monotonic())
        if len(self.times) <= self.failures:
            route.fulfill(status=503, content_type="application/json",
                          body='{"error": {"code": "unavailable", "message": "try again"}}')
        else:
            route.continue_()

    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.times, self.times[1:], strict=False)]


def _context(browser: Browser, url: str, pattern: str, flaky: Flaky) -> BrowserContext:
    context = new_context(browser)
    context.route(re.compile(re.escape(url) + pattern), flaky)
    return context


def test_failed_loads_are_retried_with_the_reconnect_backoff(browser: Browser) -> None:
    with running_app(journal="memory://", no_auth=True) as (url, _):
        create_session(url, "retry", options={"deltas": 5, "delay_ms": 0, "tool_calls": 1})
        httpx.post(f"{url}/api/tasks", json={"id": "retry-task", "title": "Shown after two failures"},
                   timeout=10).raise_for_status()
        board = Flaky(failures=3)
        context = _context(browser, url, r"/api/tasks\?limit=1000$", board)
        try:
            dash = Dashboard.open(context, url, "retry", view="board")
            dash.page.locator("article.task[data-id='retry-task']").wait_for()
            gaps = board.gaps()
            assert len(gaps) == 3, gaps
            # 250, 500, 1000 ms with ±20 % jitter; what the browser adds is well under the slack.
            for gap, nominal in zip(gaps, (0.25, 0.5, 1.0), strict=True):
                assert nominal * 0.8 - 0.02 <= gap <= nominal * 1.2 + 0.25, gaps
            assert dash.status_text() == "connected"
        finally:
            context.close()

        run_turn(url, "retry", "What is on the board?")
        transcript = Flaky(failures=2)
        context = _context(browser, url, r"/api/konsole/retry/messages$", transcript)
        try:
            dash = Dashboard.open(context, url, "retry")
            dash.wait_turns_done(1)
            before = dash.lane_text()
            # What a `stream.reset` does: load the folded transcript, whatever it takes.
            dash.page.evaluate("window.__aw.console.reload({ reason: 'test' })")
            dash.page.wait_for_function("window.__aw.metrics.resets === 1")
            assert len(transcript.times) == 3 and all(0.19 <= gap <= 1.0 for gap in transcript.gaps())
            assert dash.lane_text() == before
            assert not dash.errors
        finally:
            context.close()
