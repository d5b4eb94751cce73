"""chatsvc's container image, built from this checkout and run with podman or docker (issue 17): chat over HTTP
and Socket.IO from the host, history kept across a restart in the volume, a non-root process on a read-only
root file system, a clean stop within the 10 s grace period, and the Compose file's single-instance profile.

Skipped, with the engine's own words, where no engine can run containers. `make image-test` runs these tests on
the image `make image` built, with CHATSVC_CONTAINER_TESTS=required: there such a skip is a failure.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn

import aiohttp
import pytest

from tests.helpers import Api, connect_socket, tool_missing
from tests.process import free_port
from tools import container
from tools.container import Engine, EngineError

# The promises of the issue: the image's size, and how long `stop` may take (the engines' default grace period).
MAX_IMAGE_BYTES = 150_000_000
STOP_GRACE_SECONDS = 10
READY_TIMEOUT = 30.0
COMPOSE_FILE = Path(__file__).resolve().parent.parent / "deploy" / "compose.yaml"


def unavailable(reason: str) -> NoReturn:
    """Skip: this machine cannot run containers. Under `make image-test`, fail instead."""
    if os.environ.get("CHATSVC_CONTAINER_TESTS") == "required":
        pytest.fail(f"the container tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"no container can run here: {reason}")


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The container engine, once it has shown that it can run a container here."""
    if not (shutil.which("podman") or shutil.which("docker")):
        # .ci/run installs podman: in CI its absence is a failure (tests/helpers.py tool_missing).
        tool_missing("the container tests", "neither podman nor docker is installed")
    try:
        found = container.find_engine()
        base = container.base_image(found)
        found.command("run", "--rm", base, "python3", "-c", "pass", timeout=120)
    except EngineError as exc:
        unavailable(str(exc))
    return found


@pytest.fixture(scope="session")
def image(engine: Engine) -> Iterator[str]:
    """chatsvc's image built from this checkout, once per session (the base image is kept in the engine); or the
    image named by CHATSVC_TEST_IMAGE, which `make image-test` sets to the one `make image` built."""
    if given := os.environ.get("CHATSVC_TEST_IMAGE"):
        yield given
        return
    # A tag of this session's own: test runs of other checkouts on the machine share the engine's store.
    tag = unique("chatsvc:test")
    container.build_wheels()
    container.build_image(engine, container.base_image(engine), tag)
    yield tag
    engine.command("rmi", tag, check=False)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def engine_command(engine: Engine, *args: str, check: bool = True, timeout: float = 120) -> str:
    """An engine command, off the event loop (Socket.IO clients may be connected meanwhile)."""
    result = await asyncio.to_thread(engine.command, *args, check=check, timeout=timeout)
    return result.stdout.strip()


async def until_ready(url: str, timeout: float = READY_TIMEOUT) -> None:
    """Poll /readyz from the host until it answers 200 (chatsvc has started and its database takes writes)."""
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


@asynccontextmanager
async def running(engine: Engine, image: str, *extra: str) -> AsyncIterator[tuple[str, str]]:
    """A chatsvc container on a fresh named volume and a loopback port: (its name, its URL); removed after."""
    name, volume, port = unique("chatsvc-test"), unique("chatsvc-test-data"), free_port()
    await engine_command(engine, "volume", "create", volume)
    try:
        await engine_command(
            engine,
            "run",
            "--detach",
            "--name",
            name,
            "--volume",
            f"{volume}:/data",
            "--publish",
            f"127.0.0.1:{port}:3005",
            *extra,
            image,
        )
        url = f"http://127.0.0.1:{port}"
        await wait_until_ready(engine, name, url)
        yield name, url
    finally:
        await engine_command(engine, "rm", "--force", name, check=False)
        await engine_command(engine, "volume", "rm", "--force", volume, check=False)


async def wait_until_ready(engine: Engine, name: str, url: str) -> None:
    try:
        await until_ready(url)
    except TimeoutError:
        logs = await engine_command(engine, "logs", name, check=False)
        pytest.fail(f"{name} did not become ready at {url}/readyz; its log:\n{logs}")


async def test_container_image_is_small_non_root_with_a_data_volume_and_a_health_check(
    engine: Engine, image: str
) -> None:
    size = engine.image_size(image)
    assert size < MAX_IMAGE_BYTES, f"{size / 1e6:.0f} MB"
    config = engine.image_config(image)
    assert config["User"] == "10001:10001"
    assert "/data" in config["Volumes"]  # type: ignore[operator]
    assert "3005/tcp" in config["ExposedPorts"]  # type: ignore[operator]
    assert "CHATSVC_DB=/data/chatsvc.db" in config["Env"]  # type: ignore[operator]
    healthcheck = config["Healthcheck"]
    assert isinstance(healthcheck, dict) and "/readyz" in " ".join(healthcheck["Test"])


async def test_container_chats_keeps_history_across_a_restart_and_stops_cleanly_on_a_read_only_root(
    engine: Engine, image: str
) -> None:
    async with running(engine, image, "--read-only", "--tmpfs", "/tmp") as (name, url):
        # The process is chatsvc itself as PID 1, not root, and not even root may write the root file system.
        status = await engine_command(engine, "exec", name, "cat", "/proc/1/status")
        fields = dict(line.split(":", 1) for line in status.splitlines())
        assert fields["Name"].strip() == "chatsvc"
        assert fields["Uid"].split()[0] == "10001"
        write = await asyncio.to_thread(engine.command, "exec", "--user", "0", name, "touch", "/written", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, write
        # The image's HEALTHCHECK (GET /readyz from inside) passes.
        if engine.name == "podman":
            await engine_command(engine, "healthcheck", "run", name)

        async with aiohttp.ClientSession() as session:
            api = Api(url, session)
            alice = await api.new_user()
            bob = await api.new_user()
            room = await api.one_to_one(alice, bob)
            a = await connect_socket(url, alice.token)
            b = await connect_socket(url, bob.token)
            try:
                await a.join(alice, room)
                await b.join(bob, room)
                ack = await a.call("sendMessage", {"chatroomId": room, "message": {"type": "text", "content": "hi"}})
                assert ack["content"] == "hi", ack
                received = await b.next_chat()
                assert received["message"]["id"] == ack["id"]
            finally:
                await a.disconnect()
                await b.disconnect()

            # SIGTERM: chatsvc exits by itself (status 0), well before the engine would kill it (status 137).
            started = time.monotonic()
            await engine_command(engine, "stop", "--time", str(STOP_GRACE_SECONDS), name)
            stop_seconds = time.monotonic() - started
            exit_code = await engine_command(engine, "inspect", "--format", "{{.State.ExitCode}}", name)
            assert exit_code == "0", await engine_command(engine, "logs", name)
            assert stop_seconds < STOP_GRACE_SECONDS
            print(f"image {engine.image_size(image) / 1e6:.0f} MB; stop took {stop_seconds:.2f} s")

            await engine_command(engine, "start", name)
            await wait_until_ready(engine, name, url)
            # The same token still works: the signing secret, like the messages, lives in the volume.
            history = await api.get("/chat-history/list", alice.token, chatroomId=room)
            assert history.status == 200, history.body
            assert [m["id"] for m in history.body] == [ack["id"]]
            b = await connect_socket(url, bob.token)
            try:
                await b.join(bob, room)
                again = await b.call(
                    "sendMessage", {"chatroomId": room, "message": {"type": "text", "content": "back"}}
                )
                assert again["id"] > ack["id"], again
            finally:
                await b.disconnect()


def compose_command() -> list[str] | None:
    """podman-compose, or docker's compose plugin, whichever is here."""
    if shutil.which("podman"):
        # The test extra installs podman-compose beside pytest.
        if importlib.util.find_spec("podman_compose"):
            return [sys.executable, "-m", "podman_compose"]
        if shutil.which("podman-compose"):
            return ["podman-compose"]
    if shutil.which("docker"):
        return ["docker", "compose"]
    return None


@pytest.fixture
def compose_project(engine: Engine, image: str) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The compose command and its environment for a throwaway project; the project is taken down after."""
    command = compose_command()
    if command is None or (command[0] == "docker") != (engine.name == "docker"):
        pytest.skip(f"no compose command for {engine.name} (podman-compose, or docker compose)")
    env = {
        **os.environ,
        **engine.env,
        "CHATSVC_IMAGE": image,
        "PUBLISH_PORT": str(free_port()),
        # The profile passes the host's key on: the sidecar API is on.
        "CHATSVC_API_KEY": uuid.uuid4().hex,
        "COMPOSE_PROJECT_NAME": unique("chatsvc-test"),
    }
    base = [*command, "--file", str(COMPOSE_FILE), "--project-name", env["COMPOSE_PROJECT_NAME"]]
    yield base, env
    subprocess.run([*base, "--profile", "single", "down", "--volumes"], env=env, capture_output=True, timeout=120)


async def test_container_compose_single_profile_serves_http_sockets_and_the_sidecar_api(
    compose_project: tuple[list[str], dict[str, str]],
) -> None:
    base, env = compose_project
    up = await asyncio.create_subprocess_exec(
        *base,
        "--profile",
        "single",
        "up",
        "--detach",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(up.communicate(), 120)
    assert up.returncode == 0, output.decode(errors="replace")
    url = f"http://127.0.0.1:{env['PUBLISH_PORT']}"
    try:
        await until_ready(url)
    except TimeoutError:
        pytest.fail(f"the single profile did not become ready at {url}: {output.decode(errors='replace')}")
    async with aiohttp.ClientSession() as session:
        api = Api(url, session)
        user = await api.new_user()
        me = await api.get("/user/info", user.token)
        assert me.status == 200 and me.body["username"] == user.username, me.body
        # The host application's way in: the sidecar API with the key, then a socket with the token it mints.
        key = {"X-Api-Key": env["CHATSVC_API_KEY"]}
        made = await api.request("POST", "/sidecar/v1/users", json={"username": "acct-42"}, headers=key)
        assert made.status in (200, 201), made.body
        minted = await api.request("POST", "/sidecar/v1/tokens", json={"username": "acct-42"}, headers=key)
        assert minted.status == 201, minted.body
        socket = await connect_socket(url, minted.body["token"])
        await socket.disconnect()
