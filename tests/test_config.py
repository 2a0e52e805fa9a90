"""The one settings object: defaults, validation with clear messages, URLs, and the AGENTWIRE_* twins."""

from __future__ import annotations

import pytest

from agentwire.config import ENV, Config, ConfigError, env_default, is_loopback


def test_defaults_listen_on_loopback_with_a_fresh_token() -> None:
    config = Config()
    assert (config.host, config.port, config.journal) == ("127.0.0.1", 8765, "sqlite:///data/agentwire.db")
    assert (config.heartbeat, config.retention, config.workers, config.buffer_limit) == (15.0, 0, 1, 1 << 20)
    assert config.token is not None and len(config.token) >= 24
    assert Config().token != config.token  # generated per start, never a constant
    assert Config(token="mine").token == "mine"
    assert Config(no_auth=True).token is None


@pytest.mark.parametrize(("values", "message"), [
    ({"no_auth": True, "host": "0.0.0.0"}, "--no-auth is refused on a non-loopback address"),
    ({"no_auth": True, "host": "192.168.1.20"}, "non-loopback"),
    ({"no_auth": True, "host": "::"}, "non-loopback"),
    ({"no_auth": True, "host": "example.com"}, "non-loopback"),
    ({"port": 0}, "--port must be 1-65535"),
    ({"port": 65536}, "--port must be 1-65535"),
    ({"heartbeat": 0}, "--heartbeat must be a positive"),
    ({"heartbeat": -1.0}, "--heartbeat"),
    ({"retention": -1}, "--retention"),
    ({"workers": 0}, "--workers must be at least 1"),
    ({"workers": 2}, "needs a journal every worker shares"),
    ({"workers": 2, "journal": "memory://"}, "the memory journal belongs to one process"),
    ({"workers": 3, "journal": "sqlite:///x.db"}, "the sqlite journal belongs to one process"),
    ({"journal": "postgres://db/x"}, "unknown journal URL"),
    ({"journal": "data/x.db"}, "unknown journal URL"),
    ({"agent_ttl": 0}, "--agent-ttl must be a positive"),
    ({"claude_bin": "/nonexistent/claude"}, "--claude-bin: no program '/nonexistent/claude'"),
])
def test_invalid_settings_are_refused_with_a_message_naming_the_flag(values: dict[str, object],
                                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("-", r"\-")):
        Config(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_no_auth_is_allowed_on_loopback(host: str) -> None:
    assert Config(no_auth=True, host=host).no_auth


def test_workers_share_a_redis_journal() -> None:
    assert Config(workers=4, journal="redis://127.0.0.1:6379/0").workers == 4


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.255.0.9", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("localhost.example.com", False), ("", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_urls() -> None:
    config = Config(port=9000, token="abc")
    assert config.base_url == "http://127.0.0.1:9000"
    assert config.login_url == "http://127.0.0.1:9000/?token=abc"
    assert Config(host="::1", port=9000, no_auth=True).login_url == "http://[::1]:9000/"


@pytest.mark.parametrize(("raw", "default", "expected"), [
    ("1", False, True), ("true", False, True), (" YES ", False, True), ("on", False, True),
    ("0", True, False), ("no", True, False), ("", True, False),
    ("9001", 8765, 9001), ("2.5", 15.0, 2.5), ("3", 15.0, 3.0),
    ("claude -p --flag 'two words'", ["x"], ["claude", "-p", "--flag", "two words"]),
    ("memory://", "sqlite:///data/agentwire.db", "memory://"),
])
def test_env_default_parses_to_the_flags_type(monkeypatch: pytest.MonkeyPatch, raw: str, default: object,
                                              expected: object) -> None:
    name = {bool: "no_auth", int: "port", float: "heartbeat", list: "cli_command", str: "journal"}[type(default)]
    monkeypatch.setenv(ENV[name], raw)
    value = env_default(name, default)
    assert value == expected and type(value) is type(expected)


def test_env_default_without_the_variable_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ENV.values():
        monkeypatch.delenv(variable, raising=False)
    assert env_default("port", 8765) == 8765
    assert env_default("model", None) is None


def test_every_twin_is_named_after_its_setting() -> None:
    for name, variable in ENV.items():
        assert variable == "AGENTWIRE_" + name.upper()
        assert hasattr(Config(), name)


def test_settings_travel_through_the_environment_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    # How `--workers` hands the parent's settings to each worker process.
    config = Config(host="::1", port=9100, journal="redis://127.0.0.1:6379/2", token="tok", heartbeat=0.5,
                    retention=50, workers=3, provider="openai", model="m", cli_command=["a", "b c"],
                    log_level="debug", lease_seconds=2.5, buffer_limit=4096, claude_bin="sh", agent_ttl=5.0,
                    allowed_hosts=["a.example", "*.b.example", "*"],
                    allowed_origins=["https://a.example", "http://[::1]:8080"], trust_forwarded=True,
                    allow_session_command=True)
    for variable in ENV.values():
        monkeypatch.delenv(variable, raising=False)
    for variable, value in config.to_env().items():
        monkeypatch.setenv(variable, value)
    again = Config.from_env()
    for name in ENV:
        assert getattr(again, name) == getattr(config, name), name
