"""The web dashboard in a real Chromium: agent-made HTML runs nothing, the token link, markdown as
elements, and cross-site protection.

Every test drives Debian's `chromium` headless through Playwright against a real `agentwire serve`
process (tests/support/dashboard.py)."""

from __future__ import annotations

import http.server
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, BrowserContext, Playwright, Route

from tests.support.browser import BROWSER_TESTS, CHROMIUM_ARGS, Dashboard, chromium_path, create_session, new_context
from tests.support.dashboard import WS_READY, open_context, post_task, unique_name
from tests.support.eventually import eventually
from tests.support.proxy import TcpProxy
from tests.support.server import ServerProcess, running_app

pytestmark = BROWSER_TESTS


# agent-made HTML and text run nothing


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


def test_task_output_and_agent_text_run_none_of_their_payloads(dashboard: ServerProcess,
                                                               context: BrowserContext) -> None:
    # What a payload that ran would fetch (a `javascript:` URL that merely fails to load does not count).
    hits: list[str] = []
    context.on("request", lambda request: hits.append(request.url)
               if "pwned" in request.url and request.url.startswith("http") else None)
    session = unique_name("xss")
    create_session(dashboard.url, session, deltas=8, delay_ms=0, tool_calls=0)
    task_id = unique_name("xss-task")
    post_task(dashboard.url, {
        "id": task_id, "title": 'Payload <img src=x onerror="top.__pwned=11"> title',
        "description": "<script>top.__pwned = 12</script> description", "tags": ["xss"], "session": session,
        "context": {"output": PAYLOAD_OUTPUT, "choices": [{"label": "<b>bold?</b>", "value": "<b>bold?</b>"}]},
    })
    dash = Dashboard.open(context, dashboard.url, session, "sse", view="board")
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


# the token link


def test_the_token_link_signs_the_page_in_for_every_transport(browser: Browser, contexts: list[BrowserContext]) -> None:
    token = "dashboard-test-token-123456"
    with running_app(token=token, heartbeat=1) as (url, _):
        context = open_context(browser, contexts)
        page = context.new_page()
        refused = page.goto(f"{url}/")
        assert refused is not None and refused.status == 401
        page.goto(f"{url}/?token={token}")  # sets the cookie and lands on the dashboard
        page.wait_for_selector("#net-status[data-state='connected']")
        assert page.url.startswith(f"{url}/#/s/")
        for transport in ["sse", "ws"] if WS_READY else ["sse"]:
            dash = Dashboard.open(context, url, f"auth-{transport}", transport)
            dash.send("Am I signed in?")
            dash.wait_turns_done(1)
            assert not dash.errors
        assert not any(c["name"] == "agentwire_token" and not c["httpOnly"] for c in context.cookies())


# markdown builds elements


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


def test_markdown_renderer_builds_elements_not_html(dashboard: ServerProcess, context: BrowserContext) -> None:
    dash = Dashboard.open(context, dashboard.url, unique_name("markdown"))
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


# cross-site protection


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


def test_task_output_loads_no_remote_image(dashboard: ServerProcess, context: BrowserContext) -> None:
    # Any request for the tracker's host, http or https, is answered here and counted: Chromium asks
    # only for what the page's policies let it load (a request a CSP blocks is never made).
    asked: list[str] = []

    def tracker(route: Route) -> None:
        asked.append(route.request.url)
        route.fulfill(status=200, content_type="image/gif", body=b"GIF89a")

    context.route(re.compile(r"^https?://tracker\.example/"), tracker)
    task_id = unique_name("pixel")
    post_task(dashboard.url, {"id": task_id, "title": "Report with tracking pixels", "context": {"output": (
        '<p>Report body</p><img src="https://tracker.example/pixel.gif" width="1" height="1">'
        '<img src="http://tracker.example/plain.gif"><img srcset="https://tracker.example/srcset.gif 2x">'
        '<picture><source srcset="https://tracker.example/source.gif"><img alt="pic"></picture>'
        '<table background="https://tracker.example/table.gif"><tr><td>cell</td></tr></table>'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="inline">')}})
    dash = Dashboard.open(context, dashboard.url, unique_name("pixel-session"), "sse", view="board")
    card = dash.page.locator(f"article.task[data-id='{task_id}']")
    card.wait_for()
    card.frame_locator("iframe.task-frame").locator("text=Report body").wait_for()
    time.sleep(1.0)
    assert asked == []
    # The same image on a page without those policies is asked for: the count above means something.
    page = context.new_page()
    page.set_content('<img src="https://tracker.example/control.gif">')
    eventually(lambda: "https://tracker.example/control.gif" in asked, timeout=10)
    assert not dash.errors


def test_a_page_of_another_origin_cannot_open_the_dashboards_websocket(browser: Browser,
                                                                      contexts: list[BrowserContext]) -> None:
    """The attack of the issue: a page on another port of 127.0.0.1 (the same site, so the
    SameSite=Strict cookie goes along) opens /api/ws with the signed-in user's cookie."""
    token = "cross-site-test-token-123456"
    with running_app(token=token, heartbeat=1) as (url, _):
        context = open_context(browser, contexts)
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
                    dash = Dashboard.open(context, base, unique_name(f"public-{transport}"), transport)
                    dash.send("Hello from the public name")
                    dash.wait_turns_done(1)
                    assert "Hello from the public name" in dash.lane_text()
                    assert not dash.errors
            context.close()
    finally:
        browser.close()
