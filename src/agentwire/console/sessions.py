"""Session documents (name, provider, model, options; written once with `session.created`) and each
session's fold, cached and kept current as events pass."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentwire.config import Config
from agentwire.console.transcript import Transcript
from agentwire.hub import Hub
from agentwire.providers import check_provider
from agentwire.tasks import iso_now
from agentwire.types import (
    JSON,
    AgentwireError,
    Append,
    Conflict,
    Doc,
    Event,
    NotFound,
    ValidationFailed,
    session_stream,
)

SESSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PAGE = 1000  # events read per journal call while a fold catches up


class SessionOptions(BaseModel):
    """Per-session agent options, checked here so a typo is a 422, not a surprise mid-turn.
    Scripted: size and speed of its turns; cli: the command to run; LLM providers: limits."""

    model_config = ConfigDict(extra="forbid")
    deltas: Annotated[int, Field(ge=1, le=200_000)] | None = None
    delay_ms: Annotated[float, Field(ge=0, le=60_000)] | None = None
    tool_calls: Annotated[int, Field(ge=0, le=50)] | None = None
    # scripted: bool; anthropic: true, a token budget or "adaptive"; gemini: false turns thoughts off
    thinking: bool | Annotated[int, Field(ge=1024, le=200_000)] | Literal["adaptive"] | None = None
    fail_at: Annotated[int, Field(ge=0)] | None = None
    # scripted: ask permission first, for a Write (true), or the tool named (a permission request)
    ask_permission: bool | Literal["Write", "Edit", "Bash"] | None = None
    command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=64)] | None = None
    # The working directory of an agent that runs tools (Claude Code, Codex, Gemini CLI); must exist.
    cwd: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    # What an agent CLI may do (codex, gemini-cli): "read-only" (default: its own safe headless mode) or
    # "full" (no sandbox, never asks). Shown in the session header.
    approval: Literal["read-only", "full"] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=200_000)] | None = None
    max_rounds: Annotated[int, Field(ge=1, le=100)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    rate_limit_retries: Annotated[int, Field(ge=0, le=20)] | None = None
    rate_limit_max_wait_s: Annotated[float, Field(ge=0, le=600)] | None = None


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=SESSION_NAME.pattern)] | None = None
    provider: str | None = None
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    system: Annotated[str, Field(max_length=50_000)] | None = None
    options: SessionOptions = SessionOptions()


def parse_session_in(body: JSON) -> SessionIn:
    try:
        return SessionIn.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed(exc.errors()) from exc


def check_session_name(name: str) -> str:
    if not SESSION_NAME.match(name):
        raise AgentwireError(
            f"bad session name {name[:80]!r}: 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            code="bad_session_name", status=422, field="session")
    return name


def check_cwd(path: str) -> str:
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(full):
        raise AgentwireError(f"options.cwd: no such directory {path[:200]!r}", code="bad_cwd", status=422,
                             field="options.cwd")
    return full


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class Sessions:
    """The session documents and their folds. `on_created` hears of each session this node creates
    (the warm pool prepares workers for it)."""

    def __init__(self, hub: Hub, config: Config, on_created: Callable[[JSON, JSON], None] | None = None) -> None:
        self.hub = hub
        self.config = config
        self.on_created = on_created
        # Session documents never change once created, so one read per process is enough.
        self._docs: dict[str, JSON] = {}
        self._views: dict[str, Transcript] = {}
        self._views_by_stream: dict[str, Transcript] = {}  # the same folds, for `_fold_live` per event
        hub.observers.append(self._fold_live)

    async def create(self, body: SessionIn) -> JSON:
        name = body.name or new_id("s")
        provider = body.provider or self.config.provider
        options = body.options.model_dump(exclude_none=True)
        info = check_provider(provider, {**options, **self.settings(provider)})
        if await self.hub.journal.get_doc("session", name) is not None:
            raise Conflict(f"session {name!r} exists", code="session_exists")
        if "cwd" in options:
            options["cwd"] = check_cwd(options["cwd"])
        if "command" in options and not self.config.allow_session_command:
            raise AgentwireError(
                "the session option 'command' chooses a program the server runs; this server was not "
                "started with --allow-session-command (AGENTWIRE_ALLOW_SESSION_COMMAND=1), so sessions "
                "use its --cli-command", code="session_command_not_allowed", status=403, field="options.command")
        if provider == "cli" and "command" not in options:
            options["command"] = list(self.config.cli_command)
        model = body.model or (provider == self.config.provider and self.config.model) or info.default_model
        session: JSON = {"name": name, "provider": provider, "model": model,
                         "system": body.system or "", "options": options, "createdAt": iso_now()}
        await self.hub.append(Append(session_stream(name), "session.created", {"session": session},
                                     doc=Doc("session", name, session)))
        if self.on_created is not None:
            self.on_created(session, self.options(session))
        return session

    def settings(self, provider: str) -> JSON:
        """What the server decides for a provider (its flags: the agent CLI to run), given to it in its
        options. Not stored with a session: a restart with other flags applies to every session."""
        config = self.config
        server: JSON = {"claude": {"claude_bin": config.claude_bin}, "codex": {"codex_bin": config.codex_bin},
                        "gemini-cli": {"gemini_bin": config.gemini_bin}}.get(provider, {})
        return {k: v for k, v in server.items() if v is not None}

    def options(self, session: JSON) -> JSON:
        """What a session's provider is made with: its options, plus the server's settings for it."""
        return {**session["options"], **self.settings(session["provider"])}

    async def get(self, name: str, *, create: bool = False) -> JSON:
        check_session_name(name)
        found = self._docs.get(name) or await self.hub.journal.get_doc("session", name)
        if found is not None:
            self._docs[name] = found
            return found
        if not create:
            raise NotFound(f"no session named {name!r}", code="session_not_found")
        try:
            return await self.create(SessionIn(name=name))
        except Conflict:  # created by a concurrent request
            found = await self.hub.journal.get_doc("session", name)
            assert found is not None
            return found

    async def summaries(self) -> list[JSON]:
        sessions = sorted(await self.hub.journal.list_docs("session"), key=lambda s: s["createdAt"])
        listed = []
        for session in sessions:
            view = await self.view(session["name"])
            listed.append({**session, "agent_state": view.state.get("agent_state", "idle"),
                           "head": view.seq, "open_turns": len(view.open_turns()),
                           "pending_permissions": len(view.pending_permissions())})
        return listed

    def _fold_live(self, event: Event) -> None:
        """Keep cached folds current as events pass, so retention trimming the journal cannot take
        events out of a session's transcript before anyone asked for it."""
        view = self._views_by_stream.get(event.stream)
        if view is not None and event.seq == view.seq + 1:
            view.apply(event)

    async def view(self, name: str) -> Transcript:
        """The session's fold, brought up to the journal's head (cached; only new events are read)."""
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = self._views_by_stream[session_stream(name)] = Transcript()
        while True:
            page = await self.hub.journal.read(session_stream(name), view.seq, _PAGE)
            for event in page:
                view.apply(event)
            if len(page) < _PAGE:
                return view
