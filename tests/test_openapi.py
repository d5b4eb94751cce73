"""GET /openapi.json describes every route, and a live server answers as it says (Schemathesis)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from chatsvc.config import Config
from chatsvc.openapi import openapi_spec
from chatsvc.testing import ChatsvcServer
from tests.conftest import make_config
from tests.helpers import Api

API_KEY = "openapi-test-key"
# Schemathesis examples per operation and the run's time budget: the whole test stays under a minute.
MAX_EXAMPLES = 30
# Generous: on a loaded two-core CI machine the run took over two minutes.
SCHEMATHESIS_TIMEOUT = 300
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)
# Routes that are not part of the HTTP API: python-socketio's endpoint (docs/protocol.md).
NOT_HTTP_API = {"/socket.io/"}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    # Every generated request comes from one address: the login and registration limits would answer most with 429.
    return make_config(tmp_path, api_key=API_KEY, rate_limit=0, login_failures=0, register_rate=0)


def spec_operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in openapi_spec()["paths"].items() for method in item}


def app_operations(server: ChatsvcServer) -> set[tuple[str, str]]:
    found = set()
    for route in server.app.router.routes():
        path = route.resource.canonical if route.resource is not None else None
        # aiohttp adds HEAD beside every GET; the spec describes the GET.
        if path is None or path in NOT_HTTP_API or route.method == "HEAD":
            continue
        found.add((route.method, path))
    return found


async def test_openapi_describes_exactly_the_registered_routes(server: ChatsvcServer) -> None:
    registered = app_operations(server)
    described = spec_operations()
    assert registered - described == set(), "routes missing from chatsvc/openapi.py"
    assert described - registered == set(), "chatsvc/openapi.py describes routes the app does not have"


async def test_openapi_json_is_served_without_login(api: Api) -> None:
    resp = await api.request("GET", "/openapi.json", headers={"Authorization": "Bearer stale"})
    assert resp.status == 200
    assert resp.body == openapi_spec()
    assert resp.body["openapi"].startswith("3.")


async def test_openapi_public_routes_are_marked_public(server: ChatsvcServer) -> None:
    """A route the spec says needs no credentials really has none: it is @public."""
    paths = openapi_spec()["paths"]
    for route in server.app.router.routes():
        path = route.resource.canonical if route.resource is not None else None
        if path in NOT_HTTP_API or route.method == "HEAD" or path is None:
            continue
        operation = paths[path][route.method.lower()]
        public = getattr(route.handler, "chatsvc_public", False)
        assert public == ("security" in operation), (route.method, path)


async def test_openapi_live_server_conforms_under_schemathesis(api: Api, base_url: str, tmp_path: Path) -> None:
    """No 500s, and every status, content type, header and body matches the spec."""
    alice = await api.new_user("alice")
    bob = await api.new_user("bob")
    room = await api.one_to_one(alice, bob)
    await api.post("/friendship/add", {"username": "bob", "reason": "hi"}, alice.token)
    posted = await api.request(
        "POST",
        f"/sidecar/v1/rooms/{room}/messages",
        json={"system": True, "content": "hello"},
        headers={"X-Api-Key": API_KEY},
    )
    assert posted.status == 201
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "1",
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {alice.token}",
        "--header",
        f"X-Api-Key: {API_KEY}",
        # Logout would end alice's token, and every later request would only test the 401 answer.
        "--exclude-path",
        "/user/logout",
        "--request-timeout",
        "10",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(SCHEMATHESIS_TIMEOUT):
            output, _ = await proc.communicate()
    finally:
        # Ended here, not by the garbage collector: its pipes would close under a later test's event loop.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    report = output.decode(errors="replace")
    assert proc.returncode == 0, report[-20000:]
