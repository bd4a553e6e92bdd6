"""Translation between the API a client speaks and the API a provider speaks: one module per pair.

Which pair an attempt needs is decided by `for_attempt` (the client's API,
from its path, × the provider's API); an attempt to a provider of the
client's own API shape needs none and costs nothing extra.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from ..apis import ANTHROPIC_MESSAGES, BEDROCK_CONVERSE, OPENAI_CHAT
from ..providers import bedrock, kind_of
from . import anthropic_bedrock, anthropic_openai, openai_anthropic, openai_bedrock, tables
from .base import BadAnswer, InvalidField, Request, TranslationError

if TYPE_CHECKING:  # the config imports this package's pairs (the headers a translation owns): no import back at run time
    from ..config.model import Provider

#: The client paths whose requests are translated, by the API they speak.
CHAT_COMPLETIONS = "/v1/chat/completions"
MESSAGES = "/v1/messages"
#: The content type of AWS's binary event streams (Bedrock's converse-stream).
EVENT_STREAM = "application/vnd.amazon.eventstream"


class AnswerStream(Protocol):
    malformed: int

    def feed(self, data: bytes, end: bool = False) -> bytes: ...


@dataclass(frozen=True)
class Answer:
    """How a provider's answer comes back in the client's API: whole, as an error, or event by event."""

    response: Callable[[Any, str], dict[str, Any]]  # (answer, the provider's model id) -> the client's answer
    error: Callable[[int, bytes, str], dict[str, Any]]  # (status, body, provider name)
    stream: Callable[[bool, str], AnswerStream]  # (include_usage, the provider's model id) -> a translator of the answer's events
    #: The content type of an answer stream from the provider.
    stream_type: str = "text/event-stream"


@dataclass(frozen=True)
class Pair:
    """One direction of translation: how an attempt's request, answer, error and answer stream change."""

    label: str  # client API -> provider API, for metrics
    path: str | None  # the provider's path for the request; None: the client's, laid out by the provider's kind
    headers: Mapping[str, str | None]  # what the attempt sets (None: removes) beyond its credentials
    request: Callable[[Any, Provider, Mapping[str, str]], Request]  # (body, provider, the client's values of headers the config owns)
    #: How the answer comes back in the client's API; None: it is in the client's API already.
    answer: Answer | None = None
    #: The provider kind's own rewrite of the translated body, and the path it decides (`providers.Kind.body_dialect`).
    dialect: Callable[[Provider, dict[str, Any]], tuple[dict[str, Any], str]] | None = None
    #: The request is in the provider's wire format already (path included): the kind's dialect does not apply.
    wire_format: bool = False
    #: Client headers the translation reads (into the body): kept with the originals wherever such a provider is configured.
    reads: frozenset[str] = frozenset()

    @property
    def translates_answer(self) -> bool:
        return self.answer is not None

    def translate(self, payload: Any, provider: Provider, originals: Mapping[str, str]) -> Request:
        """The request for `provider`: translated, then rewritten for its kind's dialect."""
        request = self.request(payload, provider, originals)
        if self.dialect is None:
            return request
        body, path = self.dialect(provider, request.body)
        return replace(request, body=body, path=path)


OPENAI_TO_ANTHROPIC = Pair(
    label=f"{OPENAI_CHAT}->{ANTHROPIC_MESSAGES}",
    path=openai_anthropic.PATH,
    headers=openai_anthropic.REQUEST_HEADERS,
    request=lambda payload, provider, _: openai_anthropic.request(payload, provider.model_name, provider.default_max_tokens),
    answer=Answer(lambda payload, _: openai_anthropic.response(payload), openai_anthropic.error, lambda usage, _: openai_anthropic.StreamTranslator(usage)),
)
ANTHROPIC_TO_OPENAI = Pair(
    label=f"{ANTHROPIC_MESSAGES}->{OPENAI_CHAT}",
    path=anthropic_openai.PATH,
    headers=anthropic_openai.REQUEST_HEADERS,
    request=lambda payload, provider, _: anthropic_openai.request(payload, provider.model_name, kind_of(provider).max_tokens_field),
    answer=Answer(lambda payload, _: anthropic_openai.response(payload), anthropic_openai.error, lambda usage, _: anthropic_openai.StreamTranslator(usage)),
)
OPENAI_TO_BEDROCK = Pair(
    label=f"{OPENAI_CHAT}->{BEDROCK_CONVERSE}",
    path=None,  # the kind's: /model/<id>/converse(-stream)
    headers={"accept-encoding": "identity"},
    request=lambda payload, provider, _: openai_bedrock.request(payload, provider.model_name, provider.default_max_tokens),
    answer=Answer(openai_bedrock.response, openai_bedrock.error, lambda usage, model: openai_bedrock.StreamTranslator(usage, model), stream_type=EVENT_STREAM),
)


def _invoke(payload: Any, provider: Provider, originals: Mapping[str, str]) -> Request:
    stream = isinstance(payload, dict) and payload.get("stream") is True
    return anthropic_bedrock.request(payload, provider.model_name, bedrock.invoke_path(provider, stream), originals.get("anthropic-beta"))


#: (client API, provider API) -> the translation between them.
PAIRS = {
    (OPENAI_CHAT, ANTHROPIC_MESSAGES): OPENAI_TO_ANTHROPIC,
    (ANTHROPIC_MESSAGES, OPENAI_CHAT): ANTHROPIC_TO_OPENAI,
    (OPENAI_CHAT, BEDROCK_CONVERSE): OPENAI_TO_BEDROCK,
    # Claude on Bedrock through InvokeModel: Anthropic's own bodies, so the kind's Converse dialect does not apply.
    (ANTHROPIC_MESSAGES, BEDROCK_CONVERSE): Pair(
        label=f"{ANTHROPIC_MESSAGES}->bedrock_invoke",
        path=None,
        headers={"accept-encoding": "identity", "anthropic-beta": None},  # InvokeModel takes betas in the body
        request=_invoke,
        reads=frozenset({"anthropic-beta"}),
        answer=Answer(anthropic_bedrock.response, anthropic_bedrock.error, lambda usage, model: anthropic_bedrock.StreamTranslator(usage, model), stream_type=EVENT_STREAM),
        wire_format=True,
    ),
}
#: Every header a translation sets or removes: the config owns them, so each attempt restores the client's values.
HEADERS = frozenset(name for pair in PAIRS.values() for name in pair.headers)


def read_for(provider_apis: frozenset[str]) -> frozenset[str]:
    """The client headers translations to these provider APIs read: the config owns them (an attempt needs the client's value)."""
    return frozenset(name for (_, api), pair in PAIRS.items() if api in provider_apis for name in pair.reads)


def _as_sent(payload: Any, provider: Provider, originals: Mapping[str, str]) -> Request:
    if not isinstance(payload, dict):
        raise TranslationError("the request body must be a JSON object")
    return Request(body=payload, dropped=(), stream=payload.get("stream") is True, include_usage=False)


#: A client of the provider's own API whose kind still rewrites the body (Claude on Vertex): no translation, its dialect only.
_SAME_API = {api: Pair(label=f"{api}->{api}", path=None, headers={}, request=_as_sent) for api in (OPENAI_CHAT, ANTHROPIC_MESSAGES)}


def client_api(path: str) -> str | None:
    """The API a client speaks on `path` (query ignored), when it is one the gateway translates."""
    route = path.split("?", 1)[0]
    return OPENAI_CHAT if route == CHAT_COMPLETIONS else ANTHROPIC_MESSAGES if route == MESSAGES else None


def provider_api(provider: Provider) -> str:
    return kind_of(provider).api_for(provider)


def for_attempt(path: str, provider: Provider) -> Pair | None:
    """The translation a request for `path` (the client's) needs to reach `provider`; None when it goes as it is."""
    client = client_api(path)
    if client is None:
        return None
    dialect = kind_of(provider).dialect_for(provider)
    server = provider_api(provider)
    if client == server:
        return replace(_SAME_API[client], dialect=dialect) if dialect is not None else None
    pair = PAIRS[client, server]
    return replace(pair, dialect=dialect) if dialect is not None and not pair.wire_format else pair


def speaks_anthropic(path: str) -> bool:
    """A client of Anthropic's API (`/v1/messages` and what is under it): the gateway's own errors reach it in Anthropic's shape."""
    route = path.split("?", 1)[0]
    return route == MESSAGES or route.startswith(MESSAGES + "/")


__all__ = [
    "ANTHROPIC_TO_OPENAI",
    "CHAT_COMPLETIONS",
    "HEADERS",
    "MESSAGES",
    "OPENAI_TO_ANTHROPIC",
    "BadAnswer",
    "InvalidField",
    "Pair",
    "Request",
    "TranslationError",
    "client_api",
    "for_attempt",
    "provider_api",
    "speaks_anthropic",
    "tables",
]  # fmt: skip
