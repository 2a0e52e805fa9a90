"""`agentwire serve | chat | tail`."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from typing import Any

from agentwire.config import ENV, Config, ConfigError


def _serve_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the server (SQLite journal and scripted agent by default)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--journal", default=None,
                       help="memory://, sqlite:///path (default) or redis://host:port/db")
    auth = serve.add_mutually_exclusive_group()
    auth.add_argument("--token", default=None, help="the access token (default: random)")
    auth.add_argument("--no-auth", action="store_true", default=None,
                      help="no token (refused on a non-loopback host)")
    serve.add_argument("--heartbeat", type=float, default=None,
                       help="seconds between SSE heartbeat comments")
    serve.add_argument("--retention", type=int, default=None,
                       help="events kept per stream (0: all)")
    serve.add_argument("--workers", type=int, default=None,
                       help="server processes (needs the Redis journal)")
    serve.add_argument("--provider", default=None,
                       help="default provider for new sessions")
    serve.add_argument("--model", default=None, help="default model")
    serve.add_argument("--cli-command", default=None,
                       help="default command of the cli provider (AGENTWIRE_CLI_COMMAND), shell-quoted")
    serve.add_argument("--codex-bin", default=None, help="the Codex CLI binary (default: codex on PATH)")
    serve.add_argument("--gemini-bin", default=None, help="the Gemini CLI binary (default: gemini on PATH)")
    serve.add_argument("--buffer-limit", type=int, default=None,
                       help="bytes a subscriber may fall behind before it is disconnected")
    serve.add_argument("--lease-seconds", type=float, default=None)
    serve.add_argument("--log-level", default=None)


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
    """Flags win over their AGENTWIRE_* twins, which win over the defaults."""
    flags = {name: getattr(args, name, None) for name in ENV}
    flags["cli_command"] = shlex.split(args.cli_command) if args.cli_command else None
    if args.token is not None:  # an explicit --token means auth, whatever AGENTWIRE_NO_AUTH says
        flags["no_auth"] = False
    return Config.from_env(flags)


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
