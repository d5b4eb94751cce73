"""The demo chat page: ``GET /`` and its static files under ``/static/``, shipped in the package."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import PurePath

from aiohttp import web

from chatsvc.errors import NotFound
from chatsvc.http.middleware import public

routes = web.RouteTableDef()

CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# The page needs nothing from other origins except images that messages link to; blob: is the preview of a
# picture about to be uploaded.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob: http: https:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


@cache
def _assets() -> dict[str, tuple[bytes, str]]:
    """Every file of the static folder by name: its bytes and content type, read once."""
    assets = {}
    for file in resources.files("chatsvc").joinpath("static").iterdir():
        content_type = CONTENT_TYPES.get(PurePath(file.name).suffix)
        if file.is_file() and content_type is not None and not file.name.startswith("."):
            assets[file.name] = (file.read_bytes(), content_type)
    return assets


def _serve(name: str) -> web.Response:
    found = _assets().get(name)
    if found is None:
        raise NotFound("No such file")
    body, content_type = found
    response = web.Response(
        body=body, content_type=content_type, charset="utf-8" if content_type.startswith("text/") else None
    )
    # Revalidate on every load, so a new version of the page is picked up at once.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@routes.get("/")
@public
async def index(request: web.Request) -> web.Response:
    """The demo chat page."""
    return _serve("index.html")


@routes.get("/static/{name}")
@public
async def static_file(request: web.Request) -> web.Response:
    """A file of the demo page (script, style sheet)."""
    return _serve(request.match_info["name"])
