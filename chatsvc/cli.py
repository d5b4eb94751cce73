"""Administrative commands of the ``chatsvc`` console script: init-db, user add, token, copy-to-postgres.

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
from pathlib import Path

from chatsvc import admin
from chatsvc.auth import TokenService
from chatsvc.config import Config, parse_flag, url_without_password
from chatsvc.db import Database, SqliteDatabase, open_database
from chatsvc.errors import BadRequest, ChatError
from chatsvc.models import PASSWORD_MAX, PASSWORD_MIN, RegisterBody, validate_field
from chatsvc.store import transfer

COMMANDS = ("init-db", "user", "token", "copy-to-postgres")
# Commands that only read: they find a database or say there is none, never create an empty one.
READ_ONLY = ("token",)
DB_HELP = "SQLite file (CHATSVC_DB, default ./data/chatsvc.db)"
DATABASE_URL_HELP = (
    "PostgreSQL database, postgresql://user:password@host:port/name (CHATSVC_DATABASE_URL); wins over --db"
)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register init-db, user add and token on the CLI's subcommand parser."""
    init_db = commands.add_parser("init-db", help="create the database file with its schema, then exit")
    init_db.add_argument("--db", help=DB_HELP)
    init_db.add_argument("--database-url", help=DATABASE_URL_HELP)
    user = commands.add_parser("user", help="manage users")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser("add", help="create a user who logs in with a password")
    add.add_argument("username")
    add.add_argument("--password", help=f"at least {PASSWORD_MIN} characters; generated and printed when omitted")
    add.add_argument("--nick", help="nickName (default: the username)")
    add.add_argument("--email", help="email address (default: none)")
    add.add_argument("--db", help=DB_HELP)
    add.add_argument("--database-url", help=DATABASE_URL_HELP)
    token = commands.add_parser("token", help="print a token for a user (signed as the server would)")
    token.add_argument("username")
    token.add_argument("--db", help=DB_HELP)
    token.add_argument("--database-url", help=DATABASE_URL_HELP)
    copy = commands.add_parser(
        "copy-to-postgres", help="copy every row of an SQLite database into an empty PostgreSQL one, ids and all"
    )
    copy.add_argument("--from", dest="source", required=True, help="the SQLite file to copy (left unchanged)")
    copy.add_argument("--to", dest="target", required=True, help="postgresql://user:password@host:port/name")


def run_command(args: argparse.Namespace, config: Config) -> int:
    """Run one of COMMANDS; the process exit status."""
    if args.command == "copy-to-postgres":
        return _copy_command(args)
    work: Callable[[Database], Awaitable[None]]
    if args.command == "init-db":
        work = _init_db
    elif args.command == "user":
        work = functools.partial(_add_user, args=args, config=config)
    else:
        work = functools.partial(_print_token, username=args.username, config=config)
    if args.command in READ_ONLY and config.database_url is None and not config.db_path.is_file():
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
    db = open_database(config)
    await db.open()
    try:
        await work(db)
    finally:
        await db.close()


async def _init_db(db: Database) -> None:
    # Opening applies the schema; nothing else to do.
    print(f"database ready at {db.describe()}")


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


def _copy_command(args: argparse.Namespace) -> int:
    try:
        target = parse_flag("--to", "database_url", args.target)
    except ValueError as exc:
        print(f"chatsvc: {exc}", file=sys.stderr)
        return 2
    source = Path(args.source)
    if not source.is_file():
        print(f"chatsvc: no SQLite database at {source}", file=sys.stderr)
        return 1
    try:
        counts = asyncio.run(copy_to_postgres(source, target))
    except ChatError as exc:
        print(f"chatsvc: {exc.message}", file=sys.stderr)
        return 1
    print(f"copied {sum(counts.values())} rows from {source} to {url_without_password(target)}:")
    for table, count in counts.items():
        print(f"  {table}: {count}")
    return 0


async def copy_to_postgres(source: Path, target_url: str) -> dict[str, int]:
    """Copy every table of the SQLite database into the empty PostgreSQL one, in one transaction; rows per table.

    Ids are kept, so tokens, room ids and clients' lastMessageId stay valid,
    and each id sequence is set past the largest id. Raises BadRequest,
    writing nothing, if the target holds any row.
    """
    from chatsvc.store.postgres import PostgresDatabase

    sqlite_db = SqliteDatabase(source)
    postgres_db = PostgresDatabase(target_url, pool_size=2)
    await sqlite_db.open()
    try:
        await postgres_db.open()
        try:
            counts: dict[str, int] = {}
            async with postgres_db.transaction() as conn:
                filled = [table for table in transfer.TABLES if await transfer.count_rows(conn, table)]
                if filled:
                    raise BadRequest(
                        f"the target database {postgres_db.describe()} is not empty (rows in {', '.join(filled)}): "
                        "copy-to-postgres only fills an empty database"
                    )
                for table in transfer.TABLES:
                    counts[table] = 0
                    async for rows in transfer.read_pages(sqlite_db.reader, table):
                        await transfer.write_rows(conn, table, rows)
                        counts[table] += len(rows)
                await transfer.move_postgres_sequences_past_ids(conn)
        finally:
            await postgres_db.close()
    finally:
        await sqlite_db.close()
    return counts
