"""Micro-benchmark: decoding and validating one ``sendMessage`` payload, hand-written checks against the model.

Run with ``python -m bench.validate_send``. "hand-written" is the check the
socket handler made before chatsvc/models.py, kept here as the reference it
must not be slower than; "msgspec model" is what it does now (:func:`chatsvc.models.validate`
on :func:`chatsvc.models.send_message_model`); "pydantic 2" is shown when
installed, for the choice between the two libraries.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from typing import Any

from chatsvc.models import (
    CLIENT_MSG_ID_MAX,
    DEFAULT_MESSAGE_MAX_LENGTH,
    MAX_ID,
    object_payload,
    send_message_model,
    validate,
)
from chatsvc.store.messages import MESSAGE_TYPES

PAYLOAD = {
    "chatroomId": 12,
    "message": {"type": "text", "content": "hello there, how is everyone doing today?"},
    "clientMsgId": "c-1c9e0a4f",
}
NUMBER = 100_000
REPEAT = 7


# The helpers chatsvc/validation.py had for socket payloads, with their call structure kept
# (one function per field, as the handler called them), so the reference costs what it cost.


def _check_range(value: int, name: str, minimum: int, maximum: int) -> int:
    if value < minimum or value > maximum:
        raise ValueError(f"{name} must be an integer between {minimum} and {maximum}")
    return value


def _int_field(
    data: dict[str, Any], name: str, *, minimum: int = 1, maximum: int = MAX_ID, required: bool = True
) -> int | None:
    value = data.get(name)
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer")
    return _check_range(value, name, minimum, maximum)


def _text(value: Any, name: str, *, max_length: int, required: bool = True, allow_blank: bool = False) -> str:
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    if not allow_blank and not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{name} must be at most {max_length} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} contains invalid unicode (lone surrogates)") from None
    return value


def _text_field(data: dict[str, Any], name: str, *, max_length: int) -> str:
    return _text(data.get(name), name, max_length=max_length)


def _message_type(value: Any, name: str) -> int:
    if not isinstance(value, str) or value not in MESSAGE_TYPES:
        raise ValueError(f"{name} must be one of: text, image, file")
    return MESSAGE_TYPES[value]


def _client_msg_id_field(data: dict[str, Any]) -> str | None:
    if data.get("clientMsgId") is None:
        return None
    return _text_field(data, "clientMsgId", max_length=CLIENT_MSG_ID_MAX)


def hand_written(data: Any) -> tuple[Any, ...]:
    """The checks of realtime/events.py's _send_message before the models."""
    payload = object_payload(data)
    chatroom_id = _int_field(payload, "chatroomId")
    message = object_payload(payload.get("message"), "message")
    kind = _message_type(message.get("type"), "message.type")
    content = _text_field(message, "content", max_length=DEFAULT_MESSAGE_MAX_LENGTH)
    client_msg_id = _client_msg_id_field(payload)
    send_user_id = _int_field(payload, "sendUserId", required=False)
    return chatroom_id, kind, content, client_msg_id, send_user_id


def msgspec_model(data: Any) -> tuple[Any, ...]:
    """The checks of realtime/events.py's _send_message now."""
    send: Any = validate(send_message_model(DEFAULT_MESSAGE_MAX_LENGTH), data)
    return send.chatroomId, MESSAGE_TYPES[send.message.type], send.message.content, send.clientMsgId, send.sendUserId


def pydantic_model() -> Callable[[Any], tuple[Any, ...]] | None:
    """The same model in pydantic 2 (strict, as the API is), or None where pydantic is not installed."""
    try:
        from typing import Annotated, Literal

        import pydantic
    except ImportError:
        return None
    from chatsvc.models import MAX_ID

    strict_id = Annotated[int, pydantic.Field(ge=1, le=MAX_ID, strict=True)]

    class OutgoingMessage(pydantic.BaseModel):
        type: Literal["text", "image", "file"]
        content: Annotated[str, pydantic.Field(min_length=1, max_length=DEFAULT_MESSAGE_MAX_LENGTH, strict=True)]

    class SendMessage(pydantic.BaseModel):
        chatroomId: strict_id
        message: OutgoingMessage
        clientMsgId: Annotated[str, pydantic.Field(min_length=1, max_length=CLIENT_MSG_ID_MAX, strict=True)] | None = (
            None
        )
        sendUserId: strict_id | None = None

    def check(data: Any) -> tuple[Any, ...]:
        send = SendMessage.model_validate(data)
        content = send.message.content
        # What a JSON schema cannot say, as the msgspec path checks it too.
        if not content.strip():
            raise ValueError("content must not be empty")
        content.encode("utf-8")
        return send.chatroomId, MESSAGE_TYPES[send.message.type], content, send.clientMsgId, send.sendUserId

    return check


def measure(check: Callable[[Any], tuple[Any, ...]]) -> float:
    """Best time of one call in microseconds."""
    best = min(timeit.repeat(lambda: check(PAYLOAD), number=NUMBER, repeat=REPEAT))
    return best / NUMBER * 1e6


def main() -> None:
    """Print the time of each way, and its ratio to the hand-written checks."""
    candidates: dict[str, Callable[[Any], tuple[Any, ...]]] = {
        "hand-written": hand_written,
        "msgspec model": msgspec_model,
    }
    pydantic_check = pydantic_model()
    if pydantic_check is not None:
        candidates["pydantic 2"] = pydantic_check
    expected = hand_written(PAYLOAD)
    for check in candidates.values():
        assert check(PAYLOAD) == expected, check
    baseline = measure(hand_written)
    for name, check in candidates.items():
        took = baseline if check is hand_written else measure(check)
        print(f"{name:>14}: {took:6.2f} µs per sendMessage payload ({took / baseline:.2f}× hand-written)")


if __name__ == "__main__":
    main()
