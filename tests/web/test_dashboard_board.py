"""The web dashboard in a real Chromium: the task board, live, its choices and the seed cards.

Every test drives Debian's `chromium` headless through Playwright against a real `agentwire serve`
process (tests/support/dashboard.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext

from tests.support.browser import BROWSER_TESTS, Dashboard, create_session
from tests.support.dashboard import SEEDS, TRANSPORTS, open_context, post_task, unique_name
from tests.support.server import ServerProcess

pytestmark = BROWSER_TESTS


# the board, live, and a choice that answers the agent


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_new_task_appears_live_and_a_choice_becomes_the_next_user_message(
        dashboard: ServerProcess, context: BrowserContext, transport: str) -> None:
    session = unique_name("choose")
    create_session(dashboard.url, session, deltas=5, delay_ms=0, tool_calls=0)
    dash = Dashboard.open(context, dashboard.url, session, transport)
    page = dash.page
    page.click("#tab-board")
    page.evaluate("window.__sameDocument = true")
    task_id = unique_name("task")
    value = f"Ship it now ({task_id})"
    post_task(dashboard.url, {
        "id": task_id, "title": "Pick the next step", "description": "Both are fine; one is faster.",
        "status": "pending", "scope": "dashboard", "tags": ["dashboard-test", transport], "session": session,
        "context": {"output": "<p>Two ways forward.</p>",
                    "choices": [{"label": "Ship it", "value": value, "primary": True},
                                {"label": "Wait", "value": "Wait a day"}]},
    })
    card = page.locator(f"article.task[data-id='{task_id}']")
    card.wait_for()
    assert card.locator(".task-title").inner_text() == "Pick the next step"
    assert card.locator(".status-badge").inner_text().lower() == "pending"
    assert card.locator("button.choice.primary").inner_text() == "Ship it"

    card.locator("button.choice", has_text="Ship it").click()
    page.wait_for_selector("#view-console:not([hidden])")
    dash.wait_text(value)
    assert page.locator("#lane-main .msg.user .body").last.inner_text() == value
    dash.wait_turns_done(1)
    messages = httpx.get(f"{dashboard.url}/api/konsole/{session}/messages", timeout=10).json()["messages"]
    assert [m["text"] for m in messages if m["kind"] == "message"] == [value]
    card.locator("button.choice.chosen").wait_for(state="attached")
    assert page.evaluate("window.__sameDocument") is True
    assert not dash.errors


# the seed cards


def test_seed_cards_render_faithfully(dashboard: ServerProcess, browser: Browser, contexts: list[BrowserContext],
                                      tmp_path: Path) -> None:
    seeds = [json.loads(path.read_text()) for path in SEEDS]
    for seed in seeds:
        post_task(dashboard.url, seed)
    # The seed pages were rendered in Brisbane time ("5 Jan 2026, 11:49 am" for 01:49 UTC).
    context = open_context(browser, contexts, timezone_id="Australia/Brisbane",
                           viewport={"width": 1280, "height": 1400})
    dash = Dashboard.open(context, dashboard.url, unique_name("seeds"), view="board")
    page = dash.page
    for seed in seeds:
        card = page.locator(f"article.task[data-id='{seed['id']}']")
        card.wait_for()
        assert card.locator(".task-title").inner_text() == seed["title"]
        assert card.locator(".task-desc").inner_text() == seed["description"]
        assert card.locator(".status-badge").inner_text().lower() == "completed"
        assert card.locator(".task-scope").inner_text() == "vibetools"
        assert card.locator(".tags .tag").all_inner_texts() == seed["tags"]
        heading = seed["context"]["output"].split("</h2>")[0].rsplit(">", 1)[1]
        assert card.frame_locator("iframe.task-frame").locator("h2").inner_text() == heading
        card.locator(".task-details > summary").click()
        details = dict(zip(card.locator(".task-details dt").all_inner_texts(),
                           card.locator(".task-details dd").all_inner_texts(), strict=True))
        assert details["Type"] == "general" and details["Created By"] == "claude"

    seed_004 = page.locator(f"article.task[data-id='{seeds[1]['id']}']")
    assert seed_004.locator(".timing-line").inner_text() == "⏱️ 771.6s · 63 tools · TTFE 1% · Thinking 95% · Tools 4%"
    choices = seed_004.locator("button.choice")
    assert choices.all_inner_texts() == ["SSE first", "WebSocket now", "Hybrid approach"]
    assert "primary" in (choices.first.get_attribute("class") or "")
    listed = seed_004.locator(".task-details dl").inner_text()
    assert "5 Jan 2026, 11:49 am" in listed and "5 Jan 2026, 12:01 pm" in listed
    assert "architecture, websocket, quick-turn, sse" in listed

    seed_000 = page.locator(f"article.task[data-id='{seeds[0]['id']}']")
    assert seed_000.locator("button.choice").count() == 0
    assert seed_000.locator(".timing").count() == 0
    assert "2 Jan 2026, 7:43 pm" in seed_000.locator(".task-details dl").inner_text()

    page.select_option("#tag-filter", "websocket")
    assert seed_004.is_visible() and not seed_000.is_visible()
    page.select_option("#tag-filter", "")
    page.click("#status-filter [data-status='pending']")
    assert not seed_004.is_visible()
    page.click("#status-filter [data-status='all']")
    seed_004.scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "seed-cards.png"), full_page=False)
    assert not dash.errors
