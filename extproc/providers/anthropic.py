"""Anthropic's Messages API: `x-api-key`, and an API version on every request."""

from __future__ import annotations

from ..apis import ANTHROPIC_MESSAGES
from .kind import Kind

#: The Messages API version sent when the client gives none (Anthropic refuses a request without one).
API_VERSION = "2023-06-01"
VERSION_HEADER = "anthropic-version"


def x_api_key(key: str) -> tuple[str, str]:
    return "x-api-key", key


#: Token counting: Anthropic's own API has it (never translated, never sent to another kind).
COUNT_TOKENS = "/v1/messages/count_tokens"

KINDS = (
    Kind(
        "anthropic", api=ANTHROPIC_MESSAGES, base_url="https://api.anthropic.com", credential=x_api_key,
        default_headers=((VERSION_HEADER, API_VERSION),), own_endpoints=frozenset({COUNT_TOKENS}),
    ),
)  # fmt: skip
