"""The dashboard and the agent CLIs, in a real Chromium: the new-session form offers the agents the server
found (the others greyed out with the reason), asks what a CLI agent may do, and the session header
shows the agent that runs the session — the real Codex CLI against the fake, its version, model,
working directory and approval."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.fakes import llm_servers as fake
from tests.support.agent_clis import VERSION, AgentHome, config
from tests.support.browser import BROWSER_TESTS, Dashboard, launch, new_context
from tests.support.server import running_app

pytestmark = [*BROWSER_TESTS, pytest.mark.timeout(180)]


def test_the_form_offers_available_agents_and_the_header_shows_the_agent(agent_home: AgentHome, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("TMPDIR")  # Chromium's socket path under the test's own TMPDIR would be too long
    work = tmp_path / "work"
    work.mkdir()
    agent_home.llm.enqueue(fake.text("Codex here."), provider="responses")
    with running_app(config()) as (url, _), sync_playwright() as driver:
        browser = launch(driver)
        context = new_context(browser)
        try:
            page = Dashboard.open(context, url, "start").page
            page.click("#new-session-btn")
            page.wait_for_selector("#new-session select[name=provider] option[value=codex]", state="attached")
            options = page.eval_on_selector_all("#new-session select[name=provider] option", """els => els.map(
                o => ({value: o.value, text: o.textContent, disabled: o.disabled, title: o.title}))""")
            by_value = {o["value"]: o for o in options}
            assert by_value["codex"]["text"] == f"Codex CLI {VERSION['codex']}" and not by_value["codex"]["disabled"]
            assert by_value["gemini-cli"]["text"] == f"Gemini CLI {VERSION['gemini-cli']}"
            assert by_value["anthropic"]["disabled"] and "ANTHROPIC_API_KEY" in by_value["anthropic"]["title"]
            assert page.is_hidden("#new-session select[name=approval]")  # the scripted default takes none
            page.select_option("#new-session select[name=provider]", "codex")
            assert page.is_visible("#new-session select[name=approval]")
            page.select_option("#new-session select[name=approval]", "full")
            page.fill("#new-session input[name=name]", "coder")
            page.fill("#new-session textarea[name=options]", f'{{"cwd": "{work}"}}')
            page.click("#new-session button[type=submit]")
            page.wait_for_function("() => location.hash === '#/s/coder'")
            page.fill("#input", "Hello Codex")
            page.press("#input", "Enter")
            page.wait_for_function("() => document.querySelector('#lane-main').textContent.includes('Codex here.')")
            page.wait_for_function(
                "v => document.querySelector('#session-agent').textContent.startsWith(v)", arg="Codex CLI")
            assert page.inner_text("#session-agent") == f"Codex CLI {VERSION['codex']} · gpt-5.5 · {work}"
            assert page.inner_text("#session-approval") == "full access"
            # A reloaded page shows it from the stream's replay too.
            page.reload()
            page.wait_for_function("() => document.querySelector('#session-agent').textContent.length > 0")
            assert page.inner_text("#session-approval") == "full access"
        finally:
            context.close()
            browser.close()
