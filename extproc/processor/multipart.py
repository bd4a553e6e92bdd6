"""The `model` field of a multipart/form-data body (OpenAI's audio endpoints), found without reading the file parts.

Only the boundaries are searched (in C, by `re`) and only the small header
block of each part is decoded: a 25 MB audio upload costs one scan. The body
itself goes to the provider untouched.
"""

from __future__ import annotations

import re
from email.message import Message

_HEAD_END = re.compile(b"\r\n\r\n")  # a part's headers end at the first blank line


class MultipartError(ValueError):
    """The body is not the multipart/form-data its content-type says."""


def boundary(content_type: str) -> bytes | None:
    """The boundary of a `multipart/form-data` content-type; None for any other content-type."""
    header = Message()
    header["content-type"] = content_type
    if header.get_content_type() != "multipart/form-data":
        return None
    value = header.get_param("boundary")
    if not isinstance(value, str) or not value or len(value) > 200:
        raise MultipartError("its content-type has no usable boundary")
    return value.encode("latin-1")


def form_field(body: bytes | memoryview, separator: bytes, name: str) -> str | None:
    """The value of the form field `name` (None when the form has none)."""
    delimiter = re.compile(b"(?:^|\r\n)--" + re.escape(separator))
    match = delimiter.search(body)
    if match is None:
        raise MultipartError("no part starts with its boundary")
    while True:
        start = match.end()
        if bytes(body[start : start + 2]) == b"--":
            return None  # the closing delimiter
        head_end = _HEAD_END.search(body, start)
        if head_end is None:
            raise MultipartError("a part's headers do not end")
        following = delimiter.search(body, head_end.end())
        if following is None:
            raise MultipartError("a part has no closing boundary")
        if _field_name(bytes(body[start : head_end.start()]).decode("latin-1")) == name:
            try:
                return bytes(body[head_end.end() : following.start()]).decode("utf-8")
            except UnicodeDecodeError:
                raise MultipartError(f"the {name!r} field is not UTF-8 text") from None
        match = following


def _field_name(head: str) -> str | None:
    header = Message()
    for line in head.strip("\r\n").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            header["content-disposition"] = value.strip()
            name = header.get_param("name", header="content-disposition")
            return name if isinstance(name, str) else None
    return None
