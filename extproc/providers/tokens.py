"""Credentials minted at run time (OAuth access tokens), kept fresh off the request path.

A kind with a `token_source` hands each of its providers a `TokenSource`;
`prepare` mints the tokens a config needs before it serves (start-up and
every reload), waiting a bounded time: a token endpoint that hangs delays no
start. `keep_fresh` renews each before it expires and keeps trying one that
failed. A request only reads the current token and never waits for one; a
provider without one is refused (`backendauth.unavailable`), never called
unauthenticated, and `/readyz` says why (`problems`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from . import kind_of
from .kind import TokenSource

if TYPE_CHECKING:
    from ..config.model import Config, Provider

log = logging.getLogger(__name__)

#: Bounds of `keep_fresh`'s sleep between looks at the tokens.
_MIN_SLEEP_S = 0.2
_MAX_SLEEP_S = 60.0


#: How long a start or a reload waits for its tokens before it serves anyway.
PREPARE_WAIT_S = 2.0


def minted(provider: Provider) -> bool:
    """Its attempts carry a credential minted at run time (this module's), which changes while the config does not."""
    return not provider.passthrough_auth and not provider.access_key and kind_of(provider).token_source is not None


def source_of(provider: Provider) -> TokenSource | None:
    """The source of its minted credential; None when its attempts carry a key of the config's or the client's own."""
    make = kind_of(provider).token_source
    return make(provider) if make is not None and minted(provider) else None


def sources(configs: Iterable[Config]) -> set[TokenSource]:
    found: set[TokenSource] = set()
    for config in configs:
        for provider in config.providers.values():
            make = kind_of(provider).token_source
            source = make(provider) if make is not None else None
            if source is not None:
                found.add(source)
    return found


async def prepare(config: Config, wait_s: float = PREPARE_WAIT_S) -> None:
    """Mint every token `config` needs (in threads), waiting at most `wait_s` for them: the rest go on in the background."""
    pending = [asyncio.ensure_future(asyncio.to_thread(source.refresh)) for source in sources([config])]
    if pending:
        await asyncio.wait(pending, timeout=wait_s)


def problems(configs: Iterable[Config]) -> dict[str, str]:
    """Each provider whose minted credential is missing, and why (shown by `/readyz`; its requests are refused)."""
    found = {}
    for config in configs:
        for provider in config.providers.values():
            source = source_of(provider)
            if source is not None and source.problem is not None:
                found[f"credential of provider {provider.name}"] = f"none ({source.problem}): its requests are refused with 503"
    return found


async def keep_fresh(configs: Callable[[], Iterable[Config]], notes: dict[str, str]) -> None:
    """Renew each token of the live configs when it is due, for as long as the sidecar runs; `notes` say which are missing."""
    while True:
        _note(problems(configs()), notes)  # before a round that may wait on a token endpoint that hangs
        live = sources(configs())
        now = time.time()
        due = [source for source in live if source.renew_at <= now]
        if due:
            await asyncio.gather(*(asyncio.to_thread(source.refresh) for source in due))
            _note(problems(configs()), notes)
        upcoming = min((source.renew_at for source in live), default=now + _MAX_SLEEP_S)
        await asyncio.sleep(min(max(upcoming - time.time(), _MIN_SLEEP_S), _MAX_SLEEP_S))


def _note(missing: dict[str, str], notes: dict[str, str]) -> None:
    for part in [part for part in notes if part.startswith("credential of provider ") and part not in missing]:
        del notes[part]
    notes.update(missing)
