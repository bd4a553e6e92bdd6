"""Anthropic Messages (the client's API) to Claude on AWS Bedrock, through InvokeModel: no translation of meaning.

Bedrock serves Claude with Anthropic's own request and answer bodies: the
request loses `model` (it is in the path) and gains `anthropic_version:
bedrock-2023-05-31`; a JSON answer is Anthropic's as it is; a stream comes
as AWS event-stream frames, each carrying one of Anthropic's events
(base64 in `bytes`), and leaves as Anthropic's server-sent events, frame by
frame. Other Bedrock models have no Messages API: such a request is the
client's 400.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from . import sse, tables
from .base import Request, TranslationError, anthropic_blocks, body_field
from .eventstream import FrameReader

ANTHROPIC_VERSION = "bedrock-2023-05-31"
#: The betas InvokeModel takes for Claude, per AWS's "Anthropic Claude Messages API" page; it refuses the request
#: ("invalid beta flag") for any other, and Anthropic's clients send several (Claude Code: `claude-code-20250219`, …).
BETAS = frozenset({
    "computer-use-2024-10-22", "computer-use-2025-01-24", "token-efficient-tools-2025-02-19", "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19", "dev-full-thinking-2025-05-14", "context-1m-2025-08-07", "context-management-2025-06-27",
    "effort-2025-11-24", "tool-search-tool-2025-10-19", "tool-examples-2025-10-29",
})  # fmt: skip


def is_claude(model_id: str) -> bool:
    """A Claude model id, inference profile (`us.anthropic.claude-…`) or ARN naming one."""
    return "anthropic.claude" in model_id


def request(payload: Any, model_id: str, path: str, betas: str | None = None) -> Request:
    """The client's Messages body as InvokeModel takes it, for `path` (`invoke` or `invoke-with-response-stream`).

    `betas`, the client's `anthropic-beta` header, goes in the body as `anthropic_beta`, those Bedrock takes only
    (the others are reported dropped, as "anthropic_beta").
    """
    if not is_claude(model_id):
        raise TranslationError(f"{model_id} is not a Claude model: only Claude on Bedrock serves Anthropic-format requests")
    if not isinstance(payload, dict):
        raise TranslationError("the request body must be a JSON object")
    stream = payload.get("stream") is True
    body = {key: value for key, value in payload.items() if key not in ("model", "stream")}
    body["anthropic_version"] = ANTHROPIC_VERSION
    asked = [name.strip() for name in (betas or "").split(",") if name.strip()]
    kept = [name for name in asked if name in BETAS]
    if kept:
        body["anthropic_beta"] = kept
    dropped = ("anthropic_beta",) if len(kept) < len(asked) else ()
    return Request(body=body, dropped=dropped, stream=stream, include_usage=stream, path=path)


def response(payload: Any, model: str) -> dict[str, Any]:
    """InvokeModel answers Claude's Messages response as Anthropic's API does."""
    anthropic_blocks(payload)
    return payload


def error(status: int, body: bytes, provider: str) -> dict[str, Any]:
    """A Bedrock error (`{"message": …}`) -> Anthropic's error shape, for the same status."""
    message = body_field(body, "message")
    return tables.anthropic_error(status, str(message or f"Provider {provider!r} answered status {status}."))


@dataclass
class StreamTranslator:
    """InvokeModel's event-stream frames -> Anthropic's server-sent events, one input chunk at a time."""

    include_usage: bool = True
    model: str = ""
    malformed: int = 0
    _reader: FrameReader = field(default_factory=FrameReader)
    _stopped: bool = False
    _done: bool = False

    def feed(self, data: bytes, end: bool = False) -> bytes:
        frames, corrupt = self._reader.feed(data)
        out = [self._frame(frame.headers, frame.payload) for frame in frames if not self._done]
        if corrupt:
            self.malformed += 1
            out.append(sse.anthropic_error("the provider sent an event-stream frame the gateway could not read"))
        if end and not self._done and not self._stopped:
            out.append(sse.anthropic_error("the provider's event stream ended before its message_stop event"))
            self._done = True
        return b"".join(out)

    def _frame(self, headers: dict[str, Any], payload: bytes) -> bytes:
        if headers.get(":message-type") == "exception":
            self._done = True
            message = str(body_field(payload, "message") or "")
            kind = "rate_limit_error" if headers.get(":exception-type") == "throttlingException" else "api_error"
            return sse.anthropic_error(message, kind)
        try:
            event = json.loads(base64.b64decode(json.loads(payload)["bytes"]))
            name = str(event["type"])
        except (ValueError, TypeError, KeyError):
            self.malformed += 1
            return sse.anthropic_error("the provider sent an event the gateway could not read")
        self._stopped = self._stopped or name == "message_stop"
        return sse.named_event(name, event)
