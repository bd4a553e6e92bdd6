"""Providers' rate-limit headers: how much budget an answer says is left, and until when.

OpenAI and Azure OpenAI send `x-ratelimit-remaining-requests` / `-tokens` with
`x-ratelimit-reset-requests` / `-tokens` as durations (`20s`, `1m30s`, `6m0s`,
`120ms`); Anthropic sends `anthropic-ratelimit-requests-remaining` / `-reset`
and the same for `tokens`, `input-tokens` and `output-tokens`, resets as
RFC 3339 times. A value that does not parse is ignored (and reported), never
guessed at.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import datetime
from typing import NamedTuple

#: (remaining header, reset header, kind) for every family, in the order they are read.
_HEADERS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "tokens"),
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset", "requests"),
    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset", "tokens"),
    ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset", "tokens"),
    ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset", "tokens"),
)
#: Every header the gateway reads (Envoy is asked to put them in the access-log entries).
HEADER_NAMES = tuple(name for pair in _HEADERS for name in pair[:2])
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)", re.ASCII)
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class Budget(NamedTuple):
    """The least of what an answer says is left, by kind, and when each resets (seconds from now).

    (A NamedTuple: most answers carry rate-limit headers, so one is built for nearly every request.)
    """

    requests: int | None = None
    requests_reset_s: float | None = None
    tokens: int | None = None
    tokens_reset_s: float | None = None
    malformed: tuple[str, ...] = ()  # headers present but unreadable

    def exhausted_for(self, min_remaining_tokens: int) -> float | None:
        """Seconds until the provider has budget again, when it has none now (None: it has some, or nobody said)."""
        waits = []
        if self.requests is not None and self.requests <= 0:
            waits.append(self.requests_reset_s)
        if self.tokens is not None and self.tokens <= min_remaining_tokens:
            waits.append(self.tokens_reset_s)
        if not waits:
            return None
        known = [wait for wait in waits if wait is not None]
        return max(known) if known else 0.0


@functools.lru_cache(maxsize=1024)  # every answer carries two; the same few values recur
def parse_duration(value: str) -> float | None:
    """OpenAI's reset durations: `20s`, `1m30s`, `6m0s`, `120ms`, `1h2m3.5s`; None if not one."""
    text = value.strip()
    if not text:
        return None
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return total if position == len(text) and position > 0 else None


def parse_reset_time(value: str, now: float) -> float | None:
    """Anthropic's reset times (RFC 3339, `2026-11-29T07:00:30Z`) as seconds from `now`; None if not one."""
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - now, 0.0)


def _count(value: str) -> int | None:
    text = value.strip()
    return int(text) if text.isascii() and text.isdigit() else None  # "²".isdigit() is True: ASCII digits only


def budget(headers: Mapping[str, str], now: float) -> Budget | None:
    """What `headers` say is left; None when they carry no rate-limit header at all."""
    found = False
    malformed: list[str] = []
    left: dict[str, tuple[int, float | None]] = {}
    for remaining_name, reset_name, kind in _HEADERS:
        raw = headers.get(remaining_name)
        if raw is None:
            continue
        found = True
        remaining = _count(raw)
        if remaining is None:
            malformed.append(remaining_name)
            continue
        reset_raw = headers.get(reset_name)
        reset = None
        if reset_raw is not None:
            reset = parse_duration(reset_raw) if reset_name.startswith("x-") else parse_reset_time(reset_raw, now)
            if reset is None:
                malformed.append(reset_name)
        current = left.get(kind)
        if current is None or remaining < current[0]:
            left[kind] = (remaining, reset)
    if not found:
        return None
    requests, tokens = left.get("requests", (None, None)), left.get("tokens", (None, None))
    return Budget(requests[0], requests[1], tokens[0], tokens[1], tuple(malformed))
