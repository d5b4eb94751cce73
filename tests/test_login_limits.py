"""Password guessing and sign-up floods: failed-login limits, the registration rate, and the cap on password hashing.

The module's server trusts one proxy hop (``CHATSVC_PROXY_HOPS=1``), so a test
speaks from any client address by sending ``X-Forwarded-For``, as a reverse
proxy would.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from chatsvc.config import Config
from chatsvc.testing import ChatsvcServer, run_chatsvc
from chatsvc.throttle import RecentEvents
from tests.conftest import make_config
from tests.helpers import Api, Response, assert_error, until

FAILURES = 3
REGISTRATIONS = 3
HASH_SLOTS = 2
API_KEY = "login-limits-sidecar-key"
RIGHT = "secret123"
WRONG = "not-the-password"
LOGIN_WINDOW = 15 * 60
REGISTER_WINDOW = 60 * 60


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(
        tmp_path,
        login_failures=FAILURES,
        register_rate=REGISTRATIONS,
        proxy_hops=1,
        hash_concurrency=HASH_SLOTS,
        api_key=API_KEY,
    )


async def login(api: Api, username: str, password: str, address: str = "198.51.100.1") -> Response:
    return await api.request(
        "POST",
        "/user/login",
        json={"username": username, "password": password},
        headers={"X-Forwarded-For": address},
    )


async def register(api: Api, username: str, address: str = "198.51.100.1") -> Response:
    body = {"username": username, "password": RIGHT, "nickName": username, "email": f"{username}@example.com"}
    return await api.request("POST", "/user/register", json=body, headers={"X-Forwarded-For": address})


async def create_users(server: ChatsvcServer, *names: str) -> None:
    """Accounts made by the trusted path, so the registration rate stays untouched."""
    for name in names:
        await server.create_user(name, password=RIGHT)


def assert_too_many(resp: Response, window: int) -> int:
    """A canonical 429 whose Retry-After is a whole number of seconds within the window; that number."""
    assert_error(resp.status, resp.body, 429)
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= window, retry_after
    return retry_after


async def test_login_failures_past_the_limit_get_429_with_retry_after(api: Api, server: ChatsvcServer) -> None:
    await create_users(server, "alice")
    for _ in range(FAILURES):
        wrong = await login(api, "alice", WRONG)
        assert_error(wrong.status, wrong.body, 400)
    hashes = server.state.hasher.computed

    refused = await api.request(
        "POST",
        "/user/login",
        json={"username": "alice", "password": WRONG},
        headers={"X-Forwarded-For": "198.51.100.1", "Origin": "http://app.example"},
    )
    assert_too_many(refused, LOGIN_WINDOW)
    assert "failed logins" in refused.body["message"]
    # A browser client may read how long to wait.
    assert "retry-after" in refused.headers["Access-Control-Expose-Headers"].lower()
    # From the guessing address, the right password is refused too, and no hash is spent on either.
    assert_too_many(await login(api, "alice", RIGHT), LOGIN_WINDOW)
    assert server.state.hasher.computed == hashes


async def test_login_limit_per_address_spans_usernames(api: Api, server: ChatsvcServer) -> None:
    await create_users(server, "u1", "u2", "u3", "u4")
    for name in ("u1", "u2", "nobody"):
        assert (await login(api, name, WRONG, "203.0.113.7")).status == 400
    assert_too_many(await login(api, "u4", RIGHT, "203.0.113.7"), LOGIN_WINDOW)
    # Another address is not held back.
    assert (await login(api, "u4", RIGHT, "203.0.113.8")).status == 201


async def test_login_account_under_attack_still_opens_from_a_clean_address(api: Api, server: ChatsvcServer) -> None:
    await create_users(server, "alice")
    attackers = [f"192.0.2.{i}" for i in range(1, FAILURES + 1)]
    for address in attackers:
        assert (await login(api, "alice", WRONG, address)).status == 400
    # The account is over its limit: an address that already failed gets no further guess...
    for address in attackers:
        assert_too_many(await login(api, "alice", RIGHT, address), LOGIN_WINDOW)
    # ...a fresh one gets exactly one...
    assert (await login(api, "alice", WRONG, "192.0.2.100")).status == 400
    assert_too_many(await login(api, "alice", RIGHT, "192.0.2.100"), LOGIN_WINDOW)
    # ...and the owner, from an address with a clean record, logs in.
    assert (await login(api, "alice", RIGHT, "192.0.2.200")).status == 201


async def test_login_successes_never_count_and_never_clear_failures(api: Api, server: ChatsvcServer) -> None:
    await create_users(server, "alice")
    for _ in range(5 * FAILURES):
        assert (await login(api, "alice", RIGHT)).status == 201
    for _ in range(FAILURES - 1):
        assert (await login(api, "alice", WRONG)).status == 400
    assert (await login(api, "alice", RIGHT)).status == 201
    assert (await login(api, "alice", WRONG)).status == 400
    assert_too_many(await login(api, "alice", RIGHT), LOGIN_WINDOW)


async def test_login_limit_ignores_forwarded_for_without_proxy_hops(tmp_path: Path) -> None:
    async with run_chatsvc(make_config(tmp_path, login_failures=FAILURES)) as server:
        await server.create_user("alice", password=RIGHT)
        api = Api(str(server.make_url("")).rstrip("/"), server.http)
        # Each request claims another address; without a trusted proxy the peer address is what counts.
        for i in range(FAILURES):
            assert (await login(api, "alice", WRONG, f"10.0.0.{i}")).status == 400
        assert_too_many(await login(api, "alice", RIGHT, "10.9.9.9"), LOGIN_WINDOW)


async def test_login_requests_queued_for_a_hash_are_checked_again_when_their_turn_comes(
    api: Api, server: ChatsvcServer
) -> None:
    await create_users(server, "alice")
    hasher = server.state.hasher
    attempts = 2 * FAILURES
    async with AsyncExitStack() as held:
        for _ in range(HASH_SLOTS):
            await held.enter_async_context(hasher.slot())
        # Every attempt passes the first check (no failure yet) and queues for a hash.
        pending = [asyncio.ensure_future(login(api, "alice", WRONG)) for _ in range(attempts)]
        await until(lambda: hasher.waiting == attempts, "every login to queue for a hash")
        computed = hasher.computed
    statuses = [r.status for r in await asyncio.gather(*pending)]
    checked = statuses.count(400)
    # The ones hashing side by side when the limit is reached may each still finish: at most HASH_SLOTS - 1 over.
    assert FAILURES <= checked < FAILURES + HASH_SLOTS, statuses
    assert statuses.count(429) == attempts - checked
    assert hasher.computed - computed == checked


async def test_password_hashing_runs_at_most_the_configured_number_at_once(api: Api, server: ChatsvcServer) -> None:
    await create_users(server, "alice", "bob")
    hasher = server.state.hasher
    # A password reset hashes the new password before it looks at the code (none was sent: 400).
    reset = {"username": "bob", "email": "bob@example.com", "password": RIGHT, "captcha": "123456"}
    async with AsyncExitStack() as held:
        for _ in range(HASH_SLOTS):
            await held.enter_async_context(hasher.slot())
        pending = [
            asyncio.ensure_future(login(api, "alice", RIGHT)),
            asyncio.ensure_future(login(api, "bob", WRONG)),
            asyncio.ensure_future(register(api, "carol")),
            asyncio.ensure_future(api.post("/user/update_password", reset)),
        ]
        await until(lambda: hasher.waiting == len(pending), "every request to wait for a hash")
        assert hasher.in_use == HASH_SLOTS and not any(task.done() for task in pending)
    statuses = [r.status for r in await asyncio.gather(*pending)]
    assert statuses == [201, 400, 201, 400]
    assert hasher.peak == HASH_SLOTS

    # A burst of logins and registrations: all answered, never more than the slots hashing at once.
    burst = [login(api, "alice", RIGHT, f"198.51.100.{i}") for i in range(10)]
    burst += [register(api, f"user{i}", f"198.51.100.{i}") for i in range(10)]
    assert {r.status for r in await asyncio.gather(*burst)} == {201}
    assert hasher.peak == HASH_SLOTS and hasher.in_use == 0


async def test_login_for_accounts_without_a_password_costs_one_hash_like_any_refusal(
    api: Api, server: ChatsvcServer
) -> None:
    await create_users(server, "alice")
    made = await api.request("POST", "/sidecar/v1/users", json={"username": "hosted"}, headers={"X-Api-Key": API_KEY})
    assert made.status == 201, made.body
    hasher = server.state.hasher
    answers: dict[str, Any] = {}
    for index, username in enumerate(("hosted", "alice", "nobody")):
        before = hasher.computed
        # A fresh address each time, so no limit is reached.
        resp = await login(api, username, WRONG if username == "alice" else "", f"198.51.100.{index + 10}")
        answers[username] = resp.body
        assert resp.status == 400 and hasher.computed - before == 1, (username, resp.body)
    assert answers["hosted"] == answers["alice"] == answers["nobody"]


async def test_register_rate_per_address(api: Api, server: ChatsvcServer) -> None:
    for i in range(REGISTRATIONS):
        assert (await register(api, f"new{i}", "203.0.113.50")).status == 201
    refused = await register(api, "one-too-many", "203.0.113.50")
    assert_too_many(refused, REGISTER_WINDOW)
    assert "registrations" in refused.body["message"]
    assert (await login(api, "one-too-many", RIGHT, "203.0.113.99")).status == 400
    # Another address registers.
    assert (await register(api, "elsewhere", "203.0.113.51")).status == 201


async def test_limits_set_to_zero_are_off(tmp_path: Path) -> None:
    async with run_chatsvc(make_config(tmp_path, login_failures=0, register_rate=0)) as server:
        api = Api(str(server.make_url("")).rstrip("/"), server.http)
        for i in range(40):
            assert (await register(api, f"many{i}")).status == 201
        for _ in range(40):
            assert (await login(api, "many0", WRONG)).status == 400
        assert (await login(api, "many0", RIGHT)).status == 201


def test_limit_settings_read_from_the_environment() -> None:
    env = {"CHATSVC_LOGIN_FAILURES": "0", "CHATSVC_REGISTER_RATE": "5", "CHATSVC_PROXY_HOPS": "2"}
    config = Config.from_env(env)
    assert (config.login_failures, config.register_rate, config.proxy_hops) == (0, 5, 2)
    defaults = Config.from_env({})
    assert (defaults.login_failures, defaults.register_rate, defaults.proxy_hops) == (10, 30, 0)
    assert defaults.hash_concurrency >= 1
    for bad in ({"CHATSVC_LOGIN_FAILURES": "-1"}, {"CHATSVC_REGISTER_RATE": "many"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Config.from_env(bad)


def test_failure_counters_slide_forget_old_keys_and_stay_bounded() -> None:
    now = [0.0]
    events = RecentEvents(3, 900, max_keys=100, clock=lambda: now[0])
    for at in (0.0, 100.0, 200.0):
        now[0] = at
        events.add("alice")
    now[0] = 300.0
    # Full until the oldest of the last three is 900 s old.
    assert events.full_for("alice") == 600.0 and events.clear_in("alice") == 800.0
    now[0] = 900.5
    assert events.full_for("alice") is None and events.count("alice") == 2

    for i in range(50):
        events.add(f"a{i}")
    now[0] = 2000.0
    events.add("late")
    # Every key whose events are all older than the window went when the next event came.
    assert len(events) == 1
    for i in range(500):
        events.add(f"b{i}")
    # Past the cap, the keys idle longest are forgotten first.
    assert len(events) == 100
    assert events.count("b499") == 1 and events.count("b0") == 0 and events.count("late") == 0


def test_counters_with_limit_zero_keep_nothing() -> None:
    events = RecentEvents(0, 900)
    for _ in range(10):
        events.add("alice")
    assert len(events) == 0 and events.full_for("alice") is None
