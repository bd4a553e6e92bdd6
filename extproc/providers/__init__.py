"""What each provider kind is, in one place per kind: its API, default base_url, credential header and telemetry name.

A kind is the part of `model` before the slash (`openai/gpt-4o`), or what a
Plano `provider_interface` names. Each kind's module declares its `Kind`s;
`KINDS` registers them. A kind nobody declared is an OpenAI-compatible API
that takes `Authorization: Bearer` (most are): adding a kind with its own
rules is its module and one line here (its credential header is then never
forwarded from a client, `CREDENTIAL_HEADERS`), and, for config keys of its own,
their declaration in `config/schema.py` (`schema.Provider`: pydantic validates them, and the running provider is that entry).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from . import anthropic, azure, bedrock, openai, portkey, vertex
from .kind import Kind

if TYPE_CHECKING:
    from ..config.model import Provider

KINDS: dict[str, Kind] = {kind.name: kind for kind in (*openai.KINDS, *anthropic.KINDS, *azure.KINDS, *vertex.KINDS, *bedrock.KINDS, *portkey.KINDS)}
#: Headers that carry a caller's credentials (each kind's own credential header, and those common to LLM APIs):
#: a client's are never forwarded unless a provider asks for them (`passthrough_auth`), so a kind with a header of
#: its own never leaks a client's value of it to another provider.
CREDENTIAL_HEADERS = tuple(dict.fromkeys(("authorization", "x-api-key", "api-key", "x-goog-api-key", *(kind.credential("")[0] for kind in KINDS.values()))))
#: Every provider entry key some kind owns.
KIND_KEYS = frozenset().union(*(kind.config_keys for kind in KINDS.values()))
#: Endpoints only some kinds serve (Anthropic's token counting).
OWN_ENDPOINTS = frozenset().union(*(kind.own_endpoints for kind in KINDS.values()))


@functools.cache  # asked several times a request: an undeclared kind is built once
def kind_named(name: str) -> Kind:
    """The kind called `name`; an undeclared one is OpenAI-compatible with Bearer keys."""
    return KINDS.get(name) or Kind(name)


def kind_of(provider: Provider) -> Kind:
    return kind_named(provider.kind)


def upstream_path(provider: Provider, path: str) -> str:
    """The client's path (and query) as `provider` takes it: its kind's own layout, else under base_url's path."""
    layout = kind_of(provider).path
    return layout(provider, path) if layout is not None else provider.prefixed_path(path)


#: The chat endpoints every kind serves (some, translated); a kind may serve nothing else (`Kind.chat_only`).
CHAT_ROUTES = frozenset({"/v1/chat/completions", "/v1/messages"})


def restricted(path: str) -> str | None:
    """`path`'s route when some providers may not serve it (`serves` says which), else None."""
    route = path.split("?", 1)[0]
    return None if route in CHAT_ROUTES else route


def serves(provider: Provider, route: str) -> bool:
    kind = kind_of(provider)
    if route in OWN_ENDPOINTS:
        return route in kind.own_endpoints
    return kind.chat_only is None or not kind.chat_only(provider)


def why_not(route: str) -> str:
    """Why no provider of a chain serves `route` (for the client's 404)."""
    if route in OWN_ENDPOINTS:
        return "only " + ", ".join(f"{name}/…" for name, kind in KINDS.items() if route in kind.own_endpoints) + " providers do"
    return "Bedrock and Claude on Vertex AI take chat requests only (/v1/chat/completions, /v1/messages)"


__all__ = ["CHAT_ROUTES", "CREDENTIAL_HEADERS", "KINDS", "KIND_KEYS", "OWN_ENDPOINTS", "Kind", "kind_named", "kind_of", "restricted", "serves", "upstream_path", "why_not"]
