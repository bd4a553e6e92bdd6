"""A provider kind: everything the gateway does differently for one vendor's API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..apis import OPENAI_CHAT

if TYPE_CHECKING:
    from ..config import Provider


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
    #: (provider, the client's path and query) -> the path it is sent; None: under base_url's path.
    path: Callable[[Provider, str], str] | None = None

    @property
    def gen_ai_name(self) -> str:
        return self.telemetry_name or self.name
