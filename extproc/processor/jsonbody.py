"""Find and replace the top-level `model` of a JSON request body without re-serialising it.

Providers must receive the client's body byte for byte except the model name, so
the body is scanned once (which also validates it) and only the span of the
`model` value is replaced on each attempt.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"
#: Top-level keys a request body may have (an API request has a few dozen at most): each costs a
#: Python-level step here, so a body of a million small keys is refused instead of stalling the sidecar.
MAX_TOP_LEVEL_KEYS = 1024


class BodyError(ValueError):
    """The body is not a JSON object this gateway can route."""


@dataclass(frozen=True)
class ModelSpan:
    """Where the model value sits in the body, in bytes.

    When the body has no `model`, `start == end` marks where one is inserted
    (just after the opening brace) and `insert` is set.
    """

    start: int
    end: int
    insert: bool = False
    needs_comma: bool = False


@dataclass(frozen=True)
class ParsedBody:
    model: object  # the value as sent (None when absent)
    span: ModelSpan


def parse(body: bytes) -> ParsedBody:
    """Validate the body as a JSON object and locate its top-level `model`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"the request body is not valid UTF-8 (byte {exc.start})") from None
    index = _skip(text, 0)
    if index >= len(text) or text[index] != "{":
        raise BodyError("the request body must be a JSON object")
    index = _skip(text, index + 1)
    open_brace = index
    model_spans: list[tuple[int, int]] = []
    model = None
    keys = 0
    if index < len(text) and text[index] == "}":
        index += 1
    else:
        while True:
            if index >= len(text) or text[index] != '"':
                raise BodyError(f"invalid JSON: expected a property name at character {index}")
            key, index = json.decoder.scanstring(text, index + 1)
            index = _skip(text, index)
            if index >= len(text) or text[index] != ":":
                raise BodyError(f"invalid JSON: expected ':' at character {index}")
            keys += 1
            if keys > MAX_TOP_LEVEL_KEYS:
                raise BodyError(f"the request body has more than {MAX_TOP_LEVEL_KEYS} top-level keys")
            start = _skip(text, index + 1)
            try:
                value, end = _DECODER.raw_decode(text, start)
            except json.JSONDecodeError as exc:
                raise BodyError(f"invalid JSON: {exc.msg} at character {exc.pos}") from None
            except RecursionError:
                raise BodyError(f"the request body nests deeper than this gateway reads (about {sys.getrecursionlimit()} levels)") from None
            if key == "model":
                model_spans.append((start, end))
                model = value
            del value  # only the model is kept: a body's memory is not held twice
            index = _skip(text, end)
            if index < len(text) and text[index] == ",":
                index = _skip(text, index + 1)
                continue
            if index < len(text) and text[index] == "}":
                index += 1
                break
            raise BodyError(f"invalid JSON: expected ',' or '}}' at character {index}")
    if _skip(text, index) != len(text):
        raise BodyError(f"invalid JSON: extra data after the object at character {index}")
    if len(model_spans) > 1:
        raise BodyError("the request body has more than one 'model' key")
    if model_spans:
        start, end = model_spans[0]
        span = ModelSpan(_byte_offset(text, start), _byte_offset(text, end))
    else:
        position = _byte_offset(text, open_brace)
        span = ModelSpan(position, position, insert=True, needs_comma=keys > 0)
    return ParsedBody(model=model, span=span)


def replace_model(body: bytes, span: ModelSpan, model_name: str) -> bytes:
    """The body with the model value at `span` set to `model_name`."""
    return rewrite_model(body, span, model_name)[0]


def rewrite_model(body: bytes, span: ModelSpan, model_name: str) -> tuple[bytes, ModelSpan]:
    """The body with `model_name` at `span`, and where the model value now sits."""
    value = json.dumps(model_name).encode()
    start = span.start
    if span.insert:
        start += len(b'"model":')
        value = b'"model":' + value + (b"," if span.needs_comma else b"")
        end = start + len(value) - len(b'"model":') - (1 if span.needs_comma else 0)
    else:
        end = start + len(value)
    return body[: span.start] + value + body[span.end :], ModelSpan(start, end)


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


def _byte_offset(text: str, index: int) -> int:
    return index if text.isascii() else len(text[:index].encode("utf-8"))
