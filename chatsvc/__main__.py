"""Command line: ``chatsvc serve [--host H] [--port P] [--db PATH | --database-url URL]``, ``init-db``, ``user add``,
``token``, ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import sys
from typing import Any

from aiohttp import web

from chatsvc import __version__, cli
from chatsvc.app import create_app
from chatsvc.config import Config, database_label, parse_flag
from chatsvc.demo import demo_banner, open_in_browser, prepare_demo
from chatsvc.errors import StartupError
from chatsvc.listen import ListenError, bind_sockets, serving_urls, socket_url
from chatsvc.logs import configure_logging

log = logging.getLogger("chatsvc.serve")

# Seconds open HTTP requests get to finish after SIGTERM; sockets are closed before that.
SHUTDOWN_TIMEOUT = 3.0


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="chatsvc", description="Real-time chat service")
    parser.add_argument("--version", action="version", version=f"chatsvc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    # Flags are read as text and checked by the parser of their environment variable (see main).
    serve = commands.add_parser("serve", help="serve HTTP and Socket.IO")
    serve.add_argument("--host", help="address to listen on (CHATSVC_HOST, default 0.0.0.0)")
    serve.add_argument("--port", help="port to listen on (CHATSVC_PORT, default 3005)")
    serve.add_argument("--db", help="SQLite file (CHATSVC_DB, default ./data/chatsvc.db)")
    serve.add_argument("--database-url", help=cli.DATABASE_URL_HELP)
    demo = commands.add_parser("demo", help="add demo users, rooms and messages if missing, then serve")
    demo.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: the password is public)"
    )
    demo.add_argument("--port", help="port to listen on (CHATSVC_PORT, default 3005)")
    demo.add_argument("--db", help="SQLite file (CHATSVC_DB, default ./data/chatsvc.db)")
    demo.add_argument("--database-url", help=cli.DATABASE_URL_HELP)
    demo.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    cli.add_commands(commands)
    return parser


# Flag -> the Config field it sets (the same field as its environment variable).
FLAGS = {"host": "host", "port": "port", "db": "db_path", "database_url": "database_url"}


def config_from(args: argparse.Namespace) -> Config:
    """The environment's settings with the flags given on top, each checked like its variable."""
    overrides: dict[str, Any] = {}
    for flag, field_name in FLAGS.items():
        raw = getattr(args, flag, None)
        if raw is not None:
            overrides[field_name] = parse_flag(f"--{flag.replace('_', '-')}", field_name, raw)
    return Config.from_env(**overrides)


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
        config = config_from(args)
    except ValueError as exc:
        print(f"chatsvc: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.log_level)
    if args.command in cli.COMMANDS:
        return cli.run_command(args, config)
    try:
        sockets = bind_sockets(config.host, config.port)
    except ListenError as exc:
        print(f"chatsvc: {exc}", file=sys.stderr)
        return 1
    _use_uvloop()
    urls = serving_urls(sockets)
    on_ready = functools.partial(_announce, config, urls)
    if args.command == "demo":
        seed = asyncio.run(prepare_demo(config))
        page = socket_url(sockets[0])
        print(demo_banner(config, seed, page), flush=True)
        if not args.no_browser:
            on_ready = functools.partial(_announce_and_open, config, urls, page)
    app = create_app(config)
    app.on_startup.append(_freeze_startup_objects)
    # access_log=None: chatsvc/http/observe.py writes the one line per request.
    # print: run_app calls it once every socket listens, which is when the start-up line is true.
    web.run_app(
        app,
        sock=sockets,
        print=on_ready,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log=None,
    )
    return 0


async def _freeze_startup_objects(_app: web.Application) -> None:
    """Keep what start-up made (modules, classes, the app) out of every later collection of the oldest generation.

    Those objects live as long as the process; without this each full collection walks them all again while
    messages wait (docs/performance.md, "Stalls in D"). Runs before the first socket listens.
    """
    gc.collect()
    gc.freeze()


def _announce(config: Config, urls: list[str], _aiohttp_banner: str = "") -> None:
    auth = config.socket_auth if config.socket_auth == "token" else f"{config.socket_auth} (INSECURE)"
    log.info(
        "chatsvc %s serving %s; database %s; socket auth: %s",
        __version__,
        " and ".join(urls),
        database_label(config),
        auth,
        extra={"urls": urls, "db_path": database_label(config), "socket_auth": config.socket_auth},
    )


def _announce_and_open(config: Config, urls: list[str], page: str, _aiohttp_banner: str = "") -> None:
    _announce(config, urls)
    open_in_browser(page)


if __name__ == "__main__":
    sys.exit(main())
