"""Folding a session's stream: the transcript (one entry per message, not per delta), the state
snapshot, and the catch-up fold that replaces a finished block's deltas by its one `*.done`.

The same fold serves the server (`/messages`, `/state`, the context a provider gets) and clients
(the Python client rebuilds its transcript with it), so "what the user saw" has one definition. A leaf:
it imports only the vocabulary (`types.py`), so a client loads it without the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentwire.types import JSON, Event, Message

TERMINAL = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})
PERMISSION_FIELDS = ("request_id", "tool", "input", "call_id", "title", "expires_at", "rule")
_BLOCK_KINDS = {"text.delta": "text", "text.done": "text", "thinking.delta": "thinking", "thinking.done": "thinking"}
_DELTA_KINDS = {"text.delta": "text", "thinking.delta": "thinking"}


@dataclass
class TurnSummary:
    id: str
    lane: str
    message: str
    status: str  # queued | running | completed | failed | cancelled
    provider: str | None = None
    model: str | None = None
    started_seq: int = 0
    error: str | None = None
    origin: JSON | None = None  # who asked for the turn (a protocol view's run id), as submitted


@dataclass
class Transcript:
    """A fold of one session stream. Feed events in seq order with `apply`; duplicates are ignored."""

    seq: int = 0
    _entries: list[JSON] = field(default_factory=list)
    todos: list[JSON] = field(default_factory=list)
    turns: dict[str, TurnSummary] = field(default_factory=dict)
    usage: JSON = field(default_factory=lambda: {"input_tokens": 0, "output_tokens": 0})
    state: JSON = field(default_factory=lambda: {"agent_state": "idle", "outstanding_llm_calls": 0,
                                                 "outstanding_tool_calls": []})
    agent: JSON = field(default_factory=dict)  # the main lane's latest `agent.info`: what runs its turns
    lane_todos: dict[str, list[JSON]] = field(default_factory=dict)  # each lane's latest todo list
    # Tool-permission requests by id (their entries: status "pending", "allowed", "denied" or, for a
    # request whose turn ended without an answer, "ended"), and the rules "always allow" made.
    permissions: dict[str, JSON] = field(default_factory=dict)
    rules: list[JSON] = field(default_factory=list)
    _blocks: dict[tuple[str, str, int], JSON] = field(default_factory=dict)
    _tools: dict[str, JSON] = field(default_factory=dict)
    # Deltas not yet joined into their entry's text: `text += delta` on a dict value copies the whole
    # text every time (quadratic; a 200,000-delta turn spent most of its CPU there), so deltas are
    # kept as parts and joined once, when someone reads the entries.
    _parts: dict[tuple[str, str, int], list[str]] = field(default_factory=dict)

    @property
    def entries(self) -> list[JSON]:
        for key, parts in self._parts.items():
            entry = self._blocks[key]
            entry["text"] += "".join(parts)
        self._parts.clear()
        return self._entries

    def apply(self, event: Event) -> None:
        if event.seq <= self.seq:
            return
        self.seq = event.seq
        kind = _DELTA_KINDS.get(event.type)
        if kind is not None:
            # The bulk of a live turn: a delta of a block already open only adds a part, so it is
            # folded here without the dicts the general case builds (the turn is on the event), and,
            # live, from the data TurnRunner made for it (a fresh dict of a str and an int it never
            # keeps: the same as the stored bytes) instead of decoding them back.
            data = event.given or event.data
            key = (event.turn or "", kind, int(data.get("block", 0)))
            entry = self._blocks.get(key)
            if entry is not None:
                parts = self._parts.get(key)
                if parts is None:
                    parts = self._parts[key] = []
                parts.append(data.get("text", ""))
                entry["seq"] = event.seq
                return
        self.apply_envelope(event.envelope)

    def apply_envelope(self, envelope: JSON) -> None:
        kind: str = envelope["type"]
        data: JSON = envelope.get("data", {})
        turn: str = envelope.get("turn") or ""
        lane: str = envelope.get("lane") or "main"
        seq: int = envelope.get("seq", 0)
        base = {"turn": turn, "lane": lane, "seq": seq}
        if kind in ("turn.queued", "turn.started"):
            summary = self.turns.get(turn)
            if summary is None:
                summary = self.turns[turn] = TurnSummary(turn, lane, data.get("message", ""), "queued",
                                                         started_seq=seq, origin=data.get("origin"))
                self._entries.append({**base, "role": "user", "kind": "message", "text": summary.message})
            if kind == "turn.started":
                summary.status = "running"
                summary.provider = data.get("provider")
                summary.model = data.get("model")
        elif kind in _BLOCK_KINDS:
            key = (turn, _BLOCK_KINDS[kind], int(data.get("block", 0)))
            entry = self._blocks.get(key)
            if entry is None:
                entry = self._blocks[key] = {**base, "role": "assistant", "kind": key[1], "block": key[2],
                                             "text": "", "done": False}
                self._entries.append(entry)
            if kind.endswith(".delta"):
                self._parts.setdefault(key, []).append(data.get("text", ""))
            else:
                if "text" in data:
                    entry["text"] = data["text"]
                    self._parts.pop(key, None)
                entry["done"] = True
            entry["seq"] = seq
        elif kind == "tool.call":
            entry = {**base, "role": "assistant", "kind": "tool", "call_id": data.get("call_id"),
                     "name": data.get("name"), "input": data.get("input"), "output": None,
                     "is_error": False, "duration_ms": None, "done": False}
            if data.get("parent_call_id"):
                entry["parent_call_id"] = data["parent_call_id"]
            self._tools[str(data.get("call_id"))] = entry
            self._entries.append(entry)
        elif kind == "tool.result":
            entry = self._tools.get(str(data.get("call_id")))
            if entry is None:
                entry = {**base, "role": "assistant", "kind": "tool", "call_id": data.get("call_id"),
                         "name": None, "input": None}
                self._entries.append(entry)
            entry.update(output=data.get("output"), is_error=bool(data.get("is_error")),
                         duration_ms=data.get("duration_ms"), done=True, seq=seq)
        elif kind == "permission.requested":
            entry = {**base, "role": "assistant", "kind": "permission", "status": "pending",
                     **{k: data[k] for k in PERMISSION_FIELDS if k in data}}
            self.permissions[str(data.get("request_id"))] = entry
            self._entries.append(entry)
        elif kind == "permission.decided":
            entry = self.permissions.get(str(data.get("request_id")))
            if entry is not None:
                entry.update(status="allowed" if data.get("decision") == "allow" else "denied",
                             by=data.get("by"), message=data.get("message", ""), seq=seq)
                if data.get("remember"):
                    entry["remember"] = True
            if data.get("rule"):
                self.rules.append(dict(data["rule"]))
        elif kind == "todo.updated":
            self.todos = self.lane_todos[lane] = list(data.get("todos", []))
        elif kind == "agent.info" and lane == "main":  # a quick turn's agent has a context of its own
            self.agent = dict(data)
        elif kind == "state":
            self.state = {k: data[k] for k in ("agent_state", "outstanding_llm_calls", "outstanding_tool_calls",
                                               "retry_in_ms") if k in data} | {"turn": turn, "lane": lane}
        elif kind in TERMINAL:
            summary = self.turns.get(turn)
            if summary is not None:
                summary.status = kind.split(".", 1)[1]
                summary.error = data.get("error") or data.get("reason")
            usage = data.get("usage") or {}
            for name in ("input_tokens", "output_tokens"):
                self.usage[name] = self.usage.get(name, 0) + int(usage.get(name, 0) or 0)
            if usage.get("cost_usd") is not None:
                self.usage["cost_usd"] = round(self.usage.get("cost_usd", 0.0) + float(usage["cost_usd"]), 6)
            for request in self.permissions.values():
                if request["turn"] == turn and request["status"] == "pending":
                    request["status"] = "ended"  # its node died: nobody can answer it now
            self._entries.append({**base, "role": "system", "kind": kind, **_end_fields(data)})
            if not any(t.status in ("running", "queued") for t in self.turns.values()):
                self.state = {"agent_state": "idle", "outstanding_llm_calls": 0, "outstanding_tool_calls": []}

    def history(self, lane: str, *, before_turn: str | None = None) -> list[Message]:
        """The context a provider gets: this lane's user messages and assistant texts, in order."""
        messages: list[Message] = []
        for entry in self.entries:
            if entry["lane"] != lane or entry["turn"] == before_turn:
                continue
            if entry["kind"] == "message":
                messages.append(Message("user", entry["text"]))
            elif entry["kind"] == "text" and entry["text"]:
                if messages and messages[-1].role == "assistant":
                    messages[-1].content += "\n\n" + entry["text"]
                else:
                    messages.append(Message("assistant", entry["text"]))
        return messages

    def pending_permissions(self) -> list[JSON]:
        return [request for request in self.permissions.values() if request["status"] == "pending"]

    def open_turns(self) -> list[TurnSummary]:
        return [t for t in self.turns.values() if t.status in ("queued", "running")]


def _end_fields(data: JSON) -> JSON:
    return {k: data[k] for k in ("stop_reason", "usage", "timing", "error", "reason", "permission_denials")
            if k in data}


class CatchUpFold:
    """`?fold=1`: in the replayed range, a text or thinking block whose `*.done` is also in that range
    comes as that one `*.done` instead of its deltas. Events keep their order and ids; while a block
    is open, everything after its first delta is held so nothing overtakes it. A block interleaved
    with other events (a tool call while text streams) therefore shows where it finished."""

    def __init__(self) -> None:
        self._held: list[Event] = []
        self._open: set[tuple[Any, ...]] = set()
        self._finished: set[tuple[Any, ...]] = set()

    @staticmethod
    def _key(event: Event) -> tuple[Any, ...] | None:
        family = _BLOCK_KINDS.get(event.type)
        if family is None:
            return None
        return (event.turn, family, event.data.get("block", 0))

    def page(self, events: list[Event]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            key = self._key(event)
            if key is not None and event.type.endswith(".delta"):
                self._open.add(key)
                self._held.append(event)
            elif key is not None and key in self._open:
                self._open.discard(key)
                self._finished.add(key)
                self._held.append(event)
            elif self._held:
                self._held.append(event)
            else:
                out.append(event)
            if self._held and not self._open:
                out.extend(self._release())
        return out

    def _release(self) -> list[Event]:
        released = [e for e in self._held
                    if not (e.type.endswith(".delta") and self._key(e) in self._finished)]
        self._held = []
        self._finished.clear()
        return released

    def end(self) -> list[Event]:
        """The replayed range is over: blocks still open are sent as their deltas."""
        self._open.clear()
        return self._release()
