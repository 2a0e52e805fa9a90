"""The dashboard's plain modules under Node.js: the one retry helper (`web/retry.js`) and the SSE
parser (`web/sse.js`). The page itself is tested in Chromium
(tests/web/test_dashboard.py and the other dashboard tests)."""

from __future__ import annotations

import pytest

from tests.support.node import node_path, run_module

pytestmark = pytest.mark.skipif(node_path() is None, reason="Node.js is not installed")


def test_retry_waits_the_backoff_between_failures_and_returns_the_value() -> None:
    result = run_module("""
        const { retry } = await import('./retry.js');
        const waits = [];
        const backoff = { next: () => { waits.push(waits.length); return 1; } };
        let calls = 0;
        const value = await retry(async () => {
            calls += 1;
            if (calls < 4) throw new Error(`fail ${calls}`);
            return 'ok';
        }, { backoff });
        let bounded;
        calls = 0;
        try {
            await retry(async () => { calls += 1; throw new Error(`fail ${calls}`); }, { backoff, tries: 3 });
        } catch (error) { bounded = { message: error.message, calls }; }
        let unwanted = 0;
        let wanted = true;
        const moved = await retry(async () => { unwanted += 1; wanted = false; throw new Error('gone'); },
                                  { backoff, wanted: () => wanted });
        console.log(JSON.stringify({ value, waits, bounded, moved: moved === undefined, unwanted }));
    """)
    assert result["value"] == "ok"
    assert result["bounded"] == {"message": "fail 3", "calls": 3}
    assert result["waits"] == list(range(3 + 2 + 1)), "one wait after each failure that is tried again"
    assert result["moved"] and result["unwanted"] == 1


def test_retry_default_backoff_is_the_reconnect_policy() -> None:
    """~250 ms doubling to a 15 s cap, ±20 % jitter, forever (DESIGN §10): measured on real timers."""
    result = run_module("""
        const { Backoff, retry } = await import('./retry.js');
        const mid = new Backoff({ random: () => 0.5 });
        const low = new Backoff({ random: () => 0 }), high = new Backoff({ random: () => 1 });
        const run = (b) => Array.from({ length: 10 }, () => b.next());
        const started = performance.now();
        const times = [];
        await retry(async () => {
            times.push(performance.now() - started);
            if (times.length < 3) throw new Error('x');
        });
        console.log(JSON.stringify({ mid: run(mid), low: run(low), high: run(high), times }));
    """)
    assert result["mid"] == [250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000, 15000]
    assert (result["low"][0], result["high"][0], result["low"][-1], result["high"][-1]) == (200, 300, 12000, 18000)
    first, second, third = result["times"]
    assert 190 <= second - first < 1000 and 390 <= third - second < 1500, result["times"]


SSE_CHECK = """
    const { SseParser } = await import('./sse.js');
    const parse = (raw, size) => {
        const messages = [], comments = [];
        const parser = new SseParser((m) => messages.push(m), (c) => comments.push(c));
        for (let i = 0; i < raw.length; i += size) parser.push(raw.slice(i, i + size));
        return { messages, comments };
    };
    const fastest = (run) => {
        let best = Infinity;
        for (let i = 0; i < 3; i += 1) {
            const t = performance.now();
            run();
            best = Math.min(best, performance.now() - t);
        }
        return best;
    };
"""


def test_sse_parser_gives_the_same_messages_however_the_stream_is_cut() -> None:
    raw = ("retry: 1000\n\n: ping\r\n\r\nid: 7\r\nevent: text.delta\r\ndata: {\"a\":1}\r\n\r\n"
           "data: x\rdata: y\r\rid: 8\nevent: e\ndata\ndata: z\n\n: late comment\ndata: cut off")
    result = run_module(SSE_CHECK + """
        const cuts = Array.from({ length: input.length }, (_, i) => parse(input, i + 1));
        console.log(JSON.stringify(cuts));
    """, raw)
    assert all(cut == result[0] for cut in result), "every cut size parses alike"
    assert result[0]["messages"] == [
        {"event": "text.delta", "data": '{"a":1}', "id": "7"},
        {"event": "message", "data": "x\ny", "id": None},
        {"event": "e", "data": "\nz", "id": "8"},
    ]
    assert result[0]["comments"] == ["ping", "late comment"]


def test_sse_parser_is_linear_in_a_multi_megabyte_chunk_and_a_line_in_many_pieces() -> None:
    """~5 MB of catch-up in one chunk costs what it costs in 64 KiB pieces, and one 8 MB line in 1 KiB
    pieces what it costs in one (the parser before took 3.3 s and 27 s where these take ~0.1 s)."""
    result = run_module(SSE_CHECK + """
        const frames = ['retry: 1000\\n\\n'];
        for (let seq = 1; seq <= 21000; seq += 1) {
            frames.push(`id: ${seq}\\nevent: text.delta\\ndata: {"seq":${seq},"text":"${'x'.repeat(170)}"}\\n\\n`);
            if (seq % 100 === 0) frames.push(': ping\\r\\n\\r\\n');
        }
        const raw = frames.join('');
        const line = `data: ${'y'.repeat(8e6)}\\n\\n`;
        const whole = parse(raw, raw.length).messages;
        const same = JSON.stringify(whole) === JSON.stringify(parse(raw, 65536).messages)
            && JSON.stringify(whole) === JSON.stringify(parse(raw, 4093).messages);
        const long = parse(line, 1024).messages;
        console.log(JSON.stringify({
            size: raw.length, count: whole.length, last: whole[whole.length - 1], same,
            longOk: long.length === 1 && long[0].data.length === 8e6,
            one: fastest(() => parse(raw, raw.length)), pieces: fastest(() => parse(raw, 65536)),
            lineOne: fastest(() => parse(line, line.length)), linePieces: fastest(() => parse(line, 1024)),
        }));
    """)
    assert result["size"] > 4_400_000 and result["count"] == 21_000 and result["same"] and result["longOk"]
    assert result["last"] == {"event": "text.delta", "data": '{"seq":21000,"text":"%s"}' % ("x" * 170), "id": "21000"}
    assert result["one"] < 4 * result["pieces"], result
    assert result["linePieces"] < 4 * result["lineOne"] + 50, result
