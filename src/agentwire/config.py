"""One settings object, loaded once: from `agentwire serve` flags, each with an AGENTWIRE_* twin."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shlex
import shutil
from dataclasses import MISSING, dataclass, field

from agentwire.security import host_pattern, normalize_origin
from agentwire.types import AgentwireError


class ConfigError(AgentwireError, ValueError):
    """A setting that cannot work; the message names the flag (`agentwire serve` prints it)."""

    status = 500
    code = "bad_config"


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8765
    journal: str = "sqlite:///data/agentwire.db"
    token: str | None = None  # None with auth on: one is generated at start and printed
    no_auth: bool = False
    heartbeat: float = 15.0
    retention: int = 0  # events kept per stream; 0 keeps everything
    workers: int = 1
    retry_ms: int = 1000  # the SSE `retry:` the browser waits before its own reconnect
    buffer_limit: int = 1 << 20  # per-subscriber outgoing bytes before a slow consumer is cut
    max_body: int = 1 << 20  # request bodies
    max_message: int = 100_000  # characters in a user message
    max_subscriptions: int = 100  # streams on one WebSocket
    provider: str = "scripted"
    model: str | None = None
    cli_command: list[str] = field(default_factory=lambda: ["claude", "-p", "--output-format", "stream-json",
                                                            "--include-partial-messages", "--verbose"])
    quick_pool: int = 2  # warm workers kept for quick turns
    claude_bin: str | None = None  # the `claude` provider's CLI; None: the one claude-agent-sdk bundles
    codex_bin: str | None = None  # the Codex CLI to run (default: `codex` on PATH)
    gemini_bin: str | None = None  # the Gemini CLI to run (default: `gemini` on PATH)
    agent_ttl: float = 900.0  # seconds an idle live agent process (and a warm quick worker) is kept
    # Seconds a tool-permission request waits for a person's answer before it is denied.
    permission_timeout: float = 600.0
    lease_seconds: float = 10.0  # turn ownership lease (shared journals)
    log_level: str = "info"
    # Who may reach the server (security.py): Host names beyond the loopback ones, browser origins
    # beyond the server's own, and whether the reverse proxy's X-Forwarded-Host/-Proto are believed.
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    trust_forwarded: bool = False
    # Whether a session may choose the command its cli agent runs (the `command` option): that is
    # running any program as the server's user, so it is off unless the operator turns it on.
    allow_session_command: bool = False

    def __post_init__(self) -> None:
        if self.no_auth and not is_loopback(self.host):
            raise ConfigError(f"--no-auth is refused on a non-loopback address ({self.host}): use a token")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be 1-65535, got {self.port}")
        if self.heartbeat <= 0:
            raise ConfigError("--heartbeat must be a positive number of seconds")
        if self.retention < 0:
            raise ConfigError("--retention must be 0 (keep all) or a positive number of events")
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if self.agent_ttl <= 0:
            raise ConfigError("--agent-ttl must be a positive number of seconds")
        if self.permission_timeout <= 0:
            raise ConfigError("--permission-timeout must be a positive number of seconds")
        if self.claude_bin is not None and shutil.which(self.claude_bin) is None:
            raise ConfigError(f"--claude-bin: no program {self.claude_bin!r} (a path, or a name on PATH)")
        # Checked here, so `agentwire serve` says so in one line instead of a traceback from the app.
        if self.journal.split("://", 1)[0] not in ("memory", "sqlite", "redis") or "://" not in self.journal:
            raise ConfigError(f"unknown journal URL {self.journal!r}: use memory://, sqlite:///path or "
                              "redis://host:port/db")
        if self.workers > 1 and not self.journal.startswith("redis://"):
            raise ConfigError(
                f"--workers {self.workers} needs a journal every worker shares: use --journal redis://…"
                f" (the {self.journal.split(':', 1)[0]} journal belongs to one process)"
            )
        try:
            self.allowed_hosts = [host_pattern(host) for host in self.allowed_hosts]
        except ValueError as exc:
            raise ConfigError(f"--allowed-host: {exc}") from None
        try:
            self.allowed_origins = [normalize_origin(origin) for origin in self.allowed_origins]
        except ValueError as exc:
            raise ConfigError(f"--allowed-origin: {exc}") from None
        if not self.no_auth and not self.token:
            self.token = secrets.token_urlsafe(24)

    @classmethod
    def from_env(cls, flags: dict[str, object] | None = None) -> Config:
        """Settings from flags (those not None), else their AGENTWIRE_* twins, else the defaults."""
        flags = flags or {}
        values = {}
        for name in ENV:
            flag = flags.get(name)
            values[name] = flag if flag is not None else env_default(name, field_default(name))
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        env = {}
        for name, variable in ENV.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool):
                value = "1" if value else "0"
            elif name in NAME_LISTS:
                value = ",".join(value)
            elif isinstance(value, list):
                value = shlex.join(value)
            env[variable] = str(value)
        return env

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def login_url(self) -> str:
        return self.base_url + "/" + ("" if self.no_auth else f"?token={self.token}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ENV = {
    "host": "AGENTWIRE_HOST", "port": "AGENTWIRE_PORT", "journal": "AGENTWIRE_JOURNAL",
    "token": "AGENTWIRE_TOKEN", "no_auth": "AGENTWIRE_NO_AUTH", "heartbeat": "AGENTWIRE_HEARTBEAT",
    "retention": "AGENTWIRE_RETENTION", "workers": "AGENTWIRE_WORKERS", "provider": "AGENTWIRE_PROVIDER",
    "model": "AGENTWIRE_MODEL", "cli_command": "AGENTWIRE_CLI_COMMAND", "log_level": "AGENTWIRE_LOG_LEVEL",
    "lease_seconds": "AGENTWIRE_LEASE_SECONDS", "buffer_limit": "AGENTWIRE_BUFFER_LIMIT",
    "claude_bin": "AGENTWIRE_CLAUDE_BIN", "agent_ttl": "AGENTWIRE_AGENT_TTL",
    "permission_timeout": "AGENTWIRE_PERMISSION_TIMEOUT",
    "allowed_hosts": "AGENTWIRE_ALLOWED_HOSTS", "allowed_origins": "AGENTWIRE_ALLOWED_ORIGINS",
    "trust_forwarded": "AGENTWIRE_TRUST_FORWARDED", "allow_session_command": "AGENTWIRE_ALLOW_SESSION_COMMAND",
    "codex_bin": "AGENTWIRE_CODEX_BIN", "gemini_bin": "AGENTWIRE_GEMINI_BIN",
}
# Lists of names whose twins are separated by commas and/or spaces (not shell-quoted commands).
NAME_LISTS = {"allowed_hosts", "allowed_origins"}


def field_default(name: str) -> object:
    field = Config.__dataclass_fields__[name]
    if field.default_factory is not MISSING:
        return field.default_factory()
    return field.default


def env_default(name: str, default: object) -> object:
    """The environment twin of a flag, parsed to the flag's type."""
    raw = os.environ.get(ENV[name])
    if raw is None:
        return default
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if name in NAME_LISTS:
            return [part for part in re.split(r"[\s,]+", raw) if part]
        if isinstance(default, list):
            return shlex.split(raw)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else ("a number" if isinstance(default, float) else
                                                                   "a shell-quoted command")
        raise ConfigError(f"{ENV[name]} must be {kind}, got {raw!r}") from None
    return raw
