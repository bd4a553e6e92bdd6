"""Server-sent events, read incrementally by the event-stream rules, and written.

Both answer-stream translators read their provider's events with `EventReader`:
lines end with CRLF, LF or a lone CR, across chunk boundaries (a CR at the end
of a chunk waits for the next one: it may be the first half of a CRLF), and a
blank line ends an event.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

_LINE_END = re.compile(rb"\r\n|\r|\n")
#: OpenAI's last event of a stream.
DONE = b"data: [DONE]\n\n"


@dataclass
class Event:
    name: str  # the `event:` field; "" when the event has none (OpenAI's chunks)
    data: bytes  # the `data:` lines, joined by LF


@dataclass
class EventReader:
    _pending: bytes = b""
    _name: str = ""
    _data: list[bytes] = field(default_factory=list)

    def feed(self, data: bytes, end: bool = False) -> list[Event]:
        """The events `data` completes; at `end`, also the one a missing final blank line left open."""
        buffer = self._pending + data
        events: list[Event] = []
        position = 0
        for match in _LINE_END.finditer(buffer):
            if match.end() == len(buffer) and match.group() == b"\r" and not end:
                break
            self._line(buffer[position : match.start()], events)
            position = match.end()
        self._pending = buffer[position:]
        if end:
            if self._pending:
                self._line(self._pending, events)
                self._pending = b""
            self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line:
            if self._data:
                events.append(Event(self._name, b"\n".join(self._data)))
            self._name, self._data = "", []
            return
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._name = value.decode("utf-8", "replace")


@dataclass
class Chunks:
    """The `chat.completion.chunk` events of one OpenAI-format answer stream (id and model may be learned from its first event)."""

    id: str = ""
    model: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return data_event({**self._base(), "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

    def usage(self, counts: dict[str, Any]) -> bytes:
        """OpenAI's last chunk with `stream_options.include_usage`: no choices, the usage."""
        return data_event({**self._base(), "choices": [], "usage": counts})

    def _base(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}


def openai_error(message: str, code: str, kind: str = "server_error") -> bytes:
    """An error event in an OpenAI-format stream."""
    return data_event({"error": {"message": message, "type": kind, "code": code}})


def anthropic_error(message: str, kind: str = "api_error") -> bytes:
    """An error event in an Anthropic-format stream."""
    return named_event("error", {"type": "error", "error": {"type": kind, "message": message}})


def data_event(data: dict[str, Any]) -> bytes:
    """An event with only a `data:` line (OpenAI's chunks)."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def named_event(name: str, data: dict[str, Any]) -> bytes:
    """An event with an `event:` name and a `data:` line (Anthropic's events)."""
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
