"""The official JavaScript socket.io-client (v4, under Node) against the real app: auth, rooms, acks, upgrade, recovery.

Clients written for the NestJS backend run this library, so it is the one whose behaviour counts. Each test runs
tests/js/client_scenario.mjs under ``node`` and asserts on the JSON lines it prints, one per thing its clients saw.
The package comes from npm (``npm ci`` in tests/js, once per change of its lockfile). Without ``node`` or ``npm`` the
tests skip, except under CI=true, where they fail saying what is missing (``.ci/run`` installs Debian's).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Api, User, assert_ack_error, tool_missing

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = JS_DIR / "client_scenario.mjs"
# Written after a successful install, holding the digest of the files it installed from.
INSTALLED_STAMP = JS_DIR / "node_modules" / ".chatsvc-installed"
INSTALL_TIMEOUT = 300.0
# Far above a scenario's own waits (5 s each): reached only if the script hangs, and then it is killed.
SCENARIO_TIMEOUT = 60.0
NOT_A_MEMBER = {"statusCode": 403, "message": "You are not a member of this chatroom", "error": "Forbidden"}


def _lock_digest() -> str:
    return hashlib.sha256(
        (JS_DIR / "package.json").read_bytes() + (JS_DIR / "package-lock.json").read_bytes()
    ).hexdigest()


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` executable, with tests/js's locked socket.io-client installed (``npm ci``) when not yet there."""
    executable = shutil.which("node")
    if executable is None:
        tool_missing("JavaScript client test", "no node executable on PATH (Debian: apt-get install nodejs npm)")
    digest = _lock_digest()
    if INSTALLED_STAMP.is_file() and INSTALLED_STAMP.read_text() == digest:
        return executable
    npm = shutil.which("npm")
    if npm is None:
        tool_missing("JavaScript client test", "no npm executable on PATH (Debian: apt-get install npm)")
    try:
        done = subprocess.run([npm, "ci"], cwd=JS_DIR, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        tool_missing("JavaScript client test", f"npm ci in tests/js did not finish within {INSTALL_TIMEOUT:.0f} s")
    if done.returncode != 0:
        tool_missing("JavaScript client test", f"npm ci in tests/js failed:\n{done.stdout}\n{done.stderr}")
    INSTALLED_STAMP.write_text(digest)
    return executable


async def _read_all(stream: asyncio.StreamReader | None, chunks: list[bytes]) -> None:
    assert stream is not None
    while chunk := await stream.read(65536):
        chunks.append(chunk)


async def run_scenario(node: str, scenario: str, **params: Any) -> dict[str, dict[str, Any]]:
    """Run one scenario of client_scenario.mjs; its reported steps by name. Fails with its output if it does."""
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        scenario,
        json.dumps(params),
        cwd=JS_DIR,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out: list[bytes] = []
    err: list[bytes] = []
    timed_out = False
    try:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            await asyncio.gather(_read_all(proc.stdout, out), _read_all(proc.stderr, err), proc.wait())
    except TimeoutError:
        timed_out = True
    finally:
        # Also on cancellation or any failure here: the Node process never outlives the test.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stdout = b"".join(out).decode(errors="replace")
    transcript = (
        f"node client_scenario.mjs {scenario} exited with {proc.returncode}\n"
        f"--- stdout ---\n{stdout}\n--- stderr ---\n{b''.join(err).decode(errors='replace')}"
    )
    if timed_out:
        pytest.fail(f"killed after {SCENARIO_TIMEOUT:.0f} s: {transcript}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(transcript, pytrace=False)
    steps: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        seen = json.loads(line)
        step = seen.pop("step")
        assert step not in steps, f"step {step} reported twice\n{transcript}"
        steps[step] = seen
    assert "done" in steps, transcript
    return steps


def who(user: User) -> dict[str, Any]:
    """What the script needs to know of a user."""
    return {"id": user.id, "token": user.token}


@pytest.mark.parametrize(
    ("transports", "opened_on", "upgraded_to"),
    [
        (None, "polling", "websocket"),  # the library's default: long-polling first, then the upgrade
        (["websocket"], "websocket", None),
        (["polling"], "polling", None),
    ],
    ids=["polling-then-websocket", "websocket-only", "polling-only"],
)
async def test_js_client_joins_sends_with_ack_and_receives_from_another_client(
    node: str, api: Api, base_url: str, transports: list[str] | None, opened_on: str, upgraded_to: str | None, pair
) -> None:
    alice, bob, room = pair
    seen = await run_scenario(
        node,
        "chat",
        url=base_url,
        alice=who(alice),
        bob=who(bob),
        room=room,
        transports=transports,
        waitUpgrade=upgraded_to is not None,
    )

    for name in ("alice", "bob"):
        assert seen[f"{name}.connected"]["openedOn"] == opened_on
        if upgraded_to is not None:
            # After the engine's "upgrade" event the socket runs on the WebSocket, and chats there below.
            assert seen[f"{name}.upgraded"] == {"upgradedTo": "websocket", "transport": "websocket"}
        assert seen[f"{name}.finally"] == {
            "transport": upgraded_to or opened_on,
            "upgradedTo": upgraded_to,
            "connected": True,
        }
    assert seen["bob.joined"]["ack"] == {"chatroomId": room}
    assert seen["alice.joined"]["ack"] == {"chatroomId": room}
    sent = seen["alice.sent"]["ack"]
    assert sent["content"] == "hello from socket.io-client"
    assert (sent["chatroomId"], sent["senderId"], sent["type"]) == (room, alice.id, 0)
    assert sent["sender"]["username"] == alice.username
    assert seen["bob.received"]["message"] == {"type": "sendMessage", "userId": alice.id, "message": sent}
    history = await api.get("/chat-history/list", bob.token, chatroomId=room)
    assert [m["id"] for m in history.body] == [sent["id"]]


async def test_js_client_recovers_missed_messages_in_order_with_last_message_id(
    node: str, api: Api, base_url: str, pair
) -> None:
    alice, bob, room = pair
    seen = await run_scenario(node, "recovery", url=base_url, alice=who(alice), bob=who(bob), room=room)

    before = seen["bob.seen"]
    assert before["message"]["message"]["id"] == before["ackId"]
    assert seen["bob.disconnected"]["reason"] == "io client disconnect"
    missed = seen["alice.sent"]["acks"]
    assert [m["content"] for m in missed] == ["missed 1", "missed 2", "missed 3"]
    # The reconnect is a new Engine.IO session, long-polling first like the first one.
    assert seen["bob.rejoined"] == {"ack": {"chatroomId": room, "recovered": True, "count": 3}, "openedOn": "polling"}
    received = seen["bob.received"]
    # The replay, then the live message: in order, nothing missing, nothing twice.
    assert [m["type"] for m in received["messages"]] == ["sendMessage"] * 4
    assert [m["message"]["id"] for m in received["messages"]] == [m["id"] for m in missed] + [received["liveAckId"]]
    assert [m["message"]["content"] for m in received["messages"]] == [*(m["content"] for m in missed), "live again"]
    assert [m["message"] for m in received["messages"][:3]] == missed
    assert seen["bob.upgraded"] == {"upgradedTo": "websocket", "transport": "websocket"}


async def test_js_client_gets_error_acks_and_stays_connected(node: str, api: Api, base_url: str) -> None:
    alice = await api.new_user()
    bob = await api.new_user()
    carol = await api.new_user()
    room = await api.one_to_one(alice, bob)
    foreign_room = await api.one_to_one(bob, carol)
    seen = await run_scenario(node, "errors", url=base_url, alice=who(alice), room=room, foreignRoom=foreign_room)

    assert seen["send.foreign"]["ack"] == NOT_A_MEMBER
    assert seen["join.foreign"]["ack"] == NOT_A_MEMBER
    assert_ack_error(seen["send.empty"]["ack"], 400)
    # Without an ack callback the same refusal comes as an `exception` event.
    assert seen["send.foreign.noack"]["exceptions"] == [{"status": "error", "message": NOT_A_MEMBER["message"]}]
    assert seen["still.connected"] == {"connected": True}
    assert seen["send.own"]["ack"]["content"] == "still here"
    foreign_history = await api.get("/chat-history/list", bob.token, chatroomId=foreign_room)
    assert foreign_history.body == []
    own_history = await api.get("/chat-history/list", alice.token, chatroomId=room)
    assert [m["content"] for m in own_history.body] == ["still here"]


async def test_js_client_connect_error_says_why_the_token_was_refused(node: str, base_url: str) -> None:
    seen = await run_scenario(node, "refusals", url=base_url)

    expected = {
        "no-token": ("Authentication required: connect with auth {token}", "polling"),
        "bad-token": ("Invalid token, please log in again", "polling"),
        "bad-token-websocket": ("Invalid token, please log in again", "websocket"),
    }
    for name, (message, opened_on) in expected.items():
        # Refused by Socket.IO on an open Engine.IO session, not a transport error; the client does not retry.
        assert seen[f"refused.{name}"] == {
            "message": message,
            "connected": False,
            "active": False,
            "openedOn": opened_on,
        }
