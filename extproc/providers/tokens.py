"""Credentials minted at run time (OAuth access tokens), kept fresh off the request path.

A kind with a `token_source` hands each of its providers a `TokenSource`;
`prepare` mints the tokens a config needs before it serves (start-up and
every reload), and `keep_fresh` renews each before it expires. A request only
reads the current token: it never waits for one while a valid one exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from . import kind_of

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

#: Bounds of `keep_fresh`'s sleep between looks at the tokens.
_MIN_SLEEP_S = 0.2
_MAX_SLEEP_S = 60.0


class TokenSource(Protocol):
    token: str | None
    renew_at: float  # time.time() after which `refresh` mints a new one

    def refresh(self) -> None:
        """Mint a token when none is held or the held one is due (blocking: run off the event loop)."""


def sources(configs: Iterable[Config]) -> set[TokenSource]:
    found: set[TokenSource] = set()
    for config in configs:
        for provider in config.providers.values():
            make = kind_of(provider).token_source
            source = make(provider) if make is not None else None
            if source is not None:
                found.add(source)
    return found


async def prepare(config: Config) -> None:
    """Mint every token `config` needs (in threads), before it serves a request."""
    await asyncio.gather(*(asyncio.to_thread(source.refresh) for source in sources([config])))


async def keep_fresh(configs: Callable[[], Iterable[Config]]) -> None:
    """Renew each token of the live configs when it is due, for as long as the sidecar runs."""
    while True:
        live = sources(configs())
        now = time.time()
        due = [source for source in live if source.renew_at <= now]
        if due:
            await asyncio.gather(*(asyncio.to_thread(source.refresh) for source in due))
        upcoming = min((source.renew_at for source in live), default=now + _MAX_SLEEP_S)
        await asyncio.sleep(min(max(upcoming - time.time(), _MIN_SLEEP_S), _MAX_SLEEP_S))
