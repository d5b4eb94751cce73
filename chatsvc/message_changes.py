"""Editing and deleting stored messages (issue 15): the rules, the change, and the room's notice, in one place.

Socket events, the sidecar API and tests all call these. Each change runs
between the writer's batches (``MessageWriter.run_between_batches``) and sends
its notice from there through the fan-out, so edits and deletions take their
place in the one delivery stream: a recovering ``joinRoom``, which reads the
history at its own point of that stream, either reads a change and misses its
notice, or hears the notice and read the message before it; never both,
never neither.
"""

from __future__ import annotations

from typing import Any

from chatsvc.errors import BadRequest, Forbidden, NotFound
from chatsvc.fanout import room_name
from chatsvc.state import AppState
from chatsvc.store.messages import TEXT, delete_message, edit_message, find_message, find_message_to_change
from chatsvc.store.rooms import is_member


def updated_notice(message: dict[str, Any]) -> dict[str, Any]:
    """The room's ``message`` notice of an edit."""
    return {"type": "messageUpdated", "message": message}


def deleted_notice(chatroom_id: int, message_id: int) -> dict[str, Any]:
    """The room's ``message`` notice of a deletion."""
    return {"type": "messageDeleted", "chatroomId": chatroom_id, "messageId": message_id}


async def change_edit(state: AppState, user_id: int, message_id: int, content: str) -> dict[str, Any]:
    """Edit a text message as its sender, a member, within the edit window; the updated message."""

    async def edit() -> dict[str, Any]:
        async with state.db.transaction() as conn:
            found = await find_message_to_change(conn, message_id, state.config.edit_window)
            if found is None or found["deleted"]:
                raise NotFound("Message not found")
            if not await is_member(conn, user_id, found["chatroomId"]):
                raise Forbidden("You are not a member of this chatroom")
            if found["senderId"] != user_id:
                raise Forbidden("Only the sender may edit a message")
            if found["type"] != TEXT:
                raise BadRequest("Only text messages can be edited")
            if not found["editable"]:
                raise Forbidden("This message is too old to edit")
            await edit_message(conn, message_id, content)
            message = await find_message(conn, message_id)
        assert message is not None
        await state.fanout.notify(room_name(message["chatroomId"]), updated_notice(message))
        return message

    return await state.writer.run_between_batches(edit)


async def change_delete(state: AppState, user_id: int | None, message_id: int) -> dict[str, Any]:
    """Delete a message as its sender and a member (``user_id`` None: the service, any message); the ack.

    Deleting a deleted message again answers the same and tells no one.
    """

    async def delete() -> dict[str, Any]:
        async with state.db.transaction() as conn:
            found = await find_message_to_change(conn, message_id, 0)
            if found is None:
                raise NotFound("Message not found")
            room_id = found["chatroomId"]
            if user_id is not None:
                if not await is_member(conn, user_id, room_id):
                    raise Forbidden("You are not a member of this chatroom")
                if found["senderId"] != user_id:
                    raise Forbidden("Only the sender may delete a message")
            already = bool(found["deleted"])
            if not already:
                await delete_message(conn, message_id)
        if not already:
            await state.fanout.notify(room_name(room_id), deleted_notice(room_id, message_id))
        return {"id": message_id, "chatroomId": room_id, "deleted": True}

    return await state.writer.run_between_batches(delete)
