"""A provider kind: everything the gateway does differently for one vendor's API."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..apis import OPENAI_CHAT

if TYPE_CHECKING:
    from ..config.model import Provider


class TokenSource(Protocol):
    token: str | None  # a bearer token, for a kind that sends one
    renew_at: float  # time.time() after which `refresh` mints a new one

    @property
    def problem(self) -> str | None:
        """Why there is no credential to call the provider with, while there is none; None when there is one."""

    def refresh(self) -> None:
        """Mint a token when none is held or the held one is due (blocking: run off the event loop)."""


class CredentialsMissing(Exception):
    """A provider's credentials could not be found: its attempt is refused, the message saying where they are looked for."""


def without_version(route: str) -> str:
    """The client's route without OpenAI's `/v1`, for a kind whose own path carries its version (Azure deployments, Vertex)."""
    return route[len("/v1") :] if route == "/v1" or route.startswith("/v1/") else route


def bearer(key: str) -> tuple[str, str]:
    return "authorization", f"Bearer {key}"


@dataclass(frozen=True)
class Kind:
    name: str
    #: The API it speaks: a client of another API is translated for it.
    api: str = OPENAI_CHAT
    #: The base_url of a provider that gives none; None: base_url is required.
    base_url: str | None = None
    #: Its key -> the one header that carries it.
    credential: Callable[[str], tuple[str, str]] = bearer
    #: OpenTelemetry's `gen_ai.provider.name` for it; None: the kind's own name.
    telemetry_name: str | None = None
    #: What a request translated to chat.completions calls its token cap (OpenAI's reasoning models refuse `max_tokens`).
    max_tokens_field: str = "max_tokens"
    #: Headers every request to it carries unless the client set them (an API version, say).
    default_headers: tuple[tuple[str, str], ...] = ()
    #: The provider entry's keys only this kind reads (`api_version`, say); another kind's entry may not set them.
    config_keys: frozenset[str] = frozenset()
    #: Endpoints only some kinds serve (`providers.OWN_ENDPOINTS`) that this one does: a request for one goes to such kinds only.
    own_endpoints: frozenset[str] = frozenset()
    #: The entry's own keys as its provider keeps them, defaults filled in (Bedrock: the region from the environment).
    settle: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    #: provider -> True when it takes chat requests only (its paths are per model and operation: Bedrock, Claude on Vertex).
    chat_only: Callable[[Provider], bool] | None = None
    #: Of `config_keys`, those an entry of this kind must set.
    required_keys: tuple[str, ...] = ()
    #: The default base_url from the entry's own keys (a region, say), when it depends on them.
    base_url_of: Callable[[Mapping[str, Any]], str] | None = None
    #: The API a provider of this kind speaks, when it depends on the model (Vertex: Claude speaks Anthropic's).
    api_of: Callable[[Provider], str] | None = None
    #: (provider, the client's path and query) -> the path it is sent; None: under base_url's path.
    path: Callable[[Provider, str], str] | None = None
    #: The model name requests carry, from the one in `model` (Vertex: `google/<model>`).
    wire_model: Callable[[str], str] | None = None
    #: A credential minted at run time (an OAuth token), sent as `Authorization: Bearer`; None: `access_key`.
    token_source: Callable[[Provider], TokenSource | None] | None = None
    #: provider -> a rewrite of its API's body it needs beyond the model (body -> (body, path)); None: as the API has it.
    body_dialect: Callable[[Provider], Callable[[Provider, dict[str, Any]], tuple[dict[str, Any], str]] | None] | None = None
    #: (provider, path, the exact body) -> the headers that sign this attempt (SigV4); None: attempts are not signed.
    sign: Callable[[Provider, str, bytes], list[tuple[str, str]]] | None = None
    #: Headers its attempts set beyond the credential header (a signature's), dropped again for the next attempt.
    sets_headers: frozenset[str] = frozenset()

    def api_for(self, provider: Provider) -> str:
        return self.api_of(provider) if self.api_of is not None else self.api

    def dialect_for(self, provider: Provider) -> Callable[[Provider, dict[str, Any]], tuple[dict[str, Any], str]] | None:
        return self.body_dialect(provider) if self.body_dialect is not None else None

    @property
    def gen_ai_name(self) -> str:
        return self.telemetry_name or self.name
