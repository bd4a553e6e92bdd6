"""What every translation pair shares: the translated request, and the client's errors it can raise."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class TranslationError(ValueError):
    """The request cannot be expressed in the provider's API; the message says what to change."""


class InvalidField(TranslationError):
    """A request field of the wrong type or out of range: the client's error, as the client's own API would report it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class BadAnswer(ValueError):
    """A provider's successful answer that says nothing the client's API can carry (no choices, no message, no content):
    the provider's fault, a 502 to the client; the message says what was missing."""


def expect_answer(ok: bool, what: str) -> None:
    if not ok:
        raise BadAnswer(f"the provider's answer had {what}")


#: Anthropic content blocks an answer may carry that hold nothing for a chat.completion's text or tool calls.
ANTHROPIC_SILENT_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def anthropic_blocks(payload: Any) -> list[dict[str, Any]]:
    """A Messages answer's content blocks; BadAnswer when it has none a client could read (only blocks of unknown types)."""
    expect_answer(isinstance(payload, dict), "no JSON object")
    blocks = payload.get("content")
    expect_answer(isinstance(blocks, list) and all(isinstance(block, dict) for block in blocks), "no content")
    known = {"text", "tool_use", *ANTHROPIC_SILENT_BLOCKS}
    expect_answer(not blocks or any(block.get("type") in known for block in blocks), "no content of a known type")
    return blocks


def json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def expect(ok: bool, param: str, expected: str, value: Any) -> None:
    if not ok:
        raise InvalidField(param, f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def body_field(body: bytes, key: str) -> Any:
    """A top-level field of a JSON answer body (an error's `error` or `message`); None when the body is not such JSON."""
    try:
        return json.loads(body).get(key)
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class Request:
    """A translated request: the provider's body, and what of the client's was dropped (by name, or "other")."""

    body: dict[str, Any]
    dropped: tuple[str, ...]
    stream: bool
    include_usage: bool
    path: str | None = None  # the provider's path, when the body decides it (Vertex's streamRawPredict); None: as planned
