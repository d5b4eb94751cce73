"""Command line: ``chatsvc serve [--host H] [--port P] [--db PATH]``, ``init-db``, ``user add``, ``token``, ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from aiohttp import web

from chatsvc import __version__, cli
from chatsvc.app import create_app
from chatsvc.config import Config
from chatsvc.demo import demo_banner, prepare_demo
from chatsvc.errors import StartupError
from chatsvc.logs import configure_logging

# Seconds open HTTP requests get to finish after SIGTERM; sockets are closed before that.
SHUTDOWN_TIMEOUT = 3.0


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="chatsvc", description="Real-time chat service")
    parser.add_argument("--version", action="version", version=f"chatsvc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve HTTP and Socket.IO")
    serve.add_argument("--host", help="address to listen on (CHATSVC_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (CHATSVC_PORT, default 3005)")
    serve.add_argument("--db", type=Path, help="SQLite file (CHATSVC_DB, default ./data/chatsvc.db)")
    demo = commands.add_parser("demo", help="add demo users, rooms and messages if missing, then serve")
    demo.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: the password is public)"
    )
    demo.add_argument("--port", type=int, help="port to listen on (CHATSVC_PORT, default 3005)")
    demo.add_argument("--db", type=Path, help="SQLite file (CHATSVC_DB, default ./data/chatsvc.db)")
    cli.add_commands(commands)
    return parser


def _use_uvloop() -> None:
    """Run on uvloop where it is installed: a faster event loop, same semantics."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a refused start (database unopenable, in use, too new) is one line on stderr."""
    try:
        return _run(argv)
    except StartupError as exc:
        print(f"chatsvc: {exc.message}", file=sys.stderr)
        return exc.exit_status


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env(host=getattr(args, "host", None), port=getattr(args, "port", None), db_path=args.db)
    except ValueError as exc:
        print(f"chatsvc: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.log_level)
    if args.command in cli.COMMANDS:
        return cli.run_command(args, config)
    _use_uvloop()
    if args.command == "demo":
        seeded = asyncio.run(prepare_demo(config))
        print(demo_banner(config, seeded), flush=True)
    # access_log=None: chatsvc/http/observe.py writes the one line per request.
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        print=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
