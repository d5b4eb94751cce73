"""Engine.IO sessions that have not completed the Socket.IO connect, bounded per client address and in all.

Opening an Engine.IO session costs one HTTP request and no token, and the
session holds its buffers until it closes. Socket.IO's connect, which needs
a token, follows at once from every honest client, so a session that has not
made it is cheap to count and a flood of them is refused at the handshake
(chatsvc/realtime/engine.py ``ChatEngineServer.handle_request``) before it costs
anything. A session leaves the count when its Socket.IO connect succeeds or
when it closes.
"""

from __future__ import annotations

from chatsvc.errors import ChatError, ServiceUnavailable, TooManyRequests


class PendingSessions:
    """The Engine.IO sessions of one server still waiting for their Socket.IO connect; 0 means no bound."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._address_of: dict[str, str] = {}
        self._count_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._address_of)

    def refusal(self, address: str) -> ChatError | None:
        """Why a new session from this address must be refused now, or None if it may open."""
        if self.max_per_address and self._count_of.get(address, 0) >= self.max_per_address:
            return TooManyRequests(
                "Too many connections from this address have not completed the Socket.IO connect; retry shortly"
            )
        if self.max_total and len(self._address_of) >= self.max_total:
            return ServiceUnavailable("Too many connections have not completed the Socket.IO connect; retry shortly")
        return None

    def opened(self, eio_sid: str, address: str) -> None:
        """Count a new Engine.IO session."""
        if eio_sid in self._address_of:
            return
        self._address_of[eio_sid] = address
        self._count_of[address] = self._count_of.get(address, 0) + 1

    def done(self, eio_sid: str) -> None:
        """The session connected to Socket.IO, or closed: it no longer counts."""
        address = self._address_of.pop(eio_sid, None)
        if address is None:
            return
        left = self._count_of[address] - 1
        if left:
            self._count_of[address] = left
        else:
            del self._count_of[address]
