"""Which answers count as what, declared once: the rendered Envoy config (retried statuses, the failed-answer watch,
the failed-attempts log) and the sidecar (outcomes, cooldowns, metrics) derive theirs from these."""

from __future__ import annotations

import re

RATE_LIMITED = 429
#: Anthropic's "overloaded": its 429, for failover and cooldowns alike.
OVERLOADED = 529
RATE_LIMIT_STATUSES = (RATE_LIMITED, OVERLOADED)
#: A refused credential: a key the gateway owns will not work again by itself.
AUTH_STATUSES = (401, 403)
#: An attempt with a status from here up (or none: 0) failed; Envoy's failed-attempts log keeps only those.
FAILED_MIN = 400
SERVER_ERROR_MIN = 500


def succeeded(status: int) -> bool:
    """An attempt that did not fail: the failed-attempts log leaves it out."""
    return 0 < status < FAILED_MIN


def moves_state(status: int) -> bool:
    """An answer that moves its provider's state: a refused key, a rate limit, a server error."""
    return status in AUTH_STATUSES or status in RATE_LIMIT_STATUSES or SERVER_ERROR_MIN <= status < 600


#: `moves_state` as Envoy matches it (the failed-answer watch, on `:status`).
WATCHED_REGEX = "|".join(str(status) for status in sorted({*AUTH_STATUSES, *RATE_LIMIT_STATUSES})) + "|5[0-9][0-9]"
_WATCHED = re.compile(WATCHED_REGEX)


def watched(status: int) -> bool:
    """An answer status Envoy's watch shows the sidecar (where cooldowns are on): `moves_state`, by the rendered regex."""
    return _WATCHED.fullmatch(str(status)) is not None


def retried(configured: tuple[int, ...], owns_keys: bool) -> list[int]:
    """The statuses a chain fails over on: those configured, 529 wherever 429 is, and a refused key the gateway owns
    (a client's own credential refused does not move to the gateway's keys)."""
    statuses = list(configured)
    statuses += [OVERLOADED] if RATE_LIMITED in statuses and OVERLOADED not in statuses else []
    statuses += [status for status in AUTH_STATUSES if status not in statuses] if owns_keys else []
    return statuses
