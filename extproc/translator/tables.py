"""What the two APIs call the same things: shared by both translation directions and the gateway's own errors."""

from __future__ import annotations

#: Anthropic's `stop_reason` -> OpenAI's `finish_reason`.
FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls", "pause_turn": "stop",
    "refusal": "content_filter",
}  # fmt: skip
#: OpenAI's `finish_reason` -> Anthropic's `stop_reason` (the first Anthropic reason of each, and the legacy `function_call`).
STOP_REASONS = {**{finish: stop for stop, finish in reversed(FINISH_REASONS.items())}, "function_call": "tool_use"}

#: Anthropic's error types whose OpenAI names differ.
OPENAI_ERROR_TYPES = {"overloaded_error": "server_error", "api_error": "server_error"}
#: Anthropic's error type for a status (Anthropic documents one per status).
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 529: "overloaded_error",
}  # fmt: skip

#: An in-band error's type (Anthropic's, OpenAI's `type` or `code`) -> the HTTP status it stands for: Anthropic's
#: documented one (overloaded: 529), and OpenAI's rate-limit and quota codes as 429.
ERROR_TYPE_STATUSES = {
    **{kind: status for status, kind in ANTHROPIC_ERROR_TYPES.items()}, "server_error": 500,
    "rate_limit_exceeded": 429, "insufficient_quota": 429, "tokens": 429, "requests": 429,
}  # fmt: skip


def anthropic_error_type(status: int) -> str:
    return ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error(status: int, message: str) -> dict[str, object]:
    """Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`."""
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
