"""When an event stream has delivered its first token: the moment a held stream's headers may go on to the client.

Until then an attempt has shown the client nothing and can still be left for
the next provider (`retry_policy.first_token_timeout`) or lose a race
(`hedge_after`). An opening event that carries no content (Anthropic's
`message_start`, `content_block_start` and `ping`; OpenAI's role-only first
chunk; the Responses API's `response.created` and friends) is not a token;
anything else is, an error or an event this module does not understand
included: a stream is never held on a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from ..translator.sse import Event, EventReader

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

    def feed(self, chunk: bytes, end: bool = False) -> bool:
        """True once the stream's first token (or its end, or too much without one) has been seen."""
        self._held += len(chunk)
        if end or self._held > MAX_HELD_BYTES:
            return True
        return any(carries_content(event) for event in self._reader.feed(chunk))


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
