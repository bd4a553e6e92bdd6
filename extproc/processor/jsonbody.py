"""Find and replace the top-level `model` of a JSON request body without re-serialising it.

Providers must receive the client's body byte for byte except the model name, so
the body is walked once at its top level (which also validates it) and only the
span of the `model` value is replaced on each attempt.

Values are skipped by msgspec, in C, without being built: a 10 MiB body costs a
few milliseconds and no copy. Python runs once per top-level key only, and the
number of those is bounded.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass

import msgspec

#: Top-level keys a request body may have (an API request has a few dozen at most): each costs a
#: Python-level step here, so a body of a million small keys is refused instead of stalling the sidecar.
MAX_TOP_LEVEL_KEYS = 256

_VALUE = msgspec.json.Decoder(msgspec.Raw)  # validates one JSON value and builds nothing
_STRING = msgspec.json.Decoder(str)
_WHITESPACE = re.compile(rb"[ \t\n\r]*")
#: After a value msgspec stops at the first byte that is not whitespace and reports "trailing
#: characters" at that byte's position + 1: this is how a value inside the body is skipped, in C.
#: Should a msgspec release word its errors otherwise, `_value_end_slowly` gives the same answers.
_TRAILING = re.compile(r"JSON is malformed: trailing characters \(byte (\d+)\)")
_MALFORMED = re.compile(r"JSON is malformed: (.*) \(byte (\d+)\)")
_PYTHON_JSON = json.JSONDecoder()


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
    model: str | bytes | None  # the model; None when absent or null; its JSON text when it is not a string
    span: ModelSpan | None  # None: the body is not JSON and is never rewritten (a multipart form)


def is_blank(body: bytes | memoryview) -> bool:
    return _WHITESPACE.fullmatch(body) is not None


def parse(body: bytes | memoryview) -> ParsedBody:
    """Validate the body as a JSON object and locate its top-level `model`.

    The whole body must be UTF-8 (JSON is); values other than the keys and
    the model are checked for JSON syntax only and reach the provider as they
    were sent.
    """
    view = memoryview(body)
    try:
        str(view, "utf-8")  # at memory speed for ASCII; the skipping decoder below does not look inside strings
    except UnicodeDecodeError as exc:
        raise BodyError(f"the body is not valid UTF-8 (byte {exc.start})") from None
    index = _skip(body, 0)
    if body[index : index + 1] != b"{":
        raise BodyError("the request body must be a JSON object")
    index = open_brace = _skip(body, index + 1)
    model_spans: list[tuple[int, int]] = []
    keys = 0
    if body[index : index + 1] == b"}":
        index += 1
    else:
        while True:
            keys += 1
            if keys > MAX_TOP_LEVEL_KEYS:
                raise BodyError(f"the request body has more than {MAX_TOP_LEVEL_KEYS} top-level keys")
            if body[index : index + 1] != b'"':
                raise BodyError(f"invalid JSON: expected a property name at byte {index}")
            colon = _value_end(view, index)
            if body[colon : colon + 1] != b":":
                raise BodyError(f"invalid JSON: expected ':' at byte {colon}")
            key = _string(view[index:colon], "a property name")
            start = _skip(body, colon + 1)
            index = _value_end(view, start)
            if key == "model":
                model_spans.append((start, start + len(bytes(view[start:index]).rstrip(b" \t\n\r"))))
            if body[index : index + 1] == b",":
                index = _skip(body, index + 1)
                continue
            if body[index : index + 1] == b"}":
                index += 1
                break
            raise BodyError(f"invalid JSON: expected ',' or '}}' at byte {index}")
    if _skip(body, index) != len(body):
        raise BodyError(f"invalid JSON: extra data after the object at byte {index}")
    if len(model_spans) > 1:
        raise BodyError("the request body has more than one 'model' key")
    if not model_spans:
        return ParsedBody(model=None, span=ModelSpan(open_brace, open_brace, insert=True, needs_comma=keys > 0))
    start, end = model_spans[0]
    value = bytes(view[start:end])
    model = _string(view[start:end], "the model") if value.startswith(b'"') else None if value == b"null" else value
    return ParsedBody(model=model, span=ModelSpan(start, end))


def _value_end(view: memoryview, start: int) -> int:
    """Validate the JSON value at `start` without building it; where the next non-whitespace byte is."""
    try:
        _VALUE.decode(view[start:])
    except RecursionError:
        raise BodyError(f"the request body nests deeper than this gateway reads (about {sys.getrecursionlimit()} levels)") from None
    except msgspec.DecodeError as exc:
        message = str(exc)
        trailing = _TRAILING.fullmatch(message)
        if trailing:
            return start + int(trailing.group(1)) - 1
        malformed = _MALFORMED.fullmatch(message)
        if malformed:
            raise BodyError(f"invalid JSON: {malformed.group(1)} at byte {start + int(malformed.group(2))}") from None
        if message.startswith("Input data was truncated"):
            raise BodyError("invalid JSON: the body ends inside a value") from None
        return _value_end_slowly(view, start)
    raise BodyError("invalid JSON: the body ends before its object is closed")


def _value_end_slowly(view: memoryview, start: int) -> int:
    """`_value_end` without msgspec's error text: Python's decoder builds the value (slower, same answer)."""
    text = str(view[start:], "utf-8")
    try:
        _, end = _PYTHON_JSON.raw_decode(text)
    except RecursionError:
        raise BodyError(f"the request body nests deeper than this gateway reads (about {sys.getrecursionlimit()} levels)") from None
    except json.JSONDecodeError as exc:
        raise BodyError(f"invalid JSON: {exc.msg} at byte {start + len(text[: exc.pos].encode())}") from None
    if end == len(text):
        raise BodyError("invalid JSON: the body ends before its object is closed")
    return _skip(view, start + len(text[:end].encode()))


def _string(view: memoryview, what: str) -> str:
    try:
        return _STRING.decode(view)
    except msgspec.DecodeError as exc:
        raise BodyError(f"{what} is not a valid JSON string ({exc})") from None


@dataclass(frozen=True)
class Patch:
    """Bytes `start:end` of the body become `value`; `span` is where the model sits afterwards."""

    start: int
    end: int
    value: bytes
    span: ModelSpan


def model_patch(token: bytes, span: ModelSpan, model_name: str) -> Patch | None:
    """What sets the model at `span` (now `token`) to `model_name`; None when the body already carries exactly that value."""
    value = json.dumps(model_name).encode()
    if not span.insert and token == value:
        return None
    start = span.start
    if span.insert:
        start += len(b'"model":')
        value = b'"model":' + value + (b"," if span.needs_comma else b"")
        end = start + len(value) - len(b'"model":') - (1 if span.needs_comma else 0)
    else:
        end = start + len(value)
    return Patch(span.start, span.end, value, ModelSpan(start, end))


def _skip(body: bytes | memoryview, index: int) -> int:
    match = _WHITESPACE.match(body, index)  # always matches (possibly empty)
    return match.end() if match else index
