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
    missing = [field.name for field in dataclasses.fields(AppState) if getattr(state, field.name, None) is None]
    assert missing == []
    assert isinstance(state.fanout, LocalFanout)
    # The socket server the fan-out delivers through is the application's own.
    assert state.fanout._sockets is state.sio
