"""Tool-permission requests: an agent asks, a person answers from any node, the agent goes on.

The journal is the only place a request and its answer live, so a reloaded page, another node, or
this node after a restart sees the same thing:

- `ask` appends `permission.requested {request_id, tool, input, turn, expires_at, rule, call_id?,
  title?}` to the session stream and waits for that request's `permission.decided` through a hub
  subscription from the request's seq: replay, then live, as every subscriber reads (on Redis the
  subscription makes this node read the stream, whichever node the answer was appended on).
- `settle` appends `permission.decided {request_id, decision, by, message?, remember?, rule?}`.
  Whoever answers — a person on any node, the asking node at the deadline, a cancelled turn — goes
  through it: under a journal lease per request (atomic on Redis), it reads the session's fold up to
  the journal's head and answers only a request that is still pending. So a request is decided once;
  a second answer is a 409, an unknown id a 404. The waiting agent takes whatever decision the
  journal holds, also its own timeout's.
- "Always allow" (`remember`) is journaled with its rule (the tool, or for Bash the command's prefix);
  the session's fold collects the rules, and `ask` allows a matching request at once, on any node.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentwire.console.lanes import Turn
from agentwire.console.transcript import Transcript
from agentwire.hub import Hub
from agentwire.outbox import Outbox
from agentwire.providers import Permission
from agentwire.types import (
    JSON,
    Append,
    Conflict,
    Event,
    NotFound,
    ValidationFailed,
    now_ms,
    session_stream,
)

log = logging.getLogger("agentwire.permissions")

# How long one answer may hold a request's lease: it reads the fold and appends one event.
SETTLE_LEASE = 30.0
# After the deadline has been answered (by this node, or by someone just before it), how long the
# agent waits to read that answer before it gives up on the journal and denies by itself.
ANSWER_GRACE = 30.0
# Shell syntax that joins or redirects commands: such a command never matches a remembered prefix
# (allowing `git status` must not allow `git status; rm -rf ~`), and remembering one allows only it.
_SHELL_JOIN = re.compile(r"[;&|`<>\n\r]|\$\(")
_SUBCOMMAND = re.compile(r"^[A-Za-z][\w.:/-]*$")


class DecisionIn(BaseModel):
    """A person's answer: the body of `POST …/permissions/{id}`, and of the WebSocket op `decide`."""

    model_config = ConfigDict(extra="forbid")
    decision: Literal["allow", "deny"]
    message: Annotated[str, Field(max_length=2000)] = ""  # for the agent: why (a deny) or what to mind
    remember: bool = False  # with allow: allow this tool (a Bash command: its prefix) for the session


def rule_for(tool: str, input: JSON) -> JSON:
    """What "always allow" remembers for this request: the tool, or for Bash the command's prefix."""
    command = input.get("command")
    if tool == "Bash" and isinstance(command, str) and command.strip():
        return {"tool": tool, "prefix": command_prefix(command)}
    return {"tool": tool}


def command_prefix(command: str) -> str:
    """The program and its subcommand (`git status`, `npm test`), or the program alone when a flag
    follows (`ls -la` → `ls`); a joined or redirected command is remembered whole."""
    command = command.strip()
    if _SHELL_JOIN.search(command):
        return command
    words = command.split()
    if len(words) > 1 and _SUBCOMMAND.match(words[1]):
        return " ".join(words[:2])
    return words[0]


def allows(rules: list[JSON], tool: str, input: JSON) -> bool:
    for rule in rules:
        if rule.get("tool") != tool:
            continue
        prefix = rule.get("prefix")
        if prefix is None:
            return True
        command = input.get("command")
        if isinstance(command, str) and _matches(str(prefix), command.strip()):
            return True
    return False


def _matches(prefix: str, command: str) -> bool:
    if command == prefix:
        return True
    return not _SHELL_JOIN.search(command) and command.startswith(prefix + " ")


class _Busy(Conflict):
    """Another answer holds the request's lease right now: it is about to be decided."""

    code = "permission_settled"


class _AnswerFramer:
    """How a waiting request's subscription delivers its `permission.decided` into the waiter's
    outbox (one envelope per line); anything else put there (b"") only wakes the waiter, e.g. when
    its turn is cancelled."""

    transport = "internal"

    def event(self, event: Event) -> bytes:
        return event.raw + b"\n"

    def events(self, events: Sequence[Event]) -> bytes:
        return b"".join([event.raw + b"\n" for event in events])

    def control(self, stream: str, type: str, data: JSON, seq: int | None = None) -> bytes:
        return b""  # stream.open / stream.reset: the answer is all the waiter reads


class Permissions:
    def __init__(self, hub: Hub, view: Callable[[str], Awaitable[Transcript]], node: str, timeout: float) -> None:
        self.hub = hub
        self.view = view  # the session's fold, read up to the journal's head
        self.node = node
        self.timeout = timeout

    async def ask(self, turn: Turn, tool: str, input: JSON, *, call_id: str | None = None,
                  title: str | None = None) -> Permission:
        if allows((await self.view(turn.session)).rules, tool, input):
            return Permission(True, by="rule")
        request_id = f"perm_{secrets.token_hex(8)}"
        expires_at = now_ms() + round(self.timeout * 1000)
        data: JSON = {"request_id": request_id, "tool": tool, "input": input, "turn": turn.id,
                      "expires_at": expires_at, "rule": rule_for(tool, input)}
        if call_id:
            data["call_id"] = call_id
        if title:
            data["title"] = title
        answer = Outbox()
        turn.waiting.add(answer)
        try:
            event = await self.hub.append(Append(turn.stream, "permission.requested", data, turn=turn.id,
                                                 lane=turn.lane))
            turn.asked.add(request_id)
            return await self._wait(turn, request_id, event.seq, expires_at, answer)
        except asyncio.CancelledError:
            # The turn's own task was cancelled while it waited (a provider that asks from its turn).
            await self._settle_quietly(turn, request_id, "cancel")
            raise
        finally:
            turn.waiting.discard(answer)
            turn.asked.discard(request_id)

    async def _wait(self, turn: Turn, request_id: str, seq: int, expires_at: int, answer: Outbox) -> Permission:
        def is_answer(event: Event) -> bool:
            return event.type == "permission.decided" and event.data.get("request_id") == request_id

        subscription = await self.hub.subscribe(turn.stream, answer, _AnswerFramer(), seq, only=is_answer,
                                                until=is_answer)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, (expires_at - now_ms()) / 1000)
        answered = False  # this node has settled it (deadline or cancel): only reading the answer is left
        try:
            while True:
                if turn.cancel_reason is not None and not answered:
                    answered = True
                    deadline = loop.time() + ANSWER_GRACE
                    await self._settle_quietly(turn, request_id, "cancel")
                chunks = await answer.take(timeout=max(0.0, deadline - loop.time()))
                for chunk in chunks or ():
                    if chunk:
                        return _permission(Event.from_raw(chunk.rstrip(b"\n")).data, turn)
                if chunks is None or subscription.closed:  # the hub ended the stream: the server stops
                    return Permission(False, "the server is shutting down", by="turn_end", interrupt=True)
                if not chunks:
                    if answered:
                        log.warning("no answer to %s was recorded in time; denying it", request_id)
                        return Permission(False, "no answer could be recorded", by="timeout")
                    answered = True
                    deadline = loop.time() + ANSWER_GRACE
                    await self._settle_quietly(turn, request_id, "timeout")
        finally:
            subscription.close()

    async def settle(self, session: str, request_id: str, decision: str, *, by: str, message: str = "",
                     remember: bool = False) -> JSON:
        """Answer a pending request once, whichever node holds the agent. 404: no such request in the
        session; 409: it is answered (or being answered, or its turn is over)."""
        if decision not in ("allow", "deny"):
            raise ValidationFailed([{"loc": ("decision",), "msg": "Input should be 'allow' or 'deny'"}])
        if remember and decision != "allow":
            raise ValidationFailed([{"loc": ("remember",), "msg": "remember goes with allow (always allow)"}])
        _open(await self._request(session, request_id), request_id)
        owner = f"{self.node}:{secrets.token_hex(4)}"
        key = f"permission:{session}:{request_id}"
        if not await self.hub.journal.lease(key, owner, SETTLE_LEASE):
            raise _Busy(f"permission request {request_id!r} is being answered")
        try:
            # Read again now that nobody else can answer it: an answer appended before this lease was
            # taken is in the journal, so in the fold.
            request = _open(await self._request(session, request_id), request_id)
            data: JSON = {"request_id": request_id, "decision": decision, "by": by,
                          "message": message or _reason(decision, by, request["tool"], self.timeout)}
            if remember:
                data["remember"] = True
                data["rule"] = rule_for(request["tool"], request.get("input") or {})
            write = asyncio.ensure_future(self.hub.append(Append(
                session_stream(session), "permission.decided", data, turn=request["turn"], lane=request["lane"])))
            try:
                event = await asyncio.shield(write)
            except asyncio.CancelledError:
                # A write handed to the journal goes on when its caller is cancelled (an agent SDK
                # cancels the permission callback it interrupts): hold the lease until it is stored,
                # or the next answer would read the request as pending and answer it a second time.
                await asyncio.wait([write])
                raise
        finally:
            await self.hub.journal.release(key, owner)
        return {**data, "session": session, "seq": event.seq}

    async def settle_turn(self, turn: Turn, by: str) -> None:
        """The turn is ending: deny what it still waits for, before its terminal event."""
        for request_id in list(turn.asked):
            await self._settle_quietly(turn, request_id, by)
        for answer in tuple(turn.waiting):
            answer.put(b"")  # a waiter that settled nothing yet looks at the turn again

    async def _settle_quietly(self, turn: Turn, request_id: str, by: str) -> None:
        """Deny on the agent's side (deadline, cancel, turn end); someone else's answer may win."""
        for _ in range(20):
            try:
                await self.settle(turn.session, request_id, "deny", by=by)
                return
            except _Busy:
                await asyncio.sleep(0.1)  # someone holds the lease: their answer is on its way
            except (Conflict, NotFound):
                return  # answered already: the waiter reads that answer

    async def _request(self, session: str, request_id: str) -> JSON:
        request = (await self.view(session)).permissions.get(request_id)
        if request is None:
            raise NotFound(f"no permission request {request_id[:80]!r} in session {session!r}",
                           code="permission_not_found")
        return request


def _open(request: JSON, request_id: str) -> JSON:
    status = request["status"]
    if status == "ended":
        raise Conflict(f"permission request {request_id!r} can no longer be answered: its turn has ended",
                       code="permission_settled")
    if status != "pending":
        raise Conflict(f"permission request {request_id!r} was already answered: {status} by {request.get('by')}",
                       code="permission_settled")
    return request


def _reason(decision: str, by: str, tool: str, timeout: float) -> str:
    if decision == "allow":
        return ""
    return {
        "user": f"The user denied permission to use {tool}.",
        "timeout": f"Nobody answered the request to use {tool} within {timeout:g} s, so it was denied.",
        "cancel": "The turn was cancelled while this request waited for an answer.",
    }.get(by, "The turn ended before this request was answered.")


def _permission(data: JSON, turn: Turn) -> Permission:
    by = str(data.get("by") or "user")
    return Permission(data.get("decision") == "allow", str(data.get("message") or ""), by,
                      interrupt=by == "cancel" or turn.cancel_reason is not None)
