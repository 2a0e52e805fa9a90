"""`agentwire serve | chat | tail | mcp`."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from typing import Any

import orjson

from agentwire.config import ENV, Config, ConfigError
from agentwire.types import JSON


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
    serve.add_argument("--claude-bin", default=None,
                       help="the Claude Code CLI of the claude provider (default: the one claude-agent-sdk bundles)")
    serve.add_argument("--agent-ttl", type=float, default=None,
                       help="seconds an idle agent process (claude provider, warm quick workers) is kept")
    serve.add_argument("--permission-timeout", type=float, default=None,
                       help="seconds a tool-permission request waits for an answer before it is denied (600)")
    serve.add_argument("--codex-bin", default=None, help="the Codex CLI binary (default: codex on PATH)")
    serve.add_argument("--gemini-bin", default=None, help="the Gemini CLI binary (default: gemini on PATH)")
    serve.add_argument("--buffer-limit", type=int, default=None,
                       help="bytes a subscriber may fall behind before it is disconnected")
    serve.add_argument("--lease-seconds", type=float, default=None)
    serve.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=None, metavar="NAME",
                       help="a Host name the server answers to besides its loopback names (repeatable; "
                            "*.domain for subdomains)")
    serve.add_argument("--allowed-origin", dest="allowed_origins", action="append", default=None,
                       metavar="ORIGIN", help="a page origin (scheme://host[:port]) whose browser may open "
                                              "WebSockets and change state, besides the server's own (repeatable)")
    serve.add_argument("--trust-forwarded", action="store_true", default=None,
                       help="take the public host and scheme from the reverse proxy's X-Forwarded-Host/-Proto")
    serve.add_argument("--allow-session-command", action="store_true", default=None,
                       help="let API clients choose the command a cli session runs (option 'command')")
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
    mcp = sub.add_parser("mcp", help="an MCP server on stdio with the board tools (task_create, task_update), "
                                     "for an agent to publish cards to a session of this server")
    mcp.add_argument("--session", default=os.environ.get("AGENTWIRE_SESSION"),
                     help="the session the cards belong to (AGENTWIRE_SESSION); a chosen answer goes there")
    mcp.add_argument("--agent", default=os.environ.get("AGENTWIRE_AGENT", "agent"),
                     help="the name cards show as their author, createdBy (AGENTWIRE_AGENT; default: agent)")
    _client_args(mcp)
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
    if args.command == "chat":
        return asyncio.run(chat_command(args.url, args.token, args.session, args.message, args.quick))
    if args.command == "mcp":
        return mcp_command(args.url, args.token, args.session, args.agent)
    return asyncio.run(tail_command(args.url, args.token, args.stream, args.from_, args.raw))


def _print_event(envelope: JSON, out: Any) -> None:
    kind, data = envelope["type"], envelope.get("data", {})
    if kind in ("text.delta",):
        out.write(data.get("text", ""))
    elif kind == "text.done":
        out.write("\n")
    elif kind == "thinking.done":
        out.write(f"\x1b[2m(thought: {data.get('text', '')[:200]})\x1b[0m\n")
    elif kind == "tool.call":
        out.write(f"\x1b[36m→ {data.get('name')}({orjson.dumps(data.get('input')).decode()[:200]})\x1b[0m\n")
    elif kind == "tool.result":
        mark = "✗" if data.get("is_error") else "✓"
        out.write(f"\x1b[36m  {mark} {str(data.get('output'))[:200]}\x1b[0m\n")
    elif kind == "permission.requested":
        what = data.get("title") or f"{data.get('tool')}({orjson.dumps(data.get('input')).decode()[:160]})"
        out.write(f"\x1b[33m? the agent asks to use {what}: answer in the dashboard "
                  f"(request {data.get('request_id')})\x1b[0m\n")
    elif kind == "permission.decided":
        out.write(f"\x1b[33m  {data.get('decision')} ({data.get('by')})\x1b[0m\n")
    elif kind == "todo.updated":
        for todo in data.get("todos", []):
            box = {"completed": "[x]", "in_progress": "[~]"}.get(todo.get("status"), "[ ]")
            out.write(f"  {box} {todo.get('content')}\n")
    elif kind == "turn.queued":
        out.write(f"(queued, position {data.get('position')})\n")
    elif kind == "turn.completed":
        timing = data.get("timing", {})
        out.write(f"\x1b[2m— done in {timing.get('totalMs', 0) / 1000:.1f}s, TTFE {timing.get('ttfeMs')} ms, "
                  f"{timing.get('toolCallCount', 0)} tools\x1b[0m\n")
    elif kind == "turn.failed":
        out.write(f"\x1b[31mturn failed: {data.get('error')}\x1b[0m\n")
    elif kind == "turn.cancelled":
        out.write(f"turn cancelled: {data.get('reason')}\n")
    out.flush()


async def chat_command(url: str, token: str | None, session: str, message: str, quick: bool) -> int:
    from agentwire.client import Client, StreamFailed

    async with Client(url, token, max_attempts=40) as client:
        client.on_status = lambda status, attempt, delay: status == "reconnecting" and print(
            f"\x1b[33m(reconnecting, attempt {attempt}, next in {delay:.1f}s)\x1b[0m", file=sys.stderr)
        final = "turn.failed"
        try:
            async for envelope in client.turn(session, message, lane="quick" if quick else "main"):
                _print_event(envelope, sys.stdout)
                final = envelope["type"]
        except StreamFailed as exc:
            print(f"agentwire chat: {exc}", file=sys.stderr)
            return 1
        return 0 if final == "turn.completed" else 1


def mcp_command(url: str, token: str | None, session: str | None, agent: str) -> int:
    from agentwire.console.sessions import check_session_name
    from agentwire.types import AgentwireError

    try:
        if not session:
            raise AgentwireError("--session (or AGENTWIRE_SESSION) names the session the cards belong to")
        check_session_name(session)
    except AgentwireError as exc:
        print(f"agentwire mcp: {exc.message}", file=sys.stderr)
        return 2
    import anyio

    from agentwire.mcp_server import serve_stdio

    anyio.run(serve_stdio, url, token, session, agent)
    return 0


async def tail_command(url: str, token: str | None, stream: str, from_: int | None, raw: bool) -> int:
    from agentwire.client import Client, StreamFailed

    async with Client(url, token) as client:
        try:
            async for envelope in client.follow(stream, None if from_ is None else max(0, from_ - 1)):
                if raw:
                    print(orjson.dumps(envelope).decode(), flush=True)
                else:
                    seq = envelope.get("seq", "-")
                    print(f"{seq:>6} {envelope['type']:<16} {orjson.dumps(envelope.get('data')).decode()[:160]}",
                          flush=True)
        except StreamFailed as exc:
            print(f"agentwire tail: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
    return 0
