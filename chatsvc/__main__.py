"""Command line: ``python -m chatsvc serve [--host H] [--port P] [--db PATH]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from aiohttp import web

from chatsvc import __version__
from chatsvc.app import create_app
from chatsvc.config import Config

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
    return parser


def _use_uvloop() -> None:
    """Run on uvloop where it is installed: a faster event loop, same semantics."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = Config.from_env(host=args.host, port=args.port, db_path=args.db)
    except ValueError as exc:
        print(f"chatsvc: {exc}", file=sys.stderr)
        return 2
    _use_uvloop()
    web.run_app(create_app(config), host=config.host, port=config.port, print=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
