"""The reference docs stay true: every setting and every HTTP route is documented."""

from __future__ import annotations

import re
from pathlib import Path

from chatsvc.app import create_app
from chatsvc.config import Config

ROOT = Path(__file__).resolve().parent.parent


def test_docs_configuration_lists_every_setting() -> None:
    code = (ROOT / "chatsvc" / "config.py").read_text()
    documented = (ROOT / "docs" / "configuration.md").read_text()
    settings = set(re.findall(r'"(CHATSVC_[A-Z_]+)"', code))
    assert settings, "no settings found in chatsvc/config.py"
    assert sorted(s for s in settings if s not in documented) == []


def test_docs_http_api_lists_every_route(tmp_path: Path) -> None:
    app = create_app(Config(db_path=tmp_path / "chat.db"))
    documented = "\n".join(
        (ROOT / "docs" / name).read_text() for name in ("http-api.md", "sidecar.md", "operations.md")
    )
    # aiohttp writes path parameters as {id}; the docs use the original's :id.
    documented = re.sub(r":(\w+)", r"{\1}", documented)
    paths = {
        route.resource.canonical
        for route in app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and not route.resource.canonical.startswith("/socket.io")
    }
    assert sorted(p for p in paths if p not in documented) == []
