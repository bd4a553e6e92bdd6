"""Provider cooldowns: remember who is rate limited or failing, and start chains elsewhere.

Fed with every attempt's outcome (a failed answer's headers, Envoy's
per-attempt access logs); read by the router level when it picks where a
chain starts. State is per sidecar process and keyed by provider name, so it
survives reloads for providers that still exist. The clock is injected so the logic is tested without sleeping.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ..config import Cooldown
from ..contract import FIRST_TOKEN_TIMING, HEDGE_TIMING
from ..statuses import AUTH_STATUSES, FAILED_MIN, RATE_LIMIT_STATUSES, SERVER_ERROR_MIN

#: Outcome kinds that count towards `failure_threshold`.
FAILURE_KINDS = frozenset({"connect_failure", "reset", "timeout", "first_token_timeout", "server_error", "invalid_answer"})
#: A key the gateway owns was refused (401, 403): it will not work again by itself, so its provider cools at once for `max_cooldown`.
AUTH_FAILED = "auth_failed"
#: The share of its weight a member back from a cooldown starts its slow start with.
SLOW_START_FLOOR = 0.1
#: A new time to first byte's share of a provider's average (`routing.strategy: latency`), and how fast the average
#: decays while the provider answers nothing (a slow member left aside is tried again once it looks fast enough).
LATENCY_SAMPLE_WEIGHT = 0.3
LATENCY_DECAY_S = 10.0
#: Outcome kinds whose cooldown only time ends: a 429, or an answer saying no budget is left.
RATE_LIMIT_KINDS = frozenset({"rate_limited", "rate_limit_headers"})


class Outcome(NamedTuple):
    """What one attempt to one provider came to (a NamedTuple: one per request, cheap to build)."""

    provider: str
    status: int  # 0 when no response arrived
    #: "ok", "rate_limited", "rate_limit_headers", "server_error", "client_error", "connect_failure", "reset",
    #: "timeout", "first_token_timeout", "hedged_out", "cancelled", "invalid_answer" (a success its client's API could not carry),
    #: "auth_failed" (a key the gateway owns refused)
    kind: str
    retry_after_s: float | None = None
    #: When the attempt started (the clock's time base); None: just now.
    started: float | None = None


def classify(status: int, response_flags: Iterable[str] = (), timing: str = "", owns_key: bool = True) -> str:
    """What an attempt came to, from its status, Envoy's response flags and how its chain times attempts.

    An attempt without a response that the provider did not cause (the client
    went away, Envoy reset it) is "cancelled": it says nothing about the
    provider; on a chain that hedges, that is an attempt that lost its race
    ("hedged_out"). On a chain with `first_token_timeout`, a timed-out
    attempt had not sent its first token ("first_token_timeout"). A 401 or
    403 is the provider's key refused ("auth_failed") when the gateway owns
    the key, the client's own credential refused ("client_error") when it
    passed the client's through (`owns_key` false).
    """
    flags = set(response_flags)
    if status in RATE_LIMIT_STATUSES:
        return "rate_limited"
    if status in AUTH_STATUSES and owns_key:
        return AUTH_FAILED
    if "upstream_connection_failure" in flags or "upstream_overflow" in flags:
        return "connect_failure"
    reset = "upstream_remote_reset" in flags or "upstream_connection_termination" in flags
    if timing == HEDGE_TIMING and status == 0 and not reset:
        return "hedged_out"
    if "upstream_request_timeout" in flags and timing != HEDGE_TIMING:  # on a hedging chain, the timeout only started the race
        return "first_token_timeout" if timing == FIRST_TOKEN_TIMING else "timeout"
    if "stream_idle_timeout" in flags:  # an answer that stopped coming (a stream stalled after its first token)
        return "timeout"
    if reset:
        return "reset"
    if status == 0:
        return "cancelled"
    if status >= SERVER_ERROR_MIN:
        return "server_error"
    if status >= FAILED_MIN:
        return "client_error"
    return "ok"


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """`retry-after-ms`, else `retry-after` as seconds or an HTTP date; None if absent or unreadable."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(float(milliseconds) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.replace(".", "", 1).isdigit():  # "²".isdigit() is True too
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


@dataclass
class _State:
    rate_limited_until: float = 0.0  # ended by time alone
    failing_until: float = 0.0  # a failure-threshold cooldown
    failing_since: float = 0.0  # when it started
    failures: int = 0  # consecutive, towards failure_threshold
    last_failure: float = 0.0
    #: Half-open: a cooldown ended and no attempt started after it has succeeded yet.
    probation: bool = False
    cooled_at: float = 0.0  # when the latest cooldown started
    trial_until: float = 0.0  # a trial request is out until then; the others start elsewhere
    back_at: float = 0.0  # when its latest trial succeeded: its slow start runs from then
    latency: float = 0.0  # its time to first byte, exponentially weighted (`observe_latency`)
    latency_at: float = 0.0  # when that was last updated (0: never)


def _left(state: _State, now: float) -> float:
    """Seconds of cooldown left (0 when none), whichever kind ends last."""
    return max(state.rate_limited_until - now, state.failing_until - now, 0.0)


class ProviderHealth:
    """Cooldown state per provider.

    The rules: only time ends a rate-limit cooldown (a success, even one that
    finishes later, says nothing about a budget that ran out after it started);
    a success clears the failure count, and a failure-threshold cooldown, only
    when its attempt started after the last failure, or that cooldown, was
    recorded. When a cooldown ends the provider is half-open: one request is
    its trial (`pick_start`), the others start on the next provider until the
    trial succeeds; a failure then cools it again at once. The clock is the
    wall clock by default because attempts' start times come from Envoy's
    (same machine, same clock).
    """

    def __init__(self, policy: Cooldown, clock: Callable[[], float] = time.time):
        self.policy = policy
        self.clock = clock
        self._states: dict[str, _State] = {}

    def record(self, outcome: Outcome) -> float:
        """Update the provider's state; returns the cooldown it starts (0 if none)."""
        state = self._states.setdefault(outcome.provider, _State())
        now = self.clock()
        if outcome.kind == "ok":
            started = math.inf if outcome.started is None else outcome.started
            if started > state.last_failure:
                state.failures = 0
            if started > state.failing_since:
                state.failing_until = 0.0
            if started > state.cooled_at:
                if state.probation:
                    state.back_at = now
                state.probation, state.trial_until = False, 0.0
            return 0.0
        if not self.policy.enabled:
            return 0.0
        if outcome.kind == AUTH_FAILED:
            seconds = self.policy.max_cooldown
            state.failing_until = max(state.failing_until, now + seconds)
            state.failing_since = now
            self._cooled(state, now)
            return seconds
        if outcome.kind in RATE_LIMIT_KINDS:
            seconds = self._seconds(outcome.retry_after_s)
            state.rate_limited_until = max(state.rate_limited_until, now + seconds)
            self._cooled(state, now)
            return seconds
        if outcome.kind in FAILURE_KINDS:
            state.failures += 1
            state.last_failure = now
            if state.failures >= self.policy.failure_threshold or (state.probation and state.trial_until):
                state.failures = 0
                seconds = self._seconds(outcome.retry_after_s)
                state.failing_until = max(state.failing_until, now + seconds)
                state.failing_since = now
                self._cooled(state, now)
                return seconds
        return 0.0

    @staticmethod
    def _cooled(state: _State, now: float) -> None:
        state.probation, state.cooled_at, state.trial_until = True, now, 0.0

    def _seconds(self, retry_after_s: float | None) -> float:
        seconds = self.policy.default_cooldown if retry_after_s is None else retry_after_s
        return max(min(seconds, self.policy.max_cooldown), 0.0)

    def share(self, provider: str, until: float) -> bool:
        """A cooldown another replica started (wall clock `until`); True if it extends this one's."""
        if not self.policy.enabled:
            return False
        state = self._states.setdefault(provider, _State())
        now = self.clock()
        until = min(until, now + self.policy.max_cooldown)
        if until <= state.rate_limited_until:
            return False
        state.rate_limited_until = until
        self._cooled(state, now)
        return True

    def remaining(self, provider: str) -> float:
        state = self._states.get(provider)
        return 0.0 if state is None else _left(state, self.clock())

    def cooling(self, provider: str) -> bool:
        return self.remaining(provider) > 0

    def still_picks(self, provider: str, passed_over: Iterable[str] = ()) -> bool:
        """Whether `pick_start` takes `provider`, without a trial, after `passed_over`: each of those cooling down, and it neither cooling nor half-open."""
        state = self._states.get(provider)
        now = self.clock()
        if state is not None and (state.probation or _left(state, now) > 0):
            return False
        return all(name in self._states and _left(self._states[name], now) > 0 for name in passed_over)

    def pick_start(self, providers: Iterable[str], trial_s: float = 10.0) -> tuple[str | None, float]:
        """The first provider not cooling down, or (None, soonest remaining cooldown).

        A provider whose cooldown just ended is picked by one request, its
        trial, which has `trial_s` (the attempt's timeout) to show how it went;
        meanwhile the others pass it over for a provider that is not on
        trial, and come back to it only when there is none.
        """
        soonest = math.inf
        on_trial = None
        now = self.clock()
        for name in providers:
            state = self._states.get(name)
            if state is None:
                return name, 0.0
            left = _left(state, now)
            if left > 0:
                soonest = min(soonest, left)
            elif not state.probation:
                return name, 0.0
            elif state.trial_until <= now:
                state.trial_until = now + trial_s
                return name, 0.0
            elif on_trial is None:
                on_trial = name
        if on_trial is not None:
            return on_trial, 0.0
        return None, soonest

    def ramped(self, names: tuple[str, ...], weights: tuple[int, ...]) -> tuple[float, ...]:
        """A priority group's `weights` as its members take traffic now (`cooldown.slow_start`).

        A member whose trial passed after a cooldown takes its weight's share
        gradually: a tenth of its weight at once, growing linearly to all of
        it over the window (Envoy's `slow_start_config` is the model), so a
        provider just back is not handed its whole share in one burst.
        """
        window = self.policy.slow_start
        if not window:
            return weights
        now = self.clock()
        ramped = []
        for name, weight in zip(names, weights):
            state = self._states.get(name)
            progress = 1.0 if state is None or not state.back_at else (now - state.back_at) / window
            ramped.append(weight if progress >= 1.0 else weight * max(SLOW_START_FLOOR, progress))
        return tuple(ramped)

    def observe_latency(self, provider: str, seconds: float) -> None:
        """A successful answer's time to first byte, into its provider's exponentially weighted average."""
        state = self._states.setdefault(provider, _State())
        now = self.clock()
        latest = self._decayed(state, now)
        state.latency = seconds if latest is None else LATENCY_SAMPLE_WEIGHT * seconds + (1 - LATENCY_SAMPLE_WEIGHT) * latest
        state.latency_at = now

    def expected_latency(self, provider: str) -> float | None:
        """Its average time to first byte as of now (decayed while it answers nothing); None before its first answer."""
        state = self._states.get(provider)
        return None if state is None else self._decayed(state, self.clock())

    @staticmethod
    def _decayed(state: _State, now: float) -> float | None:
        if not state.latency_at:
            return None
        return state.latency * math.exp(-max(now - state.latency_at, 0.0) / LATENCY_DECAY_S)

    def faster_first(self, order: list[str]) -> list[str]:
        """Power of two choices: of the first two members (drawn by weight), the one expected to answer sooner goes first.

        A member never measured counts as instant, so it is tried and measured;
        a slow one's average decays while it is left aside, so it is tried again.
        """
        first, second = (self.expected_latency(name) or 0.0 for name in order[:2])
        return [order[1], order[0], *order[2:]] if second < first else order

    def retain(self, providers: Iterable[str]) -> None:
        """Forget providers that the new config no longer has."""
        keep = set(providers)
        for name in list(self._states):
            if name not in keep:
                del self._states[name]
