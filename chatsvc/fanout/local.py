"""The fan-out of one process: everything happens at once, on this instance's sockets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from chatsvc.fanout import MESSAGE_EVENT, Fanout, message_event, room_name


class LocalFanout(Fanout):
    """Delivers through this process's Socket.IO server; control messages apply here only."""

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to stop."""

    async def deliver(self, messages: list[dict[str, Any]]) -> None:
        """Queue each message on its room's sockets, in the order given."""
        emit = self._sockets.emit
        for message in messages:
            event = message_event(message)
            await emit(MESSAGE_EVENT, event, room=room_name(message["chatroomId"]))
            self._record_online(event)

    async def notify(self, room: str | list[str], notice: dict[str, Any], *, skip_sid: str | None = None) -> None:
        """Queue a notice on the room's sockets."""
        await self._sockets.emit(MESSAGE_EVENT, notice, room=room, skip_sid=skip_sid)

    async def control(self, op: str, args: dict[str, Any]) -> None:
        """Apply a control message here: there is nowhere else."""
        await self.apply_here(op, args)

    async def run_in_stream(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` now: deliveries happen as they are handed over, so now is between them."""
        await work()
