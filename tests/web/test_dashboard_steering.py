"""The dashboard's permission cards in a real Chromium, with the scripted agent asking (session option
`ask_permission`): the card shows what the agent wants (a file's new lines, an edit's diff, a shell
command), Allow / Deny / Always allow by click or key, a badge on the session and the page title
while it waits, and a reloaded page shows the waiting request again and answers it."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Request

from tests.support.browser import BROWSER_TESTS, Dashboard, create_session
from tests.support.dashboard import unique_name
from tests.support.eventually import eventually
from tests.support.server import ServerProcess

pytestmark = BROWSER_TESTS
CARD = "#lane-main section.permission"


def asking(dashboard: ServerProcess, tool: str = "Write") -> str:
    session = unique_name(tool.lower())
    create_session(dashboard.url, session, ask_permission=tool, deltas=8, delay_ms=0, tool_calls=0)
    return session


def card_lines(page: Page) -> list[str]:
    lines: list[str] = page.eval_on_selector_all(f"{CARD} .diff > span", "els => els.map(e => e.textContent)")
    return [line.rstrip("\n") for line in lines]


def decisions(dashboard: ServerProcess, session: str) -> list[tuple[str, str]]:
    messages = httpx.get(f"{dashboard.url}/api/konsole/{session}/messages", timeout=10).json()["messages"]
    return [(m["status"], m.get("by", "")) for m in messages if m["kind"] == "permission"]


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_a_write_request_waits_in_a_card_and_allow_lets_the_turn_go_on(dashboard: ServerProcess,
                                                                      context: BrowserContext, transport: str) -> None:
    session = asking(dashboard)
    dash = Dashboard.open(context, dashboard.url, session, transport)
    page = dash.page
    posted: list[str] = []
    page.on("request", lambda request: _note_answer(request, posted))
    dash.send("Take notes")
    page.wait_for_selector(f"{CARD}.permission-pending")
    assert page.inner_text(f"{CARD} .tool-name") == "Write"
    assert page.inner_text(f"{CARD} .perm-title") == "Write notes/take-notes.md"
    assert page.inner_text(f"{CARD} .perm-path") == "notes/take-notes.md"
    assert card_lines(page) == ["+ # Take notes", "+ ", "+ What I looked up, and what is next."]
    buttons = page.eval_on_selector_all(f"{CARD} button", "els => els.map(e => e.textContent)")
    assert buttons == ["Allow y", "Deny n", "Always allow every Write a"]
    # The agent waits, and says so: header, the session's badge, the page title.
    eventually(lambda: page.inner_text("#agent-state") == "waiting for your answer")
    assert page.inner_text(f"#session-list [data-session='{session}'] .permission-badge") == "⚠ 1"
    assert page.title() == f"⚠ 1 waiting · {session} — agentwire"
    # Nothing is typed, so the card has the focus: Enter or a shortcut answers it.
    assert page.evaluate("document.activeElement.dataset.decision") == "allow"

    page.click(f"{CARD} button[data-decision='allow']")
    page.wait_for_selector(f"{CARD}.permission-allowed")
    assert page.inner_text(f"{CARD} .perm-outcome") == "Allowed"
    assert page.locator(f"{CARD} button").count() == 0
    dash.wait_turns_done(1)
    assert page.locator(f"#session-list [data-session='{session}'] .permission-badge").count() == 0
    assert page.title() == f"{session} — agentwire"
    assert decisions(dashboard, session) == [("allowed", "user")]
    # Over the WebSocket the page answers with its `decide` op, over SSE with the REST route.
    assert posted == ([] if transport == "ws" else [f"/api/konsole/{session}/permissions/"])
    assert not dash.errors


def _note_answer(request: Request, posted: list[str]) -> None:
    if request.method == "POST" and "/permissions/" in request.url:
        path = request.url.split("://", 1)[1].split("/", 1)[1]
        posted.append("/" + path.rsplit("/", 1)[0] + "/")


def test_a_reloaded_page_shows_the_waiting_edit_and_answers_it_by_key(dashboard: ServerProcess,
                                                                        context: BrowserContext) -> None:
    session = asking(dashboard, "Edit")
    dash = Dashboard.open(context, dashboard.url, session)
    page = dash.page
    dash.send("Fix the notes")
    page.wait_for_selector(f"{CARD}.permission-pending")
    page.reload()
    dash.wait_status("connected")
    page.wait_for_selector(f"{CARD}.permission-pending")
    assert page.inner_text(f"{CARD} .tool-name") == "Edit"
    assert card_lines(page) == ["- What I looked up, and what is next.", "+ What I found, and what I would do next."]
    assert page.title() == f"⚠ 1 waiting · {session} — agentwire"
    # Keys typed into a text field are text, not answers.
    page.fill("#input", "")
    page.focus("#input")
    page.keyboard.type("nay")
    assert page.input_value("#input") == "nay"
    assert page.locator(f"{CARD}.permission-pending").count() == 1
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("n")
    page.wait_for_selector(f"{CARD}.permission-denied")
    assert page.inner_text(f"{CARD} .perm-outcome") == "Denied"
    dash.wait_turns_done(1)
    dash.wait_text("I left the note alone")
    assert decisions(dashboard, session) == [("denied", "user")]
    assert not dash.errors


def test_always_allow_a_command_prefix(dashboard: ServerProcess, context: BrowserContext) -> None:
    session = asking(dashboard, "Bash")
    dash = Dashboard.open(context, dashboard.url, session)
    page = dash.page
    dash.send("What changed?")
    page.wait_for_selector(f"{CARD}.permission-pending")
    assert page.inner_text(f"{CARD} .perm-command") == "$ git status --short"
    assert page.inner_text(f"{CARD} .perm-note") == "See what changed"
    always = page.locator(f"{CARD} button[data-decision='always']")
    assert always.inner_text() == "Always allow Bash git status … a"
    page.keyboard.press("a")  # the card has the focus: the shortcut answers it
    page.wait_for_selector(f"{CARD}.permission-allowed")
    assert page.inner_text(f"{CARD} .perm-outcome") == "Always allowed: Bash git status …"
    dash.wait_turns_done(1)
    dash.send("And now?")
    dash.wait_turns_done(2)
    assert page.locator(CARD).count() == 1  # the second turn was not asked
    assert decisions(dashboard, session) == [("allowed", "user")]
    assert not dash.errors


def test_another_sessions_waiting_request_shows_in_the_list_and_the_title(dashboard: ServerProcess,
                                                                         context: BrowserContext) -> None:
    quiet = unique_name("quiet")
    create_session(dashboard.url, quiet, deltas=3, delay_ms=0)
    waiting = asking(dashboard)
    with httpx.stream("POST", f"{dashboard.url}/api/konsole/{waiting}/stream", json={"message": "Take notes"},
                      timeout=30) as response:
        assert response.status_code == 200
        request_id = eventually(lambda: next(iter(
            httpx.get(f"{dashboard.url}/api/konsole/{waiting}/state", timeout=10).json()["permissions"]), None))[
            "request_id"]
    dash = Dashboard.open(context, dashboard.url, quiet)
    page = dash.page
    badge = page.locator(f"#session-list [data-session='{waiting}'] .permission-badge")
    badge.wait_for()
    assert badge.inner_text() == "⚠ 1"
    assert page.title() == f"⚠ 1 waiting · {quiet} — agentwire"
    # Opening that session shows the card; answering there clears both.
    page.click(f"#session-list [data-session='{waiting}']")
    page.wait_for_selector(f"{CARD}.permission-pending[data-request='{request_id}']")
    page.click(f"{CARD} button[data-decision='deny']")
    page.wait_for_selector(f"{CARD}.permission-denied")
    eventually(lambda: page.title() == f"{waiting} — agentwire")
    assert badge.count() == 0
    assert not dash.errors
