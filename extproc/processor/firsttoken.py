"""When an event stream has delivered its first token: the moment a held stream's headers may go on to the client.

Until then an attempt has shown the client nothing and can still be left for
the next provider (`retry_policy.first_token_timeout`) or lose a race
(`hedge_after`). An opening event that carries no content (Anthropic's
`message_start`, `content_block_start` and `ping`; OpenAI's role-only first
chunk; the Responses API's `response.created` and friends) is not a token;
anything else is, an error or an event this module does not understand
included: a stream is never held on a guess. An error that comes first
(`StreamError`: Anthropic's `event: error`, an OpenAI chunk of `error`, the
Responses API's `error` event) is the attempt's failure, not its answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from ..translator.sse import Event, EventReader
from ..translator.tables import ERROR_TYPE_STATUSES

#: Named events that open a stream before its content.
OPENING_EVENTS = frozenset(
    {
        "message_start",
        "content_block_start",
        "ping",
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    }
)
#: A stream that has sent this much without a token is let go: what is held is bounded.
MAX_HELD_BYTES = 65536


@dataclass
class FirstToken:
    """Reads the opening chunks of one event stream until one of its events carries content."""

    _reader: EventReader = field(default_factory=EventReader)
    _held: int = 0
    #: The error event the stream opened with, when the first event past its opening ones was one.
    error: StreamError | None = None

    def feed(self, chunk: bytes, end: bool = False) -> bool:
        """True once the stream's first token (or an error, or its end, or too much without one) has been seen."""
        self._held += len(chunk)
        for event in self._reader.feed(chunk, end):
            if carries_content(event):
                self.error = stream_error(event)
                return True
        return end or self._held > MAX_HELD_BYTES


@dataclass(frozen=True)
class StreamError:
    """An error event a stream sent before any content: the HTTP status it stands for, and its API's error body."""

    status: int
    body: bytes


def stream_error(event: Event) -> StreamError | None:
    """The error `event` is, if it is one: Anthropic's `error` event (its data is the Messages API's error body),
    an OpenAI chunk holding `error` (chat.completions' error body), the Responses API's `error` event."""
    if event.name not in ("", "error"):
        return None
    try:
        data = msgspec.json.decode(event.data)
    except msgspec.DecodeError:
        return None
    if not isinstance(data, dict):
        return None
    detail = data.get("error")
    kinds: tuple[object, ...]
    if isinstance(detail, dict):  # Anthropic's `{"type": "error", "error": {...}}`, OpenAI's `{"error": {...}}`
        kinds, body = (detail.get("code"), detail.get("type")), event.data  # as the provider wrote it
    elif event.name == "error":  # the Responses API: `{"type": "error", "code", "message", "param"}`
        kinds, body = (data.get("code"),), msgspec.json.encode({"error": {key: data.get(key) for key in ("message", "code", "param")}})
    else:
        return None
    status = next((ERROR_TYPE_STATUSES[kind] for kind in kinds if isinstance(kind, str) and kind in ERROR_TYPE_STATUSES), 500)
    return StreamError(status, body)


def carries_content(event: Event) -> bool:
    if event.name:
        return event.name not in OPENING_EVENTS
    try:
        chunk = msgspec.json.decode(event.data)
    except msgspec.DecodeError:
        return True  # `[DONE]`, or something unreadable: not worth holding for
    if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list) or not chunk["choices"] or "error" in chunk:
        return True
    return any(_opens(choice) is False for choice in chunk["choices"])


def _opens(choice: object) -> bool:
    """An OpenAI chunk's choice that only opens the answer: a role, empty content, no finish reason."""
    if not isinstance(choice, dict) or choice.get("finish_reason") is not None:
        return False
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    return all(key == "role" or value in (None, "", []) for key, value in delta.items())
