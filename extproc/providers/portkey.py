"""Portkey's AI gateway as a provider: OpenAI's API, with Portkey's key in its own header.

Which upstream Portkey calls is Portkey's business: a virtual key or a saved
config, sent as the entry's `headers:` (`x-portkey-virtual-key`, `x-portkey-config`).
"""

from __future__ import annotations

from .kind import Kind


def portkey_key(key: str) -> tuple[str, str]:
    return "x-portkey-api-key", key


KINDS = (Kind("portkey", base_url="https://api.portkey.ai", credential=portkey_key),)
