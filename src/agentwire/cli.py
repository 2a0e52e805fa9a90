"""`agentwire serve | chat | tail`."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from typing import Any

from agentwire.config import Config, ConfigError, env_default


def _serve_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the server (SQLite journal and scripted agent by default)")
    serve.add_argument("--host", default=env_default("host", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=env_default("port", 8765))
    serve.add_argument("--journal", default=env_default("journal", Config.journal),
                       help="memory://, sqlite:///path (default) or redis://host:port/db")
    auth = serve.add_mutually_exclusive_group()
    auth.add_argument("--token", default=env_default("token", None), help="the access token (default: random)")
    auth.add_argument("--no-auth", action="store_true", default=env_default("no_auth", False),
                      help="no token (refused on a non-loopback host)")
    serve.add_argument("--heartbeat", type=float, default=env_default("heartbeat", Config.heartbeat),
                       help="seconds between SSE heartbeat comments")
    serve.add_argument("--retention", type=int, default=env_default("retention", Config.retention),
                       help="events kept per stream (0: all)")
    serve.add_argument("--workers", type=int, default=env_default("workers", Config.workers),
                       help="server processes (needs the Redis journal)")
    serve.add_argument("--provider", default=env_default("provider", Config.provider),
                       help="default provider for new sessions")
    serve.add_argument("--model", default=env_default("model", None), help="default model")
    serve.add_argument("--cli-command", default=None,
                       help="default command of the cli provider (AGENTWIRE_CLI_COMMAND), shell-quoted")
    serve.add_argument("--buffer-limit", type=int, default=env_default("buffer_limit", Config.buffer_limit),
                       help="bytes a subscriber may fall behind before it is disconnected")
    serve.add_argument("--lease-seconds", type=float, default=env_default("lease_seconds", Config.lease_seconds))
    serve.add_argument("--log-level", default=env_default("log_level", Config.log_level))


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("AGENTWIRE_URL", "http://127.0.0.1:8765"))
    parser.add_argument("--token", default=os.environ.get("AGENTWIRE_TOKEN"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentwire", description="Watch and steer AI agents in real time.")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    chat = sub.add_parser("chat", help="send a message to a session and stream the turn")
    chat.add_argument("session")
    chat.add_argument("message")
    chat.add_argument("--quick", action="store_true", help="ask on the quick lane")
    _client_args(chat)
    tail = sub.add_parser("tail", help="follow a stream (tasks or konsole/<session>)")
    tail.add_argument("stream")
    tail.add_argument("--from", dest="from_", type=int, default=None, help="first seq to show")
    tail.add_argument("--raw", action="store_true", help="print the JSON envelopes")
    _client_args(tail)
    return parser


def config_from(args: argparse.Namespace) -> Config:
    if args.cli_command:
        cli_command = shlex.split(args.cli_command)
    else:
        cli_command = list(env_default("cli_command", Config().cli_command))  # type: ignore[call-overload]
    return Config(host=args.host, port=args.port, journal=args.journal, token=args.token, no_auth=args.no_auth,
                  heartbeat=args.heartbeat, retention=args.retention, workers=args.workers,
                  provider=args.provider, model=args.model, cli_command=cli_command,
                  buffer_limit=args.buffer_limit, lease_seconds=args.lease_seconds, log_level=args.log_level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        try:
            config = config_from(args)
        except (ConfigError, ValueError) as exc:
            print(f"agentwire serve: {exc}", file=sys.stderr)
            return 2
        from agentwire.server import serve

        return serve(config)
    from agentwire import client

    if args.command == "chat":
        return asyncio.run(client.chat_command(args.url, args.token, args.session, args.message, args.quick))
    return asyncio.run(client.tail_command(args.url, args.token, args.stream, args.from_, args.raw))
