"""The web dashboard in a real Chromium: streaming, cuts and restarts, the board, safety, quick turns.

Every test drives Debian's `chromium` headless through Playwright against a real `agentwire serve`
process. Transcripts are compared as the console lane's text: a page that was cut (through a TCP
proxy, or by a server restart) must end with exactly what a page that never was cut shows.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import re
import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Playwright, Route

import agentwire
from agentwire.config import Config
from tests.support.browser import (
    CHROMIUM_ARGS,
    RECONNECTING,
    TIMING,
    Dashboard,
    chromium_path,
    create_session,
    new_context,
    session_state,
    wait_idle,
    wait_until,
)
from tests.support.proxy import TcpProxy
from tests.support.server import ServerProcess, free_port, running_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed"),
]

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [ROOT / "tests" / "fixtures" / "tasks" / name for name in ("seed_000.json", "seed_004.json")]
WS_READY = (Path(agentwire.__file__).parent / "ws.py").exists()
TRANSPORTS = ["sse", pytest.param("ws", marks=pytest.mark.skipif(not WS_READY, reason="no src/agentwire/ws.py yet"))]
HEARTBEAT = "1"  # seconds: the watchdog gives up on a silent connection after ~2.5 of them


def _name(prefix: str) -> str:
    return f"{prefix}-{random.randrange(16**8):08x}"


def _markers(text: str) -> list[str]:
    """The scripted agent tags every 50th delta `[50]`, `[100]`, …: each must be there exactly once."""
    return re.findall(r"\[\d+\]", text)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("dashboard")
    with ServerProcess(f"sqlite:///{folder}/journal.db", args=["--heartbeat", HEARTBEAT],
                       log_path=folder / "server.log") as process:
        yield process


@pytest.fixture
def contexts(browser: Browser) -> Iterator[list[BrowserContext]]:
    """Extra contexts a test opens (each one an independent browser profile), closed at the end."""
    opened: list[BrowserContext] = []
    yield opened
    for context in opened:
        context.close()


def _context(browser: Browser, opened: list[BrowserContext], **options: Any) -> BrowserContext:
    context = new_context(browser, **options)
    opened.append(context)
    return context


def _post_task(base: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{base}/api/tasks", json=body, timeout=10)
    assert response.status_code in (201, 409), response.text
    return body


# 1. streaming


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_turn_shows_streamed_text_tool_cards_todos_and_timing(server: ServerProcess, context: BrowserContext,
                                                              transport: str) -> None:
    session = _name("stream")
    create_session(server.url, session, deltas=300, delay_ms=5, tool_calls=2)
    dash = Dashboard.open(context, server.url, session, transport)
    page = dash.page
    assert page.inner_text("#session-model") == "scripted · scripted-1"
    assert "scripted · scripted-1" in page.inner_text(f"#session-list [data-session='{session}']")

    page.fill("#input", "Explain the *resume* rules")
    page.press("#input", "Shift+Enter")  # a new line, not a send
    page.keyboard.type("in two lines")
    assert page.input_value("#input") == "Explain the *resume* rules\nin two lines"
    page.press("#input", "Enter")
    page.wait_for_selector("#lane-main .text.streaming")
    streamed = page.eval_on_selector("#lane-main .text.streaming", "el => el.textContent.length")
    page.wait_for_function("n => document.querySelector('#lane-main .text.streaming')?.textContent.length > n",
                           arg=streamed)
    assert page.is_visible("#cancel")
    assert page.input_value("#input") == ""
    page.wait_for_selector("#lane-main .todos")
    page.evaluate("window.__todoCard = document.querySelector('#lane-main .todos')")

    dash.wait_turns_done(1)
    assert dash.turns() == ["completed"]
    assert page.inner_text("#lane-main .msg.user .body") == "Explain the *resume* rules\nin two lines"
    tools = page.eval_on_selector_all("#lane-main details.tool .tool-name", "els => els.map(e => e.textContent)")
    assert sorted(tools) == ["lookup", "lookup", "task_create", "todo_write", "todo_write", "todo_write"]
    assert page.eval_on_selector_all("#lane-main details.tool", "els => els.every(e => !e.open)")
    # The todo card was updated in place: one card, the same element, now complete.
    assert page.evaluate("document.querySelectorAll('#lane-main .todos').length === 1"
                         " && document.querySelector('#lane-main .todos') === window.__todoCard")
    assert page.inner_text("#lane-main .todos .todos-count") == "3/3"
    assert page.locator("#lane-main .todos li.completed").count() == 3
    # Thinking is collapsed; both text blocks are rendered (no longer streaming).
    assert page.eval_on_selector("#lane-main details.thinking", "el => !el.open")
    assert page.locator("#lane-main .text.streaming").count() == 0
    assert page.locator("#lane-main .text.md").count() == 2
    timing = page.inner_text("#lane-main .turn-end .timing-line")
    assert TIMING.match(timing), timing
    assert " · 6 tools · " in timing
    assert page.locator("#lane-main .timing-bar .seg").count() == 3
    # A tool card opens on a click and shows input and result.
    page.locator("#lane-main details.tool", has_text="lookup").first.locator("summary").click()
    card = page.locator("#lane-main details.tool[open]")
    assert '"page": 1' in card.inner_text() and "results for" in card.inner_text()
    assert not page.is_visible("#cancel")
    assert page.inner_text("#agent-state") == "idle"
    assert not dash.errors


# 2. cuts: a proxy that drops or silences the connection, and a server restart


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cut_through_proxy_mid_turn_loses_and_repeats_nothing(server: ServerProcess, browser: Browser,
                                                              contexts: list[BrowserContext], transport: str) -> None:
    session = _name("cut")
    create_session(server.url, session, deltas=1300, delay_ms=4, tool_calls=2)
    with TcpProxy(server.port) as proxy:
        reference = Dashboard.open(_context(browser, contexts), server.url, session, transport)
        cut = Dashboard.open(_context(browser, contexts), f"http://127.0.0.1:{proxy.port}", session, transport)
        cut.wait_heartbeat_known()
        cut.send("Cut me off in the middle of the turn")
        cut.wait_text("[50]")

        # Cut 1: every connection reset at once; new ones hang until the network comes back.
        proxy.pause()
        proxy.drop_all(reset=True)
        status = cut.wait_status("reconnecting")
        assert RECONNECTING.match(status), status
        cut.page.fill("#input", "typed while reconnecting")
        assert cut.page.is_enabled("#input")
        time.sleep(0.6)
        proxy.resume()
        cut.wait_status("connected")
        assert cut.page.input_value("#input") == "typed while reconnecting"
        assert reference.turns() == ["running"], "the second cut must come mid-turn too"

        # Cut 2: the connection stays open but goes silent (a NAT that forgot us, a phone that slept):
        # only the heartbeat watchdog can tell.
        proxy.pause()
        status = cut.wait_status("reconnecting", timeout=10_000)
        assert RECONNECTING.match(status), status
        proxy.resume()
        cut.wait_status("connected")

        reference.wait_turns_done(1)
        cut.wait_turns_done(1)
        expected = reference.lane_text()
        assert cut.lane_text() == expected
        stats = cut.net_stats()
        assert stats["losses"] >= 2 and stats["heartbeatMs"] < 2000, stats

    fresh = Dashboard.open(_context(browser, contexts), server.url, session, transport)
    fresh.wait_turns_done(1)
    assert fresh.lane_text() == expected
    markers = _markers(expected)
    assert markers == [f"[{n}]" for n in range(50, 1301, 50)], markers
    assert cut.page.input_value("#input") == "typed while reconnecting"
    assert not cut.errors and not reference.errors


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_restart_mid_turn_resumes_from_the_journal(server: ServerProcess, browser: Browser,
                                                          contexts: list[BrowserContext], transport: str) -> None:
    session = _name("restart")
    create_session(server.url, session, deltas=3000, delay_ms=3, tool_calls=1)
    live = Dashboard.open(_context(browser, contexts), server.url, session, transport)
    live.send("Keep writing while the server restarts")
    live.wait_text("[100]")

    server.kill()  # SIGKILL mid-turn: what the journal stored is all there is
    status = live.wait_status("reconnecting")
    assert RECONNECTING.match(status), status
    server.start()  # same port, same SQLite file
    live.wait_status("connected")
    live.wait_turns_done(1)
    assert live.turns() == ["failed"]
    assert "Failed: interrupted" in live.lane_text()

    fresh = Dashboard.open(_context(browser, contexts), server.url, session, transport)
    fresh.wait_turns_done(1)
    text = live.lane_text()
    assert text == fresh.lane_text()
    markers = _markers(text)
    assert markers == sorted(set(markers), key=lambda m: int(m[1:-1])), "a line came twice"
    assert not live.errors


@pytest.fixture(scope="module")
def trimming_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that keeps only the last ~100 events per stream, so a long cut outlives the journal."""
    folder = tmp_path_factory.mktemp("trimming")
    with ServerProcess(f"sqlite:///{folder}/journal.db", args=["--heartbeat", HEARTBEAT, "--retention", "100"],
                       log_path=folder / "server.log") as process:
        yield process


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_position_older_than_the_journal_reloads_the_snapshot(trimming_server: ServerProcess, browser: Browser,
                                                              contexts: list[BrowserContext], transport: str) -> None:
    server = trimming_server
    session = _name("trimmed")
    create_session(server.url, session, deltas=700, delay_ms=2, tool_calls=2)
    # The server folds `/messages` lazily, when asked: under retention, events trimmed before it was
    # asked are missing from it. Asking often keeps its fold whole, so this test checks the page.
    stop = threading.Event()

    def keep_server_fold_current() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while not stop.is_set():
                http.get(f"/api/konsole/{session}/messages")
                time.sleep(0.02)

    poller = threading.Thread(target=keep_server_fold_current, daemon=True)
    poller.start()
    try:
        with TcpProxy(server.port) as proxy:
            reference = Dashboard.open(_context(browser, contexts), server.url, session, transport)
            cut = Dashboard.open(_context(browser, contexts), f"http://127.0.0.1:{proxy.port}", session, transport)
            reference.send("Say a lot while that page is away")
            cut.wait_text("[50]")
            proxy.pause()
            proxy.drop_all(reset=True)
            reference.wait_turns_done(1)  # hundreds of events later: the cut page's position is gone
            proxy.resume()
            cut.wait_status("connected")
            cut.wait_turns_done(1)
    finally:
        stop.set()
        poller.join(10)
    assert cut.metrics()["resets"] >= 1 and cut.metrics()["lastReset"] == "trimmed"
    assert cut.lane_text() == reference.lane_text()
    assert _markers(cut.lane_text()) == [f"[{n}]" for n in range(50, 701, 50)]
    assert not cut.errors and not reference.errors


# 3. the board, live, and a choice that answers the agent


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_new_task_appears_live_and_a_choice_becomes_the_next_user_message(
        server: ServerProcess, context: BrowserContext, transport: str) -> None:
    session = _name("choose")
    create_session(server.url, session, deltas=5, delay_ms=0, tool_calls=0)
    dash = Dashboard.open(context, server.url, session, transport)
    page = dash.page
    page.click("#tab-board")
    page.evaluate("window.__sameDocument = true")
    task_id = _name("task")
    value = f"Ship it now ({task_id})"
    _post_task(server.url, {
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
    messages = httpx.get(f"{server.url}/api/konsole/{session}/messages", timeout=10).json()["messages"]
    assert [m["text"] for m in messages if m["kind"] == "message"] == [value]
    card.locator("button.choice.chosen").wait_for(state="attached")
    assert page.evaluate("window.__sameDocument") is True
    assert not dash.errors


# 4. agent-made HTML and text run nothing


PAYLOAD_OUTPUT = """
<h2>Safe heading</h2><p>Safe text survives</p>
<script>top.__pwned = 1; parent.__pwned = 1; fetch('/pwned-script')</script>
<img src="x" onerror="top.__pwned = 2; fetch('/pwned-onerror')">
<a id="js" href="javascript:top.__pwned=3;fetch('/pwned-href')">javascript link</a>
<svg onload="top.__pwned = 4"><circle r="4"></circle></svg>
<iframe srcdoc="<script>top.__pwned = 5</script>"></iframe>
<form action="javascript:top.__pwned = 6"><button id="go">go</button></form>
<div style="background-image:url('javascript:top.__pwned=7')">styled</div>
<meta http-equiv="refresh" content="0;url=javascript:top.__pwned=8">
<object data="javascript:top.__pwned=9"></object><embed src="javascript:top.__pwned=10">
"""

MARKDOWN_PAYLOAD = """# Title <img src=x onerror="top.__pwned=20">
<script>top.__pwned = 21</script>
[click](javascript:top.__pwned=22) and [data](data:text/html,<script>top.__pwned=23</script>) and [ok](https://example.com/a?b=1)
`<b>code</b>` **bold <i>x</i>**
```html
<script>top.__pwned = 24</script>
```"""


def test_task_output_and_agent_text_run_none_of_their_payloads(server: ServerProcess,
                                                               context: BrowserContext) -> None:
    # What a payload that ran would fetch (a `javascript:` URL that merely fails to load does not count).
    hits: list[str] = []
    context.on("request", lambda request: hits.append(request.url)
               if "pwned" in request.url and request.url.startswith("http") else None)
    session = _name("xss")
    create_session(server.url, session, deltas=8, delay_ms=0, tool_calls=0)
    task_id = _name("xss-task")
    _post_task(server.url, {
        "id": task_id, "title": 'Payload <img src=x onerror="top.__pwned=11"> title',
        "description": "<script>top.__pwned = 12</script> description", "tags": ["xss"], "session": session,
        "context": {"output": PAYLOAD_OUTPUT, "choices": [{"label": "<b>bold?</b>", "value": "<b>bold?</b>"}]},
    })
    dash = Dashboard.open(context, server.url, session, "sse", view="board")
    page = dash.page
    card = page.locator(f"article.task[data-id='{task_id}']")
    card.wait_for()
    assert card.locator(".task-title").inner_text() == 'Payload <img src=x onerror="top.__pwned=11"> title'
    assert card.locator(".task-desc").inner_text() == "<script>top.__pwned = 12</script> description"
    assert card.locator("button.choice").inner_text() == "<b>bold?</b>"
    frame_element = card.locator("iframe.task-frame")
    assert frame_element.get_attribute("sandbox") == ""
    frame = card.frame_locator("iframe.task-frame")
    frame.locator("text=Safe text survives").wait_for()
    assert frame.locator("h2").inner_text() == "Safe heading"
    link = frame.locator("a", has_text="javascript link")
    if link.count():
        link.click()
    go = frame.locator("#go")
    if go.count():
        go.click()

    # Agent text: a user message and the thinking that echoes it are text, never HTML.
    page.click("#tab-console")
    dash.send('<img src=x onerror="top.__pwned=13"> <script>top.__pwned=14</script> hello')
    dash.wait_turns_done(1)
    assert page.locator("#lane-main img, #lane-main script").count() == 0
    assert '<img src=x onerror="top.__pwned=13">' in page.inner_text("#lane-main .msg.user .body")

    rendered = page.evaluate("""async (source) => {
        const { renderMarkdown } = await import('/static/markdown.js');
        const el = document.createElement('div');
        el.append(renderMarkdown(source));
        document.body.append(el);
        return { text: el.textContent, active: el.querySelectorAll('script,img,iframe,svg,object,embed,i,b').length,
                 hrefs: [...el.querySelectorAll('a')].map(a => a.getAttribute('href')),
                 tags: [...el.querySelectorAll('*')].map(e => e.tagName.toLowerCase()) };
    }""", MARKDOWN_PAYLOAD)
    assert rendered["active"] == 0, rendered
    assert rendered["hrefs"] == ["https://example.com/a?b=1"]
    assert set(rendered["tags"]) <= {"h1", "p", "br", "a", "code", "strong", "pre"}, rendered["tags"]
    assert "<script>top.__pwned = 21</script>" in rendered["text"]
    assert "<b>code</b>" in rendered["text"]

    time.sleep(0.5)
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("top.__pwned") is None
    assert hits == []
    assert not dash.errors


# 5. quick turns


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_quick_turn_answers_while_the_main_turn_streams(server: ServerProcess, context: BrowserContext,
                                                        transport: str) -> None:
    session = _name("quick")
    create_session(server.url, session, deltas=1500, delay_ms=5, tool_calls=1)
    dash = Dashboard.open(context, server.url, session, transport)
    page = dash.page
    dash.send("A long main question")
    dash.wait_text("[50]")

    page.fill("#quick-input", "Quick: is the main turn still going?")
    page.press("#quick-input", "Enter")
    dash.wait_text("Here is what I found", lane="quick")
    assert dash.turns("main") == ["running"], "the quick answer came while the main turn streams"
    assert dash.turns("quick") == ["running"]
    assert page.inner_text("#lane-quick .msg.user .body") == "Quick: is the main turn still going?"
    assert "Quick: is the main turn" not in dash.lane_text("main")
    assert page.input_value("#quick-input") == ""
    before = len(dash.lane_text("main"))
    page.wait_for_function("n => document.querySelector('#lane-main').textContent.length > n", arg=before)

    quick_turn = page.get_attribute("#lane-quick .turn", "data-turn")
    page.click("#cancel")
    dash.wait_turns_done(1)
    assert dash.turns("main") == ["cancelled"]
    assert "Cancelled: cancelled by user" in dash.lane_text("main")
    httpx.post(f"{server.url}/api/konsole/{session}/cancel", json={"turn": quick_turn}, timeout=10)
    dash.wait_turns_done(1, lane="quick")
    assert not dash.errors


# 6. a screenshot for the README


def test_screenshot_of_the_dashboard_mid_turn(server: ServerProcess, browser: Browser,
                                              contexts: list[BrowserContext], tmp_path: Path) -> None:
    for seed in SEEDS:
        _post_task(server.url, json.loads(seed.read_text()))
    session = "dashboard"
    create_session(server.url, session, deltas=90, delay_ms=25, tool_calls=2)
    create_session(server.url, "release-notes", deltas=40, delay_ms=0, tool_calls=0)
    create_session(server.url, "flaky-tests", deltas=40, delay_ms=0, tool_calls=0)
    httpx.post(f"{server.url}/api/konsole/release-notes/stream", json={"message": "Draft the notes"}, timeout=30)
    httpx.post(f"{server.url}/api/konsole/{session}/stream", json={"message": "Summarize the resume rules"},
               timeout=60)
    context = _context(browser, contexts, viewport={"width": 1440, "height": 900}, timezone_id="Australia/Brisbane")
    dash = Dashboard.open(context, server.url, session)
    page = dash.page
    dash.wait_turns_done(1)
    dash.send("How does the console resume after a reconnect?")
    # A function, not a bare expression: Playwright evaluates an expression with eval, which the
    # dashboard's CSP (script-src 'self', no 'unsafe-eval') refuses.
    page.wait_for_function("() => document.querySelectorAll('#lane-main .turn')[1]"
                           "?.querySelector('.text.streaming')?.textContent.length > 150")
    page.fill("#quick-input", "Which seq is the head now?")
    page.press("#quick-input", "Enter")
    dash.wait_text("sequence number", lane="quick")
    page.fill("#input", "Then check the WebSocket path too")
    desktop = tmp_path / "dashboard.png"
    page.screenshot(path=str(desktop))
    assert dash.turns() == ["completed", "running"], "the screenshot shows a turn in progress"

    phone = _context(browser, contexts, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                     device_scale_factor=2)
    small = Dashboard.open(phone, server.url, session)
    small.page.screenshot(path=str(tmp_path / "dashboard-phone.png"))
    overflow = small.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, "nothing wider than a phone screen"
    page.click("#tab-board")
    page.screenshot(path=str(tmp_path / "board.png"))
    print(f"\nscreenshots: {tmp_path}")
    if os.environ.get("AGENTWIRE_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(desktop, ROOT / "docs" / "dashboard.png")
    wait_idle(server.url, session)


# 7. figures (printed, not asserted)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_measure_first_token_and_catch_up(server: ServerProcess, browser: Browser, contexts: list[BrowserContext],
                                          transport: str) -> None:
    session = _name("latency")
    create_session(server.url, session, deltas=20, delay_ms=0, tool_calls=0, thinking=False)
    context = _context(browser, contexts)
    # Every WebSocket the page makes, to count the ones open (SSE streams are seen on the network).
    context.add_init_script("""
        const Original = window.WebSocket;
        window.__sockets = [];
        window.WebSocket = class extends Original {
          constructor(...args) { super(...args); window.__sockets.push(this); }
        };""")
    dash = Dashboard.open(context, server.url, session, transport)
    streams: list[str] = []  # streams (SSE responses) the page opens once it is connected
    dash.page.on("response", lambda response: streams.append(response.url)
                 if response.headers.get("content-type", "").startswith("text/event-stream") else None)
    first_text = []
    for index in range(10):
        dash.send(f"ping {index}")
        dash.wait_turns_done(index + 1)
        pending = wait_until(lambda: (m := dash.metrics()["pending"]).get("firstTextMs") is not None and m)
        first_text.append(pending["firstTextMs"])
        assert dash.lane_text().count("Here is what I found.") == index + 1  # its first token is shown
    # A turn started from the page comes on the page's one stream: nothing else was opened for it.
    assert streams == []
    assert dash.page.evaluate("s => [...window.__aw.net.subs].filter(sub => sub.stream === s).length",
                              f"konsole/{session}") == 1
    assert dash.page.evaluate("window.__sockets.filter(s => s.readyState !== WebSocket.CLOSED).length") == (
        1 if transport == "ws" else 0)

    session = _name("catchup")
    create_session(server.url, session, deltas=10_000, delay_ms=0, tool_calls=0)
    with TcpProxy(server.port) as proxy:
        context = _context(browser, contexts)
        cut = Dashboard.open(context, f"http://127.0.0.1:{proxy.port}", session, transport)
        cut.send("A turn of ten thousand deltas")
        cut.wait_text("[50]")
        proxy.pause()
        proxy.drop_all(reset=True)
        context.set_offline(True)
        cut.wait_status("offline")
        assert cut.page.is_disabled("#input")
        state = wait_idle(server.url, session)
        shown = cut.metrics()["paintedSeq"]
        cut.page.evaluate("addEventListener('online', () => { window.__onlineAt = performance.now() }, { once: true })")
        proxy.resume()
        context.set_offline(False)
        cut.page.wait_for_function("head => window.__aw.metrics.paintedSeq >= head", arg=state["head"], timeout=60_000)
        caught_up_ms = cut.page.evaluate("window.__aw.metrics.paintedAt - window.__onlineAt")
        cut.wait_status("connected")
        cut.wait_turns_done(1)
    fresh = Dashboard.open(_context(browser, contexts), server.url, session, transport)
    fresh.wait_turns_done(1)
    assert cut.lane_text() == fresh.lane_text()
    print(f"\n[{transport}] Enter → first assistant token painted: median {statistics.median(first_text):.1f} ms "
          f"(n={len(first_text)}, min {min(first_text):.1f}, max {max(first_text):.1f} ms)")
    print(f"[{transport}] network restored → caught up on a 10,000-delta turn "
          f"({state['head'] - shown} events behind): {caught_up_ms:.0f} ms")


# 8. the seed cards


def test_seed_cards_render_faithfully(server: ServerProcess, browser: Browser, contexts: list[BrowserContext],
                                      tmp_path: Path) -> None:
    seeds = [json.loads(path.read_text()) for path in SEEDS]
    for seed in seeds:
        _post_task(server.url, seed)
    # The seed pages were rendered in Brisbane time ("5 Jan 2026, 11:49 am" for 01:49 UTC).
    context = _context(browser, contexts, timezone_id="Australia/Brisbane", viewport={"width": 1280, "height": 1400})
    dash = Dashboard.open(context, server.url, _name("seeds"), view="board")
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
    details = seed_004.locator(".task-details dl").inner_text()
    assert "5 Jan 2026, 11:49 am" in details and "5 Jan 2026, 12:01 pm" in details
    assert "architecture, websocket, quick-turn, sse" in details

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


def test_reconnect_backoff_policy(server: ServerProcess, context: BrowserContext) -> None:
    """250 ms doubling to a 15 s cap with ±20 % jitter, reset on open; the status text's format."""
    dash = Dashboard.open(context, server.url, _name("policy"))
    delays = dash.page.evaluate("""async () => {
        const { Backoff } = await import('/static/retry.js');
        const { describeStatus } = await import('/static/net.js');
        const low = new Backoff({ random: () => 0 }), high = new Backoff({ random: () => 1 });
        const mid = new Backoff({ random: () => 0.5 });
        const run = (b) => Array.from({ length: 9 }, () => b.next());
        const result = { low: run(low), high: run(high), mid: run(mid) };
        mid.reset();
        result.afterReset = mid.next();
        result.text = describeStatus({ state: 'reconnecting', attempt: 3, nextInMs: 1234 });
        return result;
    }""")
    assert delays["mid"] == [250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]
    assert (delays["low"][0], delays["high"][0]) == (200, 300)  # ±20 % jitter
    assert (delays["low"][-1], delays["high"][-1]) == (12000, 18000)
    assert delays["afterReset"] == 250
    assert delays["text"] == "reconnecting (attempt 3, next in 1.2s)"
    assert session_state(server.url, dash.page.inner_text("#session-name"))["agent_state"] == "idle"


def test_a_tab_hidden_for_more_than_5_s_reconnects_when_visible(server: ServerProcess,
                                                                 context: BrowserContext) -> None:
    dash = Dashboard.open(context, server.url, _name("visible"))
    page = dash.page
    flip = """([hidden, backdate]) => {
        Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
        document.dispatchEvent(new Event('visibilitychange'));
        if (hidden && backdate) window.__aw.net.hiddenAt -= backdate;
    }"""
    page.evaluate(flip, [True, 0])
    page.evaluate(flip, [False, 0])  # hidden for a moment: the connection stays
    assert dash.net_stats()["opens"] == 1
    page.evaluate(flip, [True, 6000])
    page.evaluate(flip, [False, 0])  # hidden for "6 s": a phone that slept may hold a dead socket
    page.wait_for_function("() => window.__aw.net.stats.opens === 2")
    dash.wait_status("connected")

    # A new session from the sidebar form becomes the current one.
    name = _name("made-here")
    page.click("#new-session-btn")
    page.fill("#new-session [name=name]", name)
    page.fill("#new-session [name=options]", '{"deltas": 5, "delay_ms": 0}')
    page.click("#new-session button[type=submit]")
    page.wait_for_selector(f"#session-list a.current[data-session='{name}']")
    assert page.inner_text("#session-name") == name
    assert session_state(server.url, name)["agent_state"] == "idle"
    assert not dash.errors


@pytest.mark.skipif(not WS_READY, reason="no src/agentwire/ws.py yet")
def test_switching_transport_mid_turn_resumes_at_the_last_seq(server: ServerProcess, browser: Browser,
                                                              contexts: list[BrowserContext]) -> None:
    session = _name("switch")
    create_session(server.url, session, deltas=600, delay_ms=3, tool_calls=1)
    dash = Dashboard.open(_context(browser, contexts), server.url, session, "sse")
    page = dash.page
    dash.send("Switch transports under me")
    dash.wait_text("[50]")
    page.select_option("#transport", "ws")
    dash.wait_status("connected")
    assert page.evaluate("window.__aw.net.kind") == "ws"
    assert page.evaluate("localStorage.getItem('agentwire.transport')") == "ws"
    dash.wait_text("[200]")
    page.select_option("#transport", "sse")
    dash.wait_status("connected")
    dash.wait_turns_done(1)
    fresh = Dashboard.open(_context(browser, contexts), server.url, session, "sse")
    fresh.wait_turns_done(1)
    assert dash.lane_text() == fresh.lane_text()
    assert _markers(dash.lane_text()) == [f"[{n}]" for n in range(50, 601, 50)]
    assert not dash.errors


def test_the_token_link_signs_the_page_in_for_every_transport(browser: Browser, contexts: list[BrowserContext]) -> None:
    token = "dashboard-test-token-123456"
    with running_app(Config(port=free_port(), journal="memory://", token=token, heartbeat=1)) as (url, _):
        context = _context(browser, contexts)
        page = context.new_page()
        assert page.goto(f"{url}/").status == 401
        page.goto(f"{url}/?token={token}")  # sets the cookie and lands on the dashboard
        page.wait_for_selector("#net-status[data-state='connected']")
        assert page.url.startswith(f"{url}/#/s/")
        for transport in ["sse", "ws"] if WS_READY else ["sse"]:
            dash = Dashboard.open(context, url, f"auth-{transport}", transport)
            dash.send("Am I signed in?")
            dash.wait_turns_done(1)
            assert not dash.errors
        assert not any(c["name"] == "agentwire_token" and not c["httpOnly"] for c in context.cookies())


MARKDOWN_SAMPLE = """# Resume rules
Some **bold**, *em*, `code <b>`, ~~old~~, snake_case_name and [the spec](https://example.com/spec).

- one
- two
  - nested
1. first
2. second

```py
print("<hi>")
```

> quoted

| seq | type |
|---:|---|
| 12 | text.delta |"""


def test_markdown_renderer_builds_elements_not_html(server: ServerProcess, context: BrowserContext) -> None:
    dash = Dashboard.open(context, server.url, _name("markdown"))
    html = dash.page.evaluate("""async (source) => {
        const { renderMarkdown } = await import('/static/markdown.js');
        const el = document.createElement('div');
        el.append(renderMarkdown(source));
        return el.innerHTML;
    }""", MARKDOWN_SAMPLE)
    for fragment in ["<h1>Resume rules</h1>", "<strong>bold</strong>", "<em>em</em>", "<code>code &lt;b&gt;</code>",
                     "<del>old</del>", "snake_case_name",
                     '<a href="https://example.com/spec" target="_blank" rel="noopener noreferrer nofollow">'
                     "the spec</a>",
                     "<ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul>",
                     "<ol><li>first</li><li>second</li></ol>",
                     '<pre class="code"><code class="lang-py">print("&lt;hi&gt;")</code></pre>',
                     "<blockquote><p>quoted</p></blockquote>", '<th style="text-align:right">seq</th>',
                     "<td>text.delta</td>"]:
        assert fragment in html, (fragment, html)


# 10. cross-site protection


class _OtherSite:
    """An HTTP server on another port of 127.0.0.1 (another origin, the same site) serving `page`."""

    def __init__(self, page: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = page.encode()
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _OtherSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_task_output_loads_no_remote_image(server: ServerProcess, context: BrowserContext) -> None:
    # Any request for the tracker's host, http or https, is answered here and counted: Chromium asks
    # only for what the page's policies let it load (a request a CSP blocks is never made).
    asked: list[str] = []

    def tracker(route: Route) -> None:
        asked.append(route.request.url)
        route.fulfill(status=200, content_type="image/gif", body=b"GIF89a")

    context.route(re.compile(r"^https?://tracker\.example/"), tracker)
    task_id = _name("pixel")
    _post_task(server.url, {"id": task_id, "title": "Report with tracking pixels", "context": {"output": (
        '<p>Report body</p><img src="https://tracker.example/pixel.gif" width="1" height="1">'
        '<img src="http://tracker.example/plain.gif"><img srcset="https://tracker.example/srcset.gif 2x">'
        '<picture><source srcset="https://tracker.example/source.gif"><img alt="pic"></picture>'
        '<table background="https://tracker.example/table.gif"><tr><td>cell</td></tr></table>'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="inline">')}})
    dash = Dashboard.open(context, server.url, _name("pixel-session"), "sse", view="board")
    card = dash.page.locator(f"article.task[data-id='{task_id}']")
    card.wait_for()
    card.frame_locator("iframe.task-frame").locator("text=Report body").wait_for()
    time.sleep(1.0)
    assert asked == []
    # The same image on a page without those policies is asked for: the count above means something.
    page = context.new_page()
    page.set_content('<img src="https://tracker.example/control.gif">')
    wait_until(lambda: "https://tracker.example/control.gif" in asked, timeout=10)
    assert not dash.errors


def test_a_page_of_another_origin_cannot_open_the_dashboards_websocket(browser: Browser,
                                                                      contexts: list[BrowserContext]) -> None:
    """The attack of the issue: a page on another port of 127.0.0.1 (the same site, so the
    SameSite=Strict cookie goes along) opens /api/ws with the signed-in user's cookie."""
    token = "cross-site-test-token-123456"
    with running_app(Config(port=free_port(), journal="memory://", token=token, heartbeat=1)) as (url, _):
        context = _context(browser, contexts)
        page = context.new_page()
        page.goto(f"{url}/?token={token}")  # signed in: the cookie is set
        page.wait_for_selector("#net-status[data-state='connected']")
        attack = f"""<script>
            window.result = new Promise(resolve => {{
                const ws = new WebSocket('ws://127.0.0.1:{url.rsplit(':', 1)[1]}/api/ws');
                ws.onopen = () => {{ ws.send(JSON.stringify({{op: 'send', session: 'owned', message: 'id'}}));
                                    resolve('open'); }};
                ws.onerror = () => resolve('refused');
            }});
        </script>"""
        with _OtherSite(attack) as attacker:
            evil = context.new_page()
            evil.goto(f"{attacker.url}/")
            assert evil.evaluate("window.result") == "refused"
        sessions = httpx.get(f"{url}/api/konsole", headers={"authorization": f"Bearer {token}"}, timeout=10).json()
        assert "owned" not in [session["name"] for session in sessions["sessions"]]
        # The dashboard's own page, with the same cookie, still has its socket.
        dash = Dashboard.open(context, url, "own-page", "ws")
        dash.send("Still mine?")
        dash.wait_turns_done(1)
        assert not dash.errors


def test_the_dashboard_under_a_public_name_needs_that_name_allowed(playwright: Playwright, tmp_path: Path) -> None:
    """Opened as http://agents.test:<port>/ (a name resolving to 127.0.0.1, as behind a reverse proxy
    that keeps the Host, or as a DNS-rebinding page would), the dashboard works once the server is
    told the name (--allowed-host), and is refused (403) by a server that was not."""
    path = chromium_path()
    assert path is not None
    browser = playwright.chromium.launch(executable_path=path, headless=True,
                                         args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP agents.test 127.0.0.1"])
    try:
        with ServerProcess(f"sqlite:///{tmp_path}/allowed.db", args=["--allowed-host", "agents.test"],
                           log_path=tmp_path / "allowed.log") as allowed, \
                ServerProcess(f"sqlite:///{tmp_path}/plain.db", log_path=tmp_path / "plain.log") as plain, \
                TcpProxy(allowed.port) as proxy:
            context = new_context(browser)
            refused = context.new_page().goto(f"http://agents.test:{plain.port}/")
            assert refused is not None and refused.status == 403
            assert refused.json()["error"]["code"] == "host_not_allowed"
            for base in (f"http://agents.test:{allowed.port}", f"http://agents.test:{proxy.port}"):
                for transport in ("sse", "ws"):
                    dash = Dashboard.open(context, base, _name(f"public-{transport}"), transport)
                    dash.send("Hello from the public name")
                    dash.wait_turns_done(1)
                    assert "Hello from the public name" in dash.lane_text()
                    assert not dash.errors
            context.close()
    finally:
        browser.close()
