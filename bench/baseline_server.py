"""The baseline: a plain python-socketio server on aiohttp that only broadcasts.

No storage, no auth (any token is accepted), the stock client manager and
JSON module. ``joinRoom`` enters the room; ``sendMessage`` emits ``message``
to the room, shaped like chatsvc's broadcast so frames are the same size, and
returns it as the ack. It is the ceiling of the stock library that chatsvc's
figures are compared with.

    python -m bench.baseline_server --port 3100 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any

import socketio
from aiohttp import web


def iso_now() -> str:
    """The current time as chatsvc writes it: ISO 8601 UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create_app() -> web.Application:
    """The aiohttp application with the broadcasting Socket.IO server attached."""
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", logger=False, engineio_logger=False)
    ids = itertools.count(1)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Accept every connection."""

    @sio.event
    async def joinRoom(sid: str, data: Any) -> dict[str, Any]:
        """Enter the room."""
        await sio.enter_room(sid, str(data["chatroomId"]))
        return {"chatroomId": data["chatroomId"]}

    @sio.event
    async def leaveRoom(sid: str, data: Any) -> dict[str, Any]:
        """Leave the room."""
        await sio.leave_room(sid, str(data["chatroomId"]))
        return {"chatroomId": data["chatroomId"]}

    @sio.event
    async def sendMessage(sid: str, data: Any) -> dict[str, Any]:
        """Broadcast the message to the room and return it."""
        user_id, room = data["sendUserId"], data["chatroomId"]
        now = iso_now()
        message = {
            "id": next(ids),
            "content": data["message"]["content"],
            "type": 0,
            "chatroomId": room,
            "senderId": user_id,
            "system": False,
            "clientMsgId": None,
            "createTime": now,
            "updateTime": now,
            "sender": {
                "id": user_id,
                "username": f"bench{user_id}",
                "nickName": f"Bench {user_id}",
                "headPic": "",
                "createTime": now,
            },
        }
        await sio.emit("message", {"type": "sendMessage", "userId": user_id, "message": message}, room=str(room))
        return message

    app = web.Application()
    sio.attach(app)
    return app


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3100)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (default: the stock asyncio loop)")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(create_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
