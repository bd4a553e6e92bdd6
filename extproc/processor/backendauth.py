"""The credential headers one attempt carries, by the provider's credential kind.

A provider's key goes to that provider only; the client's own credentials go
on only to a provider with `passthrough_auth: true`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..config import Provider
from ..config.model import CREDENTIAL_HEADERS


def _bearer(key: str) -> tuple[str, str]:
    return "authorization", f"Bearer {key}"


def _x_api_key(key: str) -> tuple[str, str]:
    return "x-api-key", key


def _api_key(key: str) -> tuple[str, str]:
    return "api-key", key


#: How each provider kind (the part of `model` before the slash) takes its key;
#: every other kind speaks OpenAI's `Authorization: Bearer`.
CREDENTIAL_KINDS = {"anthropic": _x_api_key, "azure_openai": _api_key, "azure": _api_key}


def credential_headers(provider: Provider, client_values: Mapping[str, str]) -> dict[str, str | None]:
    """Value per credential header for this provider's attempt; None removes the header."""
    if provider.passthrough_auth:
        return {name: client_values.get(name) for name in CREDENTIAL_HEADERS}
    values: dict[str, str | None] = dict.fromkeys(CREDENTIAL_HEADERS)
    if provider.access_key:
        name, value = CREDENTIAL_KINDS.get(provider.kind, _bearer)(provider.access_key)
        values[name] = value
    return values
