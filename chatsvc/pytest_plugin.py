"""The ``chatsvc`` pytest fixture: a running chatsvc per test (see chatsvc/testing.py and docs/testing.md).

Installed with the package through the ``pytest11`` entry point, so any
project that has chatsvc installed can ask for the fixture. Override
``chatsvc_settings`` in a conftest.py to change settings for some tests.
Async fixtures need pytest-asyncio (or a plugin built on it, like pytest-aiohttp).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from chatsvc.testing import ChatsvcServer

try:
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # without pytest-asyncio the fixture cannot run, but collection still works
    async_fixture = pytest.fixture  # type: ignore[assignment]


@pytest.fixture
def chatsvc_settings() -> dict[str, Any]:
    """Settings the ``chatsvc`` fixture passes to run_chatsvc, e.g. ``{"api_key": "k"}``; none by default."""
    return {}


@async_fixture
async def chatsvc(chatsvc_settings: dict[str, Any]) -> AsyncIterator[ChatsvcServer]:
    """A chatsvc server on a free loopback port with a throwaway database, stopped after the test."""
    # Imported here, not at plugin load: every pytest run in the environment loads this module.
    from chatsvc.testing import run_chatsvc

    async with run_chatsvc(**chatsvc_settings) as server:
        yield server
