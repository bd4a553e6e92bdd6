"""Translation between the API a client speaks and the API a provider speaks: one module per pair.

Which pair an attempt needs is decided by `for_attempt` (the client's API,
from its path, × the provider's API); an attempt to a provider of the
client's own API shape needs none and costs nothing extra.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..apis import ANTHROPIC_MESSAGES, OPENAI_CHAT
from ..providers import kind_of
from . import anthropic_openai, openai_anthropic, tables
from .base import InvalidField, Request, TranslationError

if TYPE_CHECKING:  # the config imports this package's pairs (the headers a translation owns): no import back at run time
    from ..config import Provider

#: The client paths whose requests are translated, by the API they speak.
CHAT_COMPLETIONS = "/v1/chat/completions"
MESSAGES = "/v1/messages"


class AnswerStream(Protocol):
    malformed: int

    def feed(self, data: bytes, end: bool = False) -> bytes: ...


@dataclass(frozen=True)
class Pair:
    """One direction of translation: how an attempt's request, answer, error and answer stream change."""

    label: str  # client API -> provider API, for metrics
    path: str  # the provider's path for the request
    headers: Mapping[str, str | None]  # what the attempt sets (None: removes) beyond its credentials
    request: Callable[[Any, Provider], Request]
    response: Callable[[Any], dict[str, Any]]
    error: Callable[[int, bytes, str], dict[str, Any]]
    stream: Callable[[bool], AnswerStream]  # include_usage -> a translator of the answer's events


OPENAI_TO_ANTHROPIC = Pair(
    label=f"{OPENAI_CHAT}->{ANTHROPIC_MESSAGES}",
    path=openai_anthropic.PATH,
    headers=openai_anthropic.REQUEST_HEADERS,
    request=lambda payload, provider: openai_anthropic.request(payload, provider.model_name, provider.default_max_tokens),
    response=openai_anthropic.response,
    error=openai_anthropic.error,
    stream=openai_anthropic.StreamTranslator,
)
ANTHROPIC_TO_OPENAI = Pair(
    label=f"{ANTHROPIC_MESSAGES}->{OPENAI_CHAT}",
    path=anthropic_openai.PATH,
    headers=anthropic_openai.REQUEST_HEADERS,
    request=lambda payload, provider: anthropic_openai.request(payload, provider.model_name, kind_of(provider).max_tokens_field),
    response=anthropic_openai.response,
    error=anthropic_openai.error,
    stream=anthropic_openai.StreamTranslator,
)
#: Every header a translation sets or removes: the config owns them, so each attempt restores the client's values.
HEADERS = frozenset({*OPENAI_TO_ANTHROPIC.headers, *ANTHROPIC_TO_OPENAI.headers})


def client_api(path: str) -> str | None:
    """The API a client speaks on `path` (query ignored), when it is one the gateway translates."""
    route = path.split("?", 1)[0]
    return OPENAI_CHAT if route == CHAT_COMPLETIONS else ANTHROPIC_MESSAGES if route == MESSAGES else None


def provider_api(provider: Provider) -> str:
    return kind_of(provider).api


def for_attempt(path: str, provider: Provider) -> Pair | None:
    """The translation a request for `path` (the client's) needs to reach `provider`; None when it goes as it is."""
    client = client_api(path)
    if client is None or client == provider_api(provider):
        return None
    return OPENAI_TO_ANTHROPIC if client == OPENAI_CHAT else ANTHROPIC_TO_OPENAI


#: Endpoints only one API has: a request for one goes only to that API's providers (never translated, never sent raw to another).
_ONE_API_ENDPOINTS = {MESSAGES + "/count_tokens": ANTHROPIC_MESSAGES}


def only_api(path: str) -> str | None:
    """The one provider API that can serve `path`, when only one can (Anthropic's token counting)."""
    return _ONE_API_ENDPOINTS.get(path.split("?", 1)[0])


def speaks_anthropic(path: str) -> bool:
    """A client of Anthropic's API (`/v1/messages` and what is under it): the gateway's own errors reach it in Anthropic's shape."""
    route = path.split("?", 1)[0]
    return route == MESSAGES or route.startswith(MESSAGES + "/")


__all__ = [
    "ANTHROPIC_TO_OPENAI", "CHAT_COMPLETIONS", "HEADERS", "MESSAGES", "OPENAI_TO_ANTHROPIC", "InvalidField", "Pair", "Request",
    "TranslationError", "client_api", "for_attempt", "only_api", "provider_api", "speaks_anthropic", "tables",
]  # fmt: skip
