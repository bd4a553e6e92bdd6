"""OpenAI, and the OpenAI-compatible APIs the gateway knows a base_url for."""

from __future__ import annotations

from .kind import Kind

KINDS = (
    Kind("openai", base_url="https://api.openai.com", max_tokens_field="max_completion_tokens"),
    Kind("mistral", base_url="https://api.mistral.ai", telemetry_name="mistral_ai"),
    Kind("groq", base_url="https://api.groq.com/openai"),
    Kind("deepseek", base_url="https://api.deepseek.com"),
    Kind("xai", telemetry_name="x_ai"),
    Kind("gemini", telemetry_name="gcp.gemini"),
)
