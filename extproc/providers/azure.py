"""Azure OpenAI: OpenAI's API behind an `api-key` header."""

from __future__ import annotations

from .kind import Kind


def api_key(key: str) -> tuple[str, str]:
    return "api-key", key


KINDS = (
    Kind("azure_openai", credential=api_key, telemetry_name="azure.ai.openai", max_tokens_field="max_completion_tokens"),
    Kind("azure", credential=api_key, telemetry_name="azure.ai.openai", max_tokens_field="max_completion_tokens"),
)
