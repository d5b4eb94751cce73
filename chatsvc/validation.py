"""What request validation needs besides the models: reading a JSON body, and names reserved for the system user.

Every field's limits and error texts come from chatsvc/models.py: bodies and
socket payloads through ``validate``, query strings and path segments through
``validate_params``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from chatsvc.errors import BadRequest
from chatsvc.models import object_payload


async def json_body(request: web.Request) -> Mapping[str, Any]:
    """The request body parsed as a JSON object."""
    try:
        data = await request.json()
    except ValueError:
        raise BadRequest("Request body must be valid JSON") from None
    except UnicodeDecodeError:
        raise BadRequest("Request body must be UTF-8 encoded JSON") from None
    return object_payload(data, "Request body")


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
