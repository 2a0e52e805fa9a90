"""The dashboard's Markdown (`web/markdown.js`: markdown-it's tokens built into elements with `h()`) in
a real Chromium, and the vendored markdown-it being the release package-lock.json pins.

The page is served from the package's `web/` folder by Playwright's router, so no server runs.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Route, sync_playwright

import agentwire
from tests.support.browser import chromium_path, launch, new_context
from tests.support.paths import ROOT

WEB = Path(agentwire.__file__).parent / "web"
VENDOR = WEB / "vendor"
ORIGIN = "http://dashboard.test"

RENDER = """async (sources) => {
    const { renderMarkdown } = await import('/static/markdown.js');
    return sources.map((source) => {
        const el = document.createElement('div');
        el.append(renderMarkdown(source));
        document.body.append(el);
        return { html: el.innerHTML, text: el.textContent,
                 tags: [...el.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()),
                 hrefs: [...el.querySelectorAll('a')].map((a) => a.getAttribute('href')),
                 attrs: [...el.querySelectorAll('*')].flatMap((e) => e.getAttributeNames()) };
    });
}"""


def _serve(route: Route) -> None:
    path = route.request.url.removeprefix(ORIGIN).split("?")[0]
    if path == "/":
        route.fulfill(body="<!doctype html><meta charset=utf-8><title>markdown</title>", content_type="text/html")
        return
    file = (WEB / path.removeprefix("/static/")).resolve()
    if not path.startswith("/static/") or not file.is_file() or WEB not in file.parents:
        route.fulfill(status=404)
        return
    route.fulfill(body=file.read_bytes(), content_type=mimetypes.guess_type(file.name)[0] or "text/javascript")


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    if chromium_path() is None:
        pytest.skip("Debian's chromium is not installed")
    with sync_playwright() as driver:
        browser = launch(driver)
        context = new_context(browser)
        context.route(f"{ORIGIN}/**", _serve)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{ORIGIN}/")
        yield page
        assert not errors
        browser.close()


def render(page: Page, *sources: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = page.evaluate(RENDER, list(sources))
    return result


# What the hand-written renderer got wrong, each compared with CommonMark's answer.
COMMONMARK = [
    ("setext headings", "Title\n=====\n\nSub title\n---------", "<h1>Title</h1><h2>Sub title</h2>"),
    ("indented code", "Run this:\n\n    make test <all>\n      --verbose",
     '<p>Run this:</p><pre class="code"><code>make test &lt;all&gt;\n  --verbose</code></pre>'),
    ("reference links", "See [the spec][spec] and [Spec].\n\n[spec]: https://example.com/spec \"title\"",
     '<p>See <a href="https://example.com/spec" target="_blank" rel="noopener noreferrer nofollow">the spec</a>'
     ' and <a href="https://example.com/spec" target="_blank" rel="noopener noreferrer nofollow">Spec</a>.</p>'),
    ("entities", "AT&amp;T &copy; 2026 &lt;b&gt;not bold&lt;/b&gt; &#x27;q&#x27; &nosuch;",
     "<p>AT&amp;T © 2026 &lt;b&gt;not bold&lt;/b&gt; 'q' &amp;nosuch;</p>"),
    ("strong emphasis", "***both*** and **_mixed_** and *a **b** c*",
     "<p><em><strong>both</strong></em> and <strong><em>mixed</em></strong> and <em>a <strong>b</strong> c</em></p>"),
    ("lazy list continuation", "- first item\ncontinues lazily\n- second",
     "<ul><li>first item<br>continues lazily</li><li>second</li></ul>"),
    ("lazy quote continuation", "> quoted\nstill quoted", "<blockquote><p>quoted<br>still quoted</p></blockquote>"),
    ("loose list", "- one\n\n- two", "<ul><li><p>one</p></li><li><p>two</p></li></ul>"),
    ("escaped markers", r"\*not em\* and 2 \* 3", "<p>*not em* and 2 * 3</p>"),
]


@pytest.mark.parametrize(("source", "expected"), [pytest.param(s, e, id=name) for name, s, e in COMMONMARK])
def test_commonmark_cases_the_hand_written_renderer_got_wrong(page: Page, source: str, expected: str) -> None:
    assert render(page, source)[0]["html"] == expected


# The dashboard's look, as the CSS expects it.
LOOK = [
    ("fence with language", "```py title=x\nprint('<hi>')\n```",
     '<pre class="code"><code class="lang-py">print(\'&lt;hi&gt;\')</code></pre>'),
    ("table in its wrapper", "| seq | type |\n|---:|:-:|\n| 12 | text.delta |",
     '<div class="table-wrap"><table><thead><tr><th style="text-align:right">seq</th>'
     '<th style="text-align:center">type</th></tr></thead><tbody><tr><td style="text-align:right">12</td>'
     '<td style="text-align:center">text.delta</td></tr></tbody></table></div>'),
    ("task list", "- [ ] write\n- [x] test",
     '<ul><li class="task-item"><span class="check" aria-hidden="true">☐ </span>write</li>'
     '<li class="task-item"><span class="check done" aria-hidden="true">☑ </span>test</li></ul>'),
    ("strikethrough", "~~old~~ new", "<p><del>old</del> new</p>"),
    ("ordered list start", "3. three\n4. four", '<ol start="3"><li>three</li><li>four</li></ol>'),
    ("bare URLs only with a scheme", "see https://example.com/a_b, app.py and notes.md",
     '<p>see <a href="https://example.com/a_b" target="_blank" rel="noopener noreferrer nofollow">'
     "https://example.com/a_b</a>, app.py and notes.md</p>"),
    ("snake_case stays", "snake_case_name and __init__", "<p>snake_case_name and <strong>init</strong></p>"),
    ("line breaks kept", "line one\nline two", "<p>line one<br>line two</p>"),
    ("image as a link", "![diagram](https://example.com/d.png)",
     '<p><a href="https://example.com/d.png" target="_blank" rel="noopener noreferrer nofollow">diagram</a></p>'),
]


@pytest.mark.parametrize(("source", "expected"), [pytest.param(s, e, id=name) for name, s, e in LOOK])
def test_markdown_keeps_the_dashboards_elements_and_classes(page: Page, source: str, expected: str) -> None:
    assert render(page, source)[0]["html"] == expected


PAYLOADS = [
    "<script>top.__pwned = 1</script>",
    '<img src=x onerror="top.__pwned = 2">',
    "<svg onload=top.__pwned=3>",
    '<a href="javascript:top.__pwned=4">html link</a>',
    '<iframe srcdoc="<script>top.__pwned=5</script>"></iframe>',
    "[click](javascript:top.__pwned=6)",
    "[click](JaVaScRiPt:top.__pwned=7)",
    "[click](&#106;avascript:top.__pwned=8)",
    "[click](<javascript:top.__pwned=9>)",
    "[click]( javascript:top.__pwned=10 )",
    "[click](java%0ascript:top.__pwned=11)",
    "[click](vbscript:msgbox)",
    "[click](data:text/html,<script>top.__pwned=12</script>)",
    "[click](data:text/html;base64,PHNjcmlwdD50b3AuX19wd25lZD0xMzwvc2NyaXB0Pg==)",
    "![img](javascript:top.__pwned=14)",
    '![img](x" onerror="top.__pwned=15)',
    "<javascript:top.__pwned=16>",
    "<data:text/html,<script>top.__pwned=17</script>>",
    "[ref]\n\n[ref]: javascript:top.__pwned=18",
    "javascript:top.__pwned=19 as bare text",
    '[q](https://example.com/" onclick="top.__pwned=20)',
    "[rel](/api/tasks) and [proto](//evil.example/x)",
    "```html\n<script>top.__pwned = 21</script>\n```",
    "`<img src=x onerror=top.__pwned=22>`",
    "<details open ontoggle=top.__pwned=23>",
    "<style>*{background:url(javascript:top.__pwned=24)}</style>",
    '<math><mi xlink:href="javascript:top.__pwned=25">x</mi></math>',
    "| a |\n|---|\n| <img src=x onerror=top.__pwned=26> |",
    "> <script>top.__pwned=27</script>\n> - [x] <b onmouseover=top.__pwned=28>",
    "# <object data=javascript:top.__pwned=29>\nSetext <embed src=x>\n===",
]
SAFE_TAGS = {"p", "br", "h1", "h2", "a", "code", "pre", "strong", "em", "del", "ul", "ol", "li", "span", "blockquote",
             "div", "table", "thead", "tbody", "tr", "th", "td"}


def test_payloads_in_agent_text_stay_text(page: Page) -> None:
    results = render(page, *PAYLOADS)
    for source, result in zip(PAYLOADS, results, strict=True):
        assert set(result["tags"]) <= SAFE_TAGS, (source, result["html"])
        assert not [a for a in result["attrs"] if a.startswith("on") or a in ("src", "srcdoc", "xlink:href")], source
        assert all(href.startswith(("https://", "http://")) for href in result["hrefs"]), (source, result["hrefs"])
    page.wait_for_timeout(300)
    assert page.evaluate("top.__pwned") is None
    # The payloads that are no link at all show what was written.
    assert results[0]["text"] == "<script>top.__pwned = 1</script>"
    assert results[5]["text"] == "[click](javascript:top.__pwned=6)"
    assert results[21]["hrefs"] == []


def test_the_vendored_markdown_it_is_the_locked_release_with_its_licences() -> None:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    version = lock["packages"]["node_modules/markdown-it"]["version"]
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["markdown-it"]
    assert version == pinned
    vendored = (VENDOR / "markdown-it.js").read_text()
    assert vendored.startswith(f"/*! markdown-it {version} ")
    assert "sourceMappingURL" not in vendored
    listed = [line.split(" ") for line in (VENDOR / "VERSIONS").read_text().splitlines()]
    assert listed[0] == ["markdown-it", version, "MIT"]
    for name, package_version, _licence in listed:
        assert (VENDOR / f"{name}.LICENSE").read_text().strip(), name
        assert lock["packages"][f"node_modules/{name}"]["version"] == package_version, name
    build = ROOT / "node_modules" / "markdown-it" / "dist" / "browser" / "markdown-it.esm.min.mjs"
    if build.exists():  # `make vendor` output is what is committed
        upstream = "".join(line for line in build.read_text().splitlines(keepends=True)
                           if not line.startswith("//# sourceMappingURL="))
        assert vendored == upstream
