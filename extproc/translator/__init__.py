"""Translation between the API a client speaks and the API a provider speaks: one module per pair.

Which pair an attempt needs is decided by `for_attempt`; an attempt to a
provider of the client's own API shape needs none and costs nothing extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import openai_anthropic

if TYPE_CHECKING:  # the config imports this package's pairs (the headers a translation owns): no import back at run time
    from ..config import Provider

#: The client paths whose requests are translated for an Anthropic provider.
CHAT_COMPLETIONS = "/v1/chat/completions"


def needs_translation(path: str, provider: Provider) -> bool:
    """True when a request for `path` (the client's) must be translated for `provider`'s API."""
    return provider.kind == "anthropic" and path.split("?", 1)[0] == CHAT_COMPLETIONS


__all__ = ["CHAT_COMPLETIONS", "needs_translation", "openai_anthropic"]
