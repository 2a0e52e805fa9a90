"""The dashboard's fold of a session stream (`web/transcript.js`, run under Node.js) against the Python
fold (`agentwire.console.transcript`), on turns recorded from a running server: thinking, tools, todo
lists, text, a quick turn interleaved with a main one, a turn queued behind it and cancelled, and
failed turns. Both folds get the same events, as the server journaled them and as the catch-up fold
(`?fold=1`) replays them; the page's reload from `/messages` must rebuild what its live fold holds.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from agentwire.console.transcript import TERMINAL, Transcript
from agentwire.types import Event
from tests.support.node import node_path, run_module
from tests.support.server import Served
from tests.support.turns import create_session, follow_until, run_turn

pytestmark = pytest.mark.skipif(node_path() is None, reason="Node.js is not installed")

JSON = dict[str, Any]

JS_FOLD = """
    const { Transcript } = await import('./transcript.js');
    const view = (fold) => ({ seq: fold.seq, entries: fold.entries, todos: fold.todos, usage: fold.usage,
                              state: fold.state, agent: fold.agent, turns: [...fold.turns.values()],
                              rules: fold.rules, pending: fold.pendingPermissions().map((p) => p.request_id) });
    const live = new Transcript();
    for (const envelope of input.events) {
        live.apply(envelope);
        live.apply(envelope); // a duplicate: ignored
    }
    console.log(JSON.stringify({ live: view(live), reloaded: view(Transcript.fromSnapshot(input.snapshot)) }));
"""


def _record(server: Served) -> list[str]:
    """Two sessions of real turns; returns their names once every turn has ended."""
    options = {"deltas": 120, "delay_ms": 4, "tool_calls": 2}
    create_session(server.url, "fold-a", headers=server.auth, options=options)
    create_session(server.url, "fold-b", headers=server.auth, options={**options, "fail_at": 10})
    writing, second_writing = threading.Event(), threading.Event()

    def first_text(flag: threading.Event) -> Any:
        return lambda envelope: flag.set() if envelope["type"] == "text.delta" else None

    def cancel_once_writing(envelope: JSON) -> None:
        if envelope["type"] == "text.delta" and not second_writing.is_set():
            second_writing.set()
            server.http.post("/api/konsole/fold-a/cancel", json={"turn": envelope["turn"]}).raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        turns = [pool.submit(run_turn, server.url, "fold-a", "Explain resumable streams", headers=server.auth,
                             on_event=first_text(writing))]
        assert writing.wait(30)
        turns.append(pool.submit(run_turn, server.url, "fold-a", "Quick: still going?", lane="quick",
                                 headers=server.auth))
        turns.append(pool.submit(run_turn, server.url, "fold-a", "Then this, queued", headers=server.auth,
                                 on_event=cancel_once_writing))
        turns.append(pool.submit(run_turn, server.url, "fold-b", "This one fails", headers=server.auth))
        ends = [turn.result(timeout=60)[-1]["type"] for turn in turns]
    assert ends == ["turn.completed", "turn.completed", "turn.cancelled", "turn.failed"]
    run_turn(server.url, "fold-b", "Quick, and failing too", lane="quick", headers=server.auth)
    return ["fold-a", "fold-b"]


def _events(server: Served, session: str, head: int, fold: bool) -> list[JSON]:
    events = follow_until(server.url, session, 0, lambda envelope: envelope.get("seq") == head,
                          params={"fold": 1} if fold else None, headers=server.auth)
    return [envelope for envelope in events if envelope.get("seq") is not None]


def _python(events: list[JSON]) -> JSON:
    """The Python fold of `events`, as JSON (what the JS fold prints)."""
    transcript = Transcript()
    for envelope in events:
        event = Event.from_raw(orjson.dumps(envelope))
        transcript.apply(event)
        transcript.apply(event)  # a duplicate: ignored
    view = {"seq": transcript.seq, "entries": transcript.entries, "todos": transcript.todos,
            "usage": transcript.usage, "state": transcript.state, "agent": transcript.agent,
            "turns": [vars(summary) for summary in transcript.turns.values()], "rules": transcript.rules,
            "pending": [request["request_id"] for request in transcript.pending_permissions()]}
    folded: JSON = orjson.loads(orjson.dumps(view))
    return folded


def _without_todo_cards(view: JSON) -> JSON:
    """The page's fold adds a `todos` entry per turn (the server keeps only the latest list)."""
    return {**view, "entries": [entry for entry in view["entries"] if entry["kind"] != "todos"]}


def _reloadable(view: JSON) -> JSON:
    """What a reload from `/messages` can know: not the seq of the `todo.updated` behind a todo card
    (the view does not use it), nor a turn's provider, model and origin (the next events bring them)."""
    entries = [{k: v for k, v in entry.items() if not (entry["kind"] == "todos" and k == "seq")}
               for entry in view["entries"]]
    turns = [{k: v for k, v in turn.items() if k not in ("provider", "model", "origin")} for turn in view["turns"]]
    return {"entries": entries, "turns": turns, "todos": view["todos"], "usage": view["usage"], "agent": view["agent"],
            "rules": view["rules"], "pending": view["pending"]}


def test_the_dashboard_and_python_fold_recorded_turns_alike(server: Served) -> None:
    for session in _record(server):
        snapshot = server.http.get(f"/api/konsole/{session}/messages").raise_for_status().json()
        head = snapshot["seq"]
        raw = _events(server, session, head, fold=False)
        assert [envelope["seq"] for envelope in raw] == list(range(1, head + 1))
        kinds = {envelope["type"] for envelope in raw}
        assert {"thinking.delta", "tool.call", "tool.result", "todo.updated", "text.delta", "state"} <= kinds
        assert kinds & TERMINAL == ({"turn.completed", "turn.cancelled"} if session == "fold-a" else {"turn.failed"})
        if session == "fold-a":  # the quick turn wrote while the first main turn wrote; the second was queued
            first = next(e["turn"] for e in raw if e["type"] == "turn.started")
            main = [e["seq"] for e in raw if e.get("turn") == first and e["type"] == "text.delta"]
            quick = [e["seq"] for e in raw if e.get("lane") == "quick" and e["type"] == "text.delta"]
            assert quick and main and quick[0] < main[-1] and main[0] < quick[-1] and "turn.queued" in kinds
        # Catch-up replay: finished blocks come as their one `*.done`.
        folded = _events(server, session, head, fold=True)
        assert "thinking.delta" not in {envelope["type"] for envelope in folded} and len(folded) < len(raw)

        for events in (raw, folded):
            python = _python(events)
            js = run_module(JS_FOLD, {"events": events, "snapshot": snapshot})
            assert _without_todo_cards(js["live"]) == python
            # One todo card per turn, showing the turn's last list.
            assert [entry["todos"] for entry in js["live"]["entries"] if entry["kind"] == "todos"] == [
                entry["input"]["todos"] for entry in _last_todo_writes(python["entries"])]
        # The server's `/messages` is the Python fold, and a page that reloads from it shows what a
        # page that followed the stream shows.
        assert snapshot["messages"] == _python(raw)["entries"]
        js = run_module(JS_FOLD, {"events": raw, "snapshot": snapshot})
        assert _reloadable(js["reloaded"]) == _reloadable(js["live"])


def _last_todo_writes(entries: list[JSON]) -> list[JSON]:
    last: dict[str, JSON] = {}
    for entry in entries:
        if entry["kind"] == "tool" and entry["name"] in ("todo_write", "TodoWrite"):
            last[entry["turn"]] = entry
    return list(last.values())


TODOS = [{"content": "Read", "status": "completed", "activeForm": "Reading"},
         {"content": "Fix", "status": "in_progress", "activeForm": "Fixing"}]
# What the scripted agent never sends, but other agents and a cut stream can: a result whose call was
# not seen, a block that comes only as its `*.done`, costs, Claude Code's `TodoWrite`, a turn ended
# before it was seen to start, a quick turn's agent. (kind, data, turn, lane); seqs follow the order.
ODD_SPEC: list[tuple[str, JSON, str, str]] = [
    ("agent.info", {"provider": "claude", "session_id": "s-1"}, "", "main"),
    ("turn.queued", {"message": "first", "origin": {"view": "agui", "run": "r1"}}, "t1", "main"),
    ("turn.started", {"message": "first"}, "t1", "main"),
    ("text.done", {"block": 2, "text": "whole, no deltas"}, "t1", "main"),
    ("tool.result", {"call_id": 7, "output": {"rows": 2}, "is_error": True}, "t1", "main"),
    ("tool.call", {"call_id": "c8", "name": "bash"}, "t1", "main"),
    ("tool.call", {"call_id": "c8a", "name": "Read", "input": {"path": "x"}, "parent_call_id": "c8"}, "t1", "main"),
    ("thinking.delta", {"text": "no block number"}, "t1", "main"),
    ("tool.call", {"call_id": "c9", "name": "TodoWrite", "input": {"todos": TODOS}}, "t1", "main"),
    ("todo.updated", {"todos": TODOS}, "t1", "main"),
    ("tool.result", {"call_id": "c9", "output": "ok", "duration_ms": 3.5}, "t1", "main"),
    ("state", {"agent_state": "running_tool", "outstanding_llm_calls": 1, "retry_in_ms": 900, "extra": True},
     "t1", "main"),
    ("turn.completed", {"usage": {"input_tokens": 5, "output_tokens": 7, "cost_usd": 0.0123},
                        "stop_reason": "end_turn"}, "t1", "main"),
    ("permission.requested", {"request_id": "p1", "tool": "Bash", "input": {"command": "git status -s"},
                              "turn": "t1", "expires_at": 1, "rule": {"tool": "Bash", "prefix": "git status"},
                              "call_id": "c10", "title": "Run git status"}, "t1", "main"),
    ("permission.decided", {"request_id": "p1", "decision": "allow", "by": "user", "message": "", "remember": True,
                            "rule": {"tool": "Bash", "prefix": "git status"}}, "t1", "main"),
    ("permission.requested", {"request_id": "p2", "tool": "Write", "input": {"file_path": "a", "content": ""},
                              "turn": "t1", "expires_at": 2}, "t1", "main"),
    ("permission.decided", {"request_id": "p2", "decision": "deny", "by": "timeout", "message": "too late"},
     "t1", "main"),
    ("permission.decided", {"request_id": "p-unknown", "decision": "deny", "by": "user"}, "t1", "main"),
    ("turn.started", {"message": "second", "provider": "claude", "model": "opus"}, "t2", "main"),
    ("permission.requested", {"request_id": "p3", "tool": "Edit", "input": {"file_path": "b"}, "turn": "t2",
                              "expires_at": 3}, "t2", "main"),
    ("turn.failed", {"error": "boom", "usage": {"output_tokens": 1, "cost_usd": 0.004},
                     "permission_denials": [{"tool_name": "Bash"}]}, "t2", "main"),
    ("turn.cancelled", {"reason": "never seen starting"}, "t3", "quick"),
    ("agent.info", {"provider": "codex", "session_id": "quick-own"}, "t4", "quick"),  # not the session's agent
    ("turn.started", {"message": "third", "provider": "claude", "model": "opus"}, "t5", "quick"),
    ("permission.requested", {"request_id": "p4", "tool": "Write", "input": {}, "turn": "t5", "expires_at": 4},
     "t5", "quick"),
    ("text.delta", {"block": 0, "text": "late"}, "t9", "main"),
]
ODD = [{"seq": seq, "stream": "konsole/s", "type": kind, "ts": 1_700_000_000_000 + seq, "turn": turn, "lane": lane,
        "data": data} for seq, (kind, data, turn, lane) in enumerate(ODD_SPEC, start=1)]


def test_the_dashboard_and_python_fold_odd_streams_alike() -> None:
    python = _python(ODD)
    snapshot = {"seq": python["seq"], "messages": python["entries"], "todos": python["todos"], "agent": python["agent"],
                "rules": python["rules"]}
    js = run_module(JS_FOLD, {"events": ODD, "snapshot": snapshot})
    assert python["usage"] == {"input_tokens": 5, "output_tokens": 8, "cost_usd": 0.0163}
    assert python["turns"][0]["origin"] == {"view": "agui", "run": "r1"} and python["agent"]["provider"] == "claude"
    assert _without_todo_cards(js["live"]) == python
    assert _reloadable(js["reloaded"]) == _reloadable(js["live"])
    # A request allowed for good, one denied at its deadline, one left when its turn failed, one waiting.
    permissions = {e["request_id"]: (e["status"], e.get("by"), e.get("remember")) for e in python["entries"]
                   if e["kind"] == "permission"}
    assert permissions == {"p1": ("allowed", "user", True), "p2": ("denied", "timeout", None),
                           "p3": ("ended", None, None), "p4": ("pending", None, None)}
    assert python["rules"] == [{"tool": "Bash", "prefix": "git status"}] and python["pending"] == ["p4"]
