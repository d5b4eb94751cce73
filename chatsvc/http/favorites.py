"""/favorite: messages a user saved from rooms they are in.

Saving answers 403 alike for a message in a room the caller is not in and for
an id that names no message, so ids cannot be probed for existence. Deleting
answers 404 alike for another user's favorite and an unknown id, for the same
reason.
"""

from __future__ import annotations

from aiohttp import web

from chatsvc.errors import Forbidden, NotFound
from chatsvc.http.middleware import caller
from chatsvc.jsonutil import json_response
from chatsvc.models import ChatHistoryIdQuery, FavoriteIdQuery, validate_params
from chatsvc.state import STATE
from chatsvc.store.favorites import can_see_message, delete_favorite, list_favorites, save_favorite

routes = web.RouteTableDef()


@routes.get("/favorite/add")
async def add_favorite(request: web.Request) -> web.Response:
    """Save message ``chatHistoryId`` for the caller; answers the favorite, the existing one if saved before."""
    me = caller(request)
    chat_history_id = validate_params(ChatHistoryIdQuery, request.query).chatHistoryId
    # The check and the save share a transaction, so a member who quits meanwhile cannot slip through.
    async with request.app[STATE].db.transaction() as conn:
        if not await can_see_message(conn, me.id, chat_history_id):
            raise Forbidden("You can only save messages of chatrooms you are a member of")
        favorite = await save_favorite(conn, me.id, chat_history_id)
    return json_response(favorite)


@routes.get("/favorite/list")
async def list_my_favorites(request: web.Request) -> web.Response:
    """The caller's favorites, newest first, each with its message and sender."""
    favorites = await list_favorites(request.app[STATE].db.reader, caller(request).id)
    return json_response(favorites)


@routes.get("/favorite/del")
async def delete_my_favorite(request: web.Request) -> web.Response:
    """Delete the caller's favorite ``id``; answers the deleted favorite."""
    me = caller(request)
    favorite_id = validate_params(FavoriteIdQuery, request.query).id
    async with request.app[STATE].db.transaction() as conn:
        deleted = await delete_favorite(conn, me.id, favorite_id)
    if deleted is None:
        raise NotFound("Favorite not found")
    return json_response(deleted)
