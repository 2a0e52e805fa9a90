"""The web dashboard in a real Chromium: cuts, restarts and reconnects lose and repeat nothing.

Every test drives Debian's `chromium` headless through Playwright against a real `agentwire serve`
process (tests/support/dashboard.py).
Transcripts are compared as the console lane's text: a page that was cut (through a TCP proxy, or by a
server restart) must end with exactly what a page that never was cut shows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext

from tests.support.browser import BROWSER_TESTS, RECONNECTING, Dashboard, create_session, session_state
from tests.support.dashboard import TRANSPORTS, WS_READY, dashboard_process, markers, open_context, unique_name
from tests.support.proxy import TcpProxy
from tests.support.server import ServerProcess

pytestmark = BROWSER_TESTS


# cuts: a proxy that drops or silences the connection, and a server restart


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cut_through_proxy_mid_turn_loses_and_repeats_nothing(dashboard: ServerProcess, browser: Browser,
                                                              contexts: list[BrowserContext], transport: str) -> None:
    session = unique_name("cut")
    create_session(dashboard.url, session, deltas=1300, delay_ms=4, tool_calls=2)
    with TcpProxy(dashboard.port) as proxy:
        reference = Dashboard.open(open_context(browser, contexts), dashboard.url, session, transport)
        cut = Dashboard.open(open_context(browser, contexts), f"http://127.0.0.1:{proxy.port}", session, transport)
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

    fresh = Dashboard.open(open_context(browser, contexts), dashboard.url, session, transport)
    fresh.wait_turns_done(1)
    assert fresh.lane_text() == expected
    tags = markers(expected)
    assert tags == [f"[{n}]" for n in range(50, 1301, 50)], tags
    assert cut.page.input_value("#input") == "typed while reconnecting"
    assert not cut.errors and not reference.errors


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_restart_mid_turn_resumes_from_the_journal(dashboard: ServerProcess, browser: Browser,
                                                          contexts: list[BrowserContext], transport: str) -> None:
    session = unique_name("restart")
    create_session(dashboard.url, session, deltas=3000, delay_ms=3, tool_calls=1)
    live = Dashboard.open(open_context(browser, contexts), dashboard.url, session, transport)
    live.send("Keep writing while the server restarts")
    live.wait_text("[100]")

    dashboard.kill()  # SIGKILL mid-turn: what the journal stored is all there is
    status = live.wait_status("reconnecting")
    assert RECONNECTING.match(status), status
    dashboard.start()  # same port, same SQLite file
    live.wait_status("connected")
    live.wait_turns_done(1)
    assert live.turns() == ["failed"]
    assert "Failed: interrupted" in live.lane_text()

    fresh = Dashboard.open(open_context(browser, contexts), dashboard.url, session, transport)
    fresh.wait_turns_done(1)
    text = live.lane_text()
    assert text == fresh.lane_text()
    tags = markers(text)
    assert tags == sorted(set(tags), key=lambda m: int(m[1:-1])), "a line came twice"
    assert not live.errors


@pytest.fixture(scope="module")
def trimming_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that keeps only the last ~100 events per stream, so a long cut outlives the journal."""
    with dashboard_process(tmp_path_factory.mktemp("trimming"), "--retention", "100") as process:
        yield process


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_position_older_than_the_journal_reloads_the_snapshot(trimming_server: ServerProcess, browser: Browser,
                                                              contexts: list[BrowserContext], transport: str) -> None:
    session = unique_name("trimmed")
    create_session(trimming_server.url, session, deltas=700, delay_ms=2, tool_calls=2)
    # The server folds `/messages` lazily, when asked: under retention, events trimmed before it was
    # asked are missing from it. Asking often keeps its fold whole, so this test checks the page.
    stop = threading.Event()

    def keep_server_fold_current() -> None:
        with httpx.Client(base_url=trimming_server.url, timeout=10) as http:
            while not stop.is_set():
                http.get(f"/api/konsole/{session}/messages")
                time.sleep(0.02)

    poller = threading.Thread(target=keep_server_fold_current, daemon=True)
    poller.start()
    try:
        with TcpProxy(trimming_server.port) as proxy:
            reference = Dashboard.open(open_context(browser, contexts), trimming_server.url, session, transport)
            cut = Dashboard.open(open_context(browser, contexts), f"http://127.0.0.1:{proxy.port}", session, transport)
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
    assert markers(cut.lane_text()) == [f"[{n}]" for n in range(50, 701, 50)]
    assert not cut.errors and not reference.errors


# reconnecting: the backoff, a hidden tab, another transport


def test_reconnect_backoff_policy(dashboard: ServerProcess, context: BrowserContext) -> None:
    """250 ms doubling to a 15 s cap with ±20 % jitter, reset on open; the status text's format."""
    dash = Dashboard.open(context, dashboard.url, unique_name("policy"))
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
    assert session_state(dashboard.url, dash.page.inner_text("#session-name"))["agent_state"] == "idle"


def test_a_tab_hidden_for_more_than_5_s_reconnects_when_visible(dashboard: ServerProcess,
                                                                 context: BrowserContext) -> None:
    dash = Dashboard.open(context, dashboard.url, unique_name("visible"))
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
    name = unique_name("made-here")
    page.click("#new-session-btn")
    page.fill("#new-session [name=name]", name)
    page.fill("#new-session [name=options]", '{"deltas": 5, "delay_ms": 0}')
    page.click("#new-session button[type=submit]")
    page.wait_for_selector(f"#session-list a.current[data-session='{name}']")
    assert page.inner_text("#session-name") == name
    assert session_state(dashboard.url, name)["agent_state"] == "idle"
    assert not dash.errors


@pytest.mark.skipif(not WS_READY, reason="no src/agentwire/ws.py yet")
def test_switching_transport_mid_turn_resumes_at_the_last_seq(dashboard: ServerProcess, browser: Browser,
                                                              contexts: list[BrowserContext]) -> None:
    session = unique_name("switch")
    create_session(dashboard.url, session, deltas=600, delay_ms=3, tool_calls=1)
    dash = Dashboard.open(open_context(browser, contexts), dashboard.url, session, "sse")
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
    fresh = Dashboard.open(open_context(browser, contexts), dashboard.url, session, "sse")
    fresh.wait_turns_done(1)
    assert dash.lane_text() == fresh.lane_text()
    assert markers(dash.lane_text()) == [f"[{n}]" for n in range(50, 601, 50)]
    assert not dash.errors
