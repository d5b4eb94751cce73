"""Administrative commands of the ``chatsvc`` console script: init-db, user add, token.

They work on the database file directly (SQLite in WAL mode lets them run
beside a serving process) and print what a script needs: ``chatsvc token``
prints the token alone, so ``TOKEN=$(chatsvc token alice)`` works.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import secrets
import sys
from collections.abc import Awaitable, Callable

from chatsvc import admin
from chatsvc.auth import TokenService
from chatsvc.config import Config
from chatsvc.db import Database
from chatsvc.errors import BadRequest, ChatError
from chatsvc.models import PASSWORD_MAX, PASSWORD_MIN, RegisterBody, validate_field

COMMANDS = ("init-db", "user", "token")
# Commands that only read: they find a database or say there is none, never create an empty one.
READ_ONLY = ("token",)
DB_HELP = "SQLite file (CHATSVC_DB, default ./data/chatsvc.db)"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register init-db, user add and token on the CLI's subcommand parser."""
    init_db = commands.add_parser("init-db", help="create the database file with its schema, then exit")
    init_db.add_argument("--db", help=DB_HELP)
    user = commands.add_parser("user", help="manage users")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser("add", help="create a user who logs in with a password")
    add.add_argument("username")
    add.add_argument("--password", help=f"at least {PASSWORD_MIN} characters; generated and printed when omitted")
    add.add_argument("--nick", help="nickName (default: the username)")
    add.add_argument("--email", help="email address (default: none)")
    add.add_argument("--db", help=DB_HELP)
    token = commands.add_parser("token", help="print a token for a user (signed as the server would)")
    token.add_argument("username")
    token.add_argument("--db", help=DB_HELP)


def run_command(args: argparse.Namespace, config: Config) -> int:
    """Run one of COMMANDS; the process exit status."""
    work: Callable[[Database], Awaitable[None]]
    if args.command == "init-db":
        work = _init_db
    elif args.command == "user":
        work = functools.partial(_add_user, args=args, config=config)
    else:
        work = functools.partial(_print_token, username=args.username, config=config)
    if args.command in READ_ONLY and not config.db_path.is_file():
        print(
            f"chatsvc: no database at {config.db_path} (give its path with --db or CHATSVC_DB;"
            " `chatsvc serve` or `chatsvc init-db` creates one)",
            file=sys.stderr,
        )
        return 1
    try:
        asyncio.run(_with_database(config, work))
    except ChatError as exc:
        print(f"chatsvc: {exc.message}", file=sys.stderr)
        return 1
    return 0


async def _with_database(config: Config, work: Callable[[Database], Awaitable[None]]) -> None:
    db = Database(config.db_path, synchronous=config.sqlite_synchronous)
    await db.open()
    try:
        await work(db)
    finally:
        await db.close()


async def _init_db(db: Database) -> None:
    # Opening applies the schema; nothing else to do.
    print(f"database ready at {db.path}")


async def _add_user(db: Database, args: argparse.Namespace, config: Config) -> None:
    username = validate_field(RegisterBody, "username", args.username)
    nick_name = validate_field(RegisterBody, "nickName", args.nick or username, label="nick")
    address = validate_field(RegisterBody, "email", args.email) if args.email is not None else ""
    generated = args.password is None
    password = secrets.token_urlsafe(12) if generated else args.password
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise BadRequest(f"password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    user = await admin.create_password_user(
        db, username=username, password=password, nick_name=nick_name, email=address, scrypt_n=config.scrypt_n
    )
    print(f"created user {user['username']} (id {user['id']})")
    if generated:
        print(f"password: {password}")


async def _print_token(db: Database, username: str, config: Config) -> None:
    user = (await admin.users_by_username(db, [username]))[username]
    tokens = TokenService(config.token_ttl_seconds, config.session_max_age_seconds)
    await tokens.load_secret(db, config.jwt_secret)
    print(tokens.issue(user["id"], user["username"], user["tokenVersion"]))
