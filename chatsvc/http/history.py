"""/chat-history: pages of a room's messages, for members only."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from chatsvc.errors import Forbidden
from chatsvc.http.middleware import caller
from chatsvc.jsonutil import json_response
from chatsvc.models import SEARCH_DEFAULT_LIMIT, SearchQuery, history_query_model, validate_params
from chatsvc.state import STATE
from chatsvc.store.messages import list_history, search_messages

routes = web.RouteTableDef()


@routes.get("/chat-history/list")
async def list_chat_history(request: web.Request) -> web.Response:
    """Messages of a room in ascending id order: the newest page, or one beside a cursor."""
    config = request.app[STATE].config
    query: Any = validate_params(history_query_model(config.history_max_limit), request.query)
    room_id, limit, before_id, after_id = query.chatroomId, query.limit, query.beforeId, query.afterId
    state = request.app[STATE]
    reader = state.db.reader
    # The cache that every send checks (kept true on every instance by the fan-out): a page costs one statement.
    if not await state.members.is_member(reader, caller(request).id, room_id):
        raise Forbidden("You are not a member of this chatroom")
    messages = await list_history(
        reader, room_id, limit=limit or config.history_default_limit, before_id=before_id, after_id=after_id
    )
    return json_response(messages)


@routes.get("/chat-history/search")
async def search_chat_history(request: web.Request) -> web.Response:
    """Messages containing ``q`` (any case, literally), newest first, from the caller's rooms or one of them."""
    query = validate_params(SearchQuery, request.query)
    state = request.app[STATE]
    reader = state.db.reader
    user_id = caller(request).id
    if query.chatroomId is not None and not await state.members.is_member(reader, user_id, query.chatroomId):
        raise Forbidden("You are not a member of this chatroom")
    # The index first takes in every message stored so far: nothing acknowledged before this search is missed.
    await state.writer.catch_up()
    messages = await search_messages(
        reader,
        user_id,
        query.q,
        limit=query.limit or SEARCH_DEFAULT_LIMIT,
        chatroom_id=query.chatroomId,
        before_id=query.beforeId,
    )
    return json_response(messages)
