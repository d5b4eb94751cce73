"""Input checks shared by HTTP routes and socket events.

Each check returns the clean value or raises BadRequest with a message that
names the field, so every route and event refuses bad input the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from chatsvc.errors import BadRequest
from chatsvc.models import EMAIL_MAX, EMAIL_RE, MAX_ID, check_range, object_payload

_DIGITS_RE = re.compile(r"^[+-]?[0-9]{1,19}$")


async def json_body(request: web.Request) -> Mapping[str, Any]:
    """The request body parsed as a JSON object."""
    try:
        data = await request.json()
    except ValueError:
        raise BadRequest("Request body must be valid JSON") from None
    except UnicodeDecodeError:
        raise BadRequest("Request body must be UTF-8 encoded JSON") from None
    return object_payload(data, "Request body")


def parse_int(
    raw: str | None, name: str, *, minimum: int = 1, maximum: int = MAX_ID, required: bool = True
) -> int | None:
    """An integer from a query string or path segment."""
    if raw is None or raw.strip() == "":
        if required:
            raise BadRequest(f"{name} is required")
        return None
    if not _DIGITS_RE.match(raw.strip()):
        raise BadRequest(f"{name} must be an integer")
    return check_range(int(raw), name, minimum, maximum)


def query_int(
    request: web.Request, name: str, *, minimum: int = 1, maximum: int = MAX_ID, required: bool = True
) -> int | None:
    """An integer query parameter."""
    return parse_int(request.query.get(name), name, minimum=minimum, maximum=maximum, required=required)


def required_query_int(request: web.Request, name: str, *, minimum: int = 1) -> int:
    """An integer query parameter that must be present."""
    value = query_int(request, name, minimum=minimum)
    assert value is not None
    return value


def path_int(request: web.Request, name: str = "id") -> int:
    """An integer from the route path."""
    value = parse_int(request.match_info.get(name), name)
    assert value is not None
    return value


def text(value: Any, name: str, *, max_length: int, required: bool = True, allow_blank: bool = False) -> str:
    """A string of at most ``max_length`` characters that SQLite can store as UTF-8."""
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if not allow_blank and not value.strip():
        raise BadRequest(f"{name} must not be empty")
    if len(value) > max_length:
        raise BadRequest(f"{name} must be at most {max_length} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name} contains invalid unicode (lone surrogates)") from None
    if "\x00" in value:  # PostgreSQL's text cannot hold it: refused on both engines alike
        raise BadRequest(f"{name} must not contain the NUL character")
    return value


def email(value: Any, name: str = "email") -> str:
    """A well-formed email address."""
    address = text(value, name, max_length=EMAIL_MAX)
    if not EMAIL_RE.match(address):
        raise BadRequest(f"{name} is not a valid email address")
    return address


# Names that would pass for the system user, who sends the service's own messages (chatsvc/admin.py).
RESERVED_NAMES = frozenset({"system"})


def not_reserved(value: str, name: str) -> str:
    """A username or nickName that does not imitate the system user's (any case, spacing or punctuation)."""
    # NFKC folds look-alike forms (full-width letters, ligatures); what is not a letter or digit is dropped,
    # so " System ", "SYSTEM", "S.y.s.t.e.m" and "Sys\u200btem" all read as "system".
    folded = "".join(ch for ch in unicodedata.normalize("NFKC", value).casefold() if ch.isalnum())
    if folded in RESERVED_NAMES:
        raise BadRequest(f"{name} is reserved: it would pass for the system user")
    return value
