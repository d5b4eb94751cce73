"""/user/presence: who of the caller's friends and room mates is online (chatsvc/presence.py)."""

from __future__ import annotations

from aiohttp import web

from chatsvc import models
from chatsvc.http.middleware import caller
from chatsvc.jsonutil import json_response
from chatsvc.models import validate_params
from chatsvc.state import STATE

routes = web.RouteTableDef()


@routes.get("/user/presence")
async def user_presence(request: web.Request) -> web.Response:
    """``[{id, online, lastSeen}]`` of the listed users the caller is friends with or shares a room with."""
    ids = models.parse_id_list(validate_params(models.PresenceQuery, request.query).ids)
    answer = await request.app[STATE].presence.presence_of(caller(request).id, ids)
    return json_response(answer)
