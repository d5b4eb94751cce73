"""Timers at shutdown: presence grace periods are settled before the database closes, and none starts after.

A grace timer left running when the database closes fires later on a closed
database (a traceback in the log of a server that was asked to stop). The
grace period here is far longer than any test, so an offline notice that
arrives was sent by the shutdown, not by a timer. The test plays the socket
namespace's part (it calls the app's own Presence as on_connect and
on_disconnect do), which lets it place a disconnect exactly during or after
the shutdown step. Typing notices, whose timers end a user's typing, start
none after the shutdown either.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chatsvc.config import Config
from chatsvc.testing import ChatsvcServer
from tests.conftest import make_config
from tests.helpers import Api, SocketClient, User
from tests.test_presence_roles import befriend, presence_of, until_marker

pytestmark = pytest.mark.both_engines

LONG_GRACE = 600.0


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, presence_grace=LONG_GRACE, rate_limit=0)


def grace_timers() -> list[asyncio.Task[object]]:
    """The presence grace timers alive in this loop (chatsvc/presence.py names each after its user)."""
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("chatsvc-presence-") and not task.done()]


async def watched(api: Api, sockets, trio: tuple[User, User, User]) -> SocketClient:
    """A socket of Carol (the third), friend of Alice and Bob, who hears their presence."""
    alice, bob, carol = trio
    await befriend(api, carol, alice)
    await befriend(api, carol, bob)
    return await sockets(carol.token)


async def test_presence_shutdown_settles_a_user_whose_last_socket_goes_while_it_runs(
    api: Api, server: ChatsvcServer, sockets, trio
) -> None:
    alice, bob, _ = trio
    carol = await watched(api, sockets, trio)
    presence = server.state.presence
    for user in (alice, bob):
        await presence.socket_connected(user.id)
        await carol.next_message(presence_of(user, True))
    await presence.socket_disconnected(alice.id)  # her grace period runs
    # Bob's last socket goes once shutdown has begun: it runs while the shutdown settles Alice.
    bob_goes = asyncio.create_task(presence.socket_disconnected(bob.id))
    await presence.close()
    await bob_goes

    offline = [await carol.next_message(presence_of(user, False)) for user in (alice, bob)]
    assert [notice["userId"] for notice in offline] == [alice.id, bob.id]
    assert grace_timers() == []


async def test_presence_after_shutdown_a_socket_coming_or_going_starts_no_timer_and_announces_nothing(
    api: Api, server: ChatsvcServer, sockets, trio
) -> None:
    alice, bob, carol_user = trio
    carol = await watched(api, sockets, trio)
    presence = server.state.presence
    await presence.socket_connected(alice.id)
    await carol.next_message(presence_of(alice, True))
    await presence.close()
    # Stragglers after the shutdown step (a transport aborted late, say).
    await presence.socket_disconnected(alice.id)
    await presence.socket_connected(bob.id)
    assert grace_timers() == []

    # Nothing about either reaches Carol before a later notice to her (the fan-out delivers in order).
    dave = await api.new_user()
    asked = await api.post("/friendship/add", {"username": carol_user.username, "reason": ""}, dave.token)
    assert asked.status == 201, asked.body
    before = await until_marker(carol, lambda m: m.get("type") == "friendRequest")
    assert [m for m in before if m.get("type") == "presence"] == []


async def test_typing_after_shutdown_sends_nothing(server: ChatsvcServer, joined) -> None:
    alice, _bob, room, a, b = joined
    server.state.typing.close()  # the shutdown step (chatsvc/app.py)
    assert await a.call("typing", {"chatroomId": room, "typing": True}) == {}
    # Nothing reaches Bob before a later message that travels the same path.
    sent = await a.send(alice, room, "after")
    before = await until_marker(b, lambda m: m.get("type") == "sendMessage" and m["message"]["id"] == sent["id"])
    assert [m for m in before if m.get("type") == "typing"] == []
