"""The credential headers one attempt carries, by the provider's credential kind.

A provider's key goes to that provider only; the client's own credentials go
on only to a provider with `passthrough_auth: true`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..config import Provider
from ..providers import CREDENTIAL_HEADERS, kind_of
from ..providers.kind import bearer
from ..providers.tokens import source_of


def unavailable(provider: Provider) -> str | None:
    """Why a provider whose credential is minted at run time cannot be called now (it has no token); None when it can."""
    source = source_of(provider)
    if source is None or source.problem is None:
        return None
    return f"Provider '{provider.name}' has no credentials ({source.problem}): nothing is sent to it without them."


def credential_headers(provider: Provider, client_values: Mapping[str, str]) -> dict[str, str | None]:
    """Value per credential header for this provider's attempt; None removes the header."""
    if provider.passthrough_auth:
        return {name: client_values.get(name) for name in CREDENTIAL_HEADERS}
    values: dict[str, str | None] = dict.fromkeys(CREDENTIAL_HEADERS)
    kind = kind_of(provider)
    if provider.access_key:
        name, value = kind.credential(provider.access_key)  # the header each kind takes its key in
        values[name] = value
    elif kind.token_source is not None:  # minted at run time (`providers.tokens`): the current one, never waited for
        source = kind.token_source(provider)
        if source is not None and source.token:
            name, value = bearer(source.token)
            values[name] = value
    return values
