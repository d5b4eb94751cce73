"""The wiring promises of docs/architecture.md: everything built once by create_app and passed in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from chatsvc.app import create_app
from chatsvc.fanout.local import LocalFanout
from chatsvc.state import STATE, AppState
from tests.conftest import make_config


def test_app_state_is_complete_when_create_app_returns(tmp_path: Path) -> None:
    # Every field is a constructor argument: nothing is filled in later by another module.
    assert all(field.init for field in dataclasses.fields(AppState))
    state = create_app(make_config(tmp_path))[STATE]
    # A field typed "X | None" is a feature off by configuration (webhooks without CHATSVC_WEBHOOK_URL).
    missing = [
        field.name
        for field in dataclasses.fields(AppState)
        if getattr(state, field.name, None) is None and "None" not in str(field.type)
    ]
    assert missing == []
    hooked = create_app(make_config(tmp_path, webhook_url="http://127.0.0.1:9/hook", webhook_secret="s" * 32))[STATE]
    assert hooked.webhooks is not None
    assert isinstance(state.fanout, LocalFanout)
    # The socket server the fan-out delivers through is the application's own.
    assert state.fanout._sockets is state.sio
