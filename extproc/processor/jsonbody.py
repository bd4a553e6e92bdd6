"""Find and replace the top-level `model` of a JSON request body without re-serialising it.

Providers must receive the client's body byte for byte except the model name, so
the body is scanned once (which also validates it) and only the span of the
`model` value is replaced on each attempt.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Generator, Iterator
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


#: A large body is scanned in steps of about this many characters; between steps the
#: sidecar's event loop serves other requests (`parse_async`).
STEP_CHARS = 64 * 1024
#: Bodies larger than this are parsed in steps (smaller ones take well under a millisecond).
STEPPED_PARSE_BYTES = 256 * 1024


def parse(body: bytes) -> ParsedBody:
    """Validate the body as a JSON object and locate its top-level `model`."""
    steps = _scan(body)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


async def parse_async(body: bytes) -> ParsedBody:
    """`parse`, yielding to the event loop every `STEP_CHARS`: a 10 MiB body never holds other requests up for long."""
    steps = _scan(body)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        await asyncio.sleep(0)


def _scan(body: bytes) -> Generator[None, None, ParsedBody]:
    """The parser, as steps: it yields whenever it has read about `STEP_CHARS` more.

    Values under the top level are decoded one element (or member) at a time
    and dropped at once: only the model value is kept, so a body costs about
    twice its size (its bytes and its text) at most.
    """
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
    checkpoint = STEP_CHARS
    if index < len(text) and text[index] == "}":
        index += 1
    else:
        while True:
            key, start = _key(text, index)
            keys += 1
            if keys > MAX_TOP_LEVEL_KEYS:
                raise BodyError(f"the request body has more than {MAX_TOP_LEVEL_KEYS} top-level keys")
            if key == "model":
                model, end = _decode(text, start)
                model_spans.append((start, end))
            else:
                end = start
                for end in _skip_value(text, start):
                    if end >= checkpoint:
                        checkpoint = end + STEP_CHARS
                        yield
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


def _key(text: str, index: int) -> tuple[str, int]:
    """An object member's key at `index`; returns it and where its value starts."""
    if index >= len(text) or text[index] != '"':
        raise BodyError(f"invalid JSON: expected a property name at character {index}")
    key, index = json.decoder.scanstring(text, index + 1)
    index = _skip(text, index)
    if index >= len(text) or text[index] != ":":
        raise BodyError(f"invalid JSON: expected ':' at character {index}")
    return key, _skip(text, index + 1)


def _decode(text: str, start: int) -> tuple[object, int]:
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise BodyError(f"invalid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise BodyError(f"the request body nests deeper than this gateway reads (about {sys.getrecursionlimit()} levels)") from None


def _skip_value(text: str, start: int) -> Iterator[int]:
    """Validate the value at `start` without keeping it: an array or object one element at a time.

    Yields the position reached after each element; the last one is the value's end.
    """
    opening = text[start] if start < len(text) else ""
    if opening not in "[{" or not opening:
        yield _decode(text, start)[1]
        return
    closing = "]" if opening == "[" else "}"
    index = _skip(text, start + 1)
    if index < len(text) and text[index] == closing:
        yield index + 1
        return
    while True:
        if opening == "{":
            index = _key(text, index)[1]
        index = _skip(text, _decode(text, index)[1])
        if index < len(text) and text[index] == ",":
            index = _skip(text, index + 1)
            yield index
            continue
        if index < len(text) and text[index] == closing:
            yield index + 1
            return
        raise BodyError(f"invalid JSON: expected ',' or '{closing}' at character {index}")


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
    view = memoryview(body)
    return b"".join((view[: span.start], value, view[span.end :])), ModelSpan(start, end)  # one copy of a large body, not three


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


def _byte_offset(text: str, index: int) -> int:
    return index if text.isascii() else len(text[:index].encode("utf-8"))
