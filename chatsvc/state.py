"""The application state shared by HTTP handlers and socket events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from chatsvc.auth import Identity, PasswordHasher, TokenService
from chatsvc.cache import AccountCache, MembershipCache, ProfileCache
from chatsvc.config import Config
from chatsvc.db import Database
from chatsvc.errors import Unauthorized
from chatsvc.fanout import Fanout
from chatsvc.files import FileStore
from chatsvc.files.sweep import UploadSweeper
from chatsvc.membership import Membership
from chatsvc.presence import Presence
from chatsvc.realtime.server import ChatSocketServer
from chatsvc.receipts import ReadPositions, TypingNotices
from chatsvc.throttle import Throttle
from chatsvc.webhook_process import WebhookProcess
from chatsvc.webhooks import WebhookSender
from chatsvc.writer import MessageWriter


@dataclass(frozen=True)
class Caller:
    """An authenticated user: the public profile, the token generation it came with, and when they logged in."""

    user: dict[str, Any]
    token_version: int
    auth_time: int

    @property
    def id(self) -> int:
        """The user's id."""
        return int(self.user["id"])


@dataclass
class AppState:
    """Everything a request or socket event needs, owned by one application; built by chatsvc/app.py create_app."""

    config: Config
    db: Database
    hasher: PasswordHasher
    throttle: Throttle
    tokens: TokenService
    members: MembershipCache
    profiles: ProfileCache
    accounts: AccountCache
    sio: ChatSocketServer
    fanout: Fanout
    writer: MessageWriter
    membership: Membership
    # Uploaded files (chatsvc/files/): where their bytes live, and the sweep of unused ones.
    files: FileStore
    upload_sweeper: UploadSweeper
    # Read positions (stored in batches) and typing notices (memory only): chatsvc/receipts.py.
    reads: ReadPositions
    typing: TypingNotices
    # Who is online, over every instance (chatsvc/presence.py).
    presence: Presence
    # Webhooks for unseen messages (chatsvc/webhooks.py); None when CHATSVC_WEBHOOK_URL is not set.
    # The sender on this process's loop, or the process it runs in (chatsvc/webhook_process.py).
    webhooks: WebhookSender | WebhookProcess | None = None

    async def authenticate(self, token: str) -> Caller:
        """The user a token belongs to; Unauthorized if the token or its user is no longer valid."""
        identity: Identity = self.tokens.verify(token)
        user = await self.accounts.account(self.db.reader, identity.user_id)
        if user is None or user.pop("tokenVersion") != identity.token_version:
            raise Unauthorized("Token is no longer valid, please log in again")
        return Caller(user, identity.token_version, identity.auth_time)

    def issue_token(self, user: dict[str, Any], token_version: int, auth_time: int | None = None) -> str:
        """A fresh token for a user profile, in the session that began at ``auth_time`` (None: a new one)."""
        return self.tokens.issue(user["id"], user["username"], token_version, auth_time)


STATE = web.AppKey("chatsvc_state", AppState)
