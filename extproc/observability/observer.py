"""Turn Envoy's access-log entries into cooldowns and metrics.

Envoy reports to the sidecar over the gRPC access log service, off the request path:

- every attempt that did not succeed (status >= 400, or no response at all),
  one entry each as the attempt ends, unbatched: that is how a 429 starts a
  cooldown before Envoy even retries;
- every client request, batched: request totals, and the success of the
  attempt that answered.

Where cooldowns are on, an answer that moves its provider's state (429, 529,
5xx) on a chain that does not hedge is shown to the sidecar before Envoy acts
on it (`answered`): its cooldown is known before Envoy retries or the client
holds it, and that is where it is recorded; its entry, when it comes, brings
only its duration. A chain that hedges has no such watch
(`contract.UNWATCHED_TIMINGS`): its entries record every failed attempt. A retry reaches the sidecar anyway (the upstream-level ext_proc
runs on attempts 2, 3, …): it waits, briefly, until the previous attempt's
entry has been applied (`before_retry`), so by the time a client holds an
answer that took a failover, the failover is already counted, and so is an
attempt that failed without an answer. A failover is counted where both of its
ends meet: the failed attempt's entry and the retry's own stream, whichever
comes second.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..contract import UNWATCHED_TIMINGS
from ..processor.cooldown import Outcome, ProviderHealth, classify
from ..processor.ratelimit import Budget
from ..statuses import RATE_LIMIT_STATUSES, succeeded, watched
from .metrics import GatewayMetrics, Labelled

log = logging.getLogger(__name__)

#: Attempt ends that only a chain's timing explains (`first_token_timeout`, `hedge_after`): each gets a log line.
_TIMED_OUT = frozenset({"first_token_timeout", "hedged_out"})
#: Attempts waiting for their other half (a retry, or a failed attempt's entry); oldest dropped first.
_MAX_PENDING = 50000


class LogEntry(NamedTuple):
    """One access-log entry, reduced to what the gateway learns from it.

    (A NamedTuple: one is built for every request; a frozen dataclass of this
    many fields costs four times as much to build.)
    """

    upstream: bool  # a failed attempt (True) or the client's whole request (False)
    request_id: str
    provider: str  # "" when no provider was reached
    status: int
    flags: frozenset[str] = frozenset()
    retry_after_s: float | None = None
    model: str = ""
    listener: str = ""
    attempt: int = 0  # upstream: this attempt's number; downstream: attempts made
    started: float | None = None  # wall clock: when the attempt (upstream) or the request (downstream) started
    provider_model: str = ""  # downstream: the model of the provider that answered
    input_tokens: int | None = None  # downstream: the answer's usage, when it had one
    output_tokens: int | None = None
    usage_skipped: bool = False  # downstream: the answer was too large for Envoy to read its usage
    budget: Budget | None = None  # what the answer's rate-limit headers say is left
    attempt_s: float | None = None  # the (last) attempt: first byte sent to the provider to the last byte received
    first_byte_s: float | None = None  # the (last) attempt: last byte sent to the provider to its first byte back
    timing: str = ""  # upstream: how the chain times its attempts (`contract.TIMING_TAG`)
    group: str = ""  # upstream: the provider's priority group


class CooldownSink(Protocol):
    def publish(self, provider: str, until: float, reason: str) -> None: ...


@dataclass
class Observer:
    health: ProviderHealth
    metrics: GatewayMetrics
    #: Where cooldowns started here are shared with other replicas (Redis), if anywhere.
    shared: CooldownSink | None = None
    #: Whether a provider sends the client's own credential (`passthrough_auth`): its 401 is the client's, not its key's.
    passthrough: Callable[[str], bool] = lambda provider: False
    #: (request id, attempt) -> (provider, kind) of failed attempts whose retry was not seen yet.
    _failed: OrderedDict = field(default_factory=OrderedDict)
    #: (request id, attempt) -> provider of retries seen before their previous attempt's entry.
    _retries: OrderedDict = field(default_factory=OrderedDict)
    _waiting: dict = field(default_factory=dict)
    #: Counter increments and gauge values not yet applied to the metrics (see `batch`).
    _counts: Counter = field(default_factory=Counter)
    _levels: dict = field(default_factory=dict)
    _batching: bool = False

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Observe one access-log message's entries: their counts reach the metrics once, at its end.

        (A labelled metric update costs ~2.5 µs and each request entry made
        seven; a message holds up to ~30 entries, mostly of the same few label sets.)
        """
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            self._apply()

    def observe(self, entry: LogEntry) -> None:
        if entry.upstream:
            self._failed_attempt(entry)
        else:
            self._request(entry)
        if entry.budget is not None and entry.provider:
            self._budget(entry.provider, entry.status, entry.budget)
        self._apply()

    def _count(self, metric: Labelled, *labels: str, amount: int = 1) -> None:
        self._counts[metric, labels] += amount

    def _apply(self) -> None:
        if self._batching:
            return
        for (metric, labels), amount in self._counts.items():
            metric.labels(*labels).inc(amount)
        for (metric, labels), value in self._levels.items():
            metric.labels(*labels).set(value)
        self._counts.clear()
        self._levels.clear()

    def _budget(self, provider: str, status: int, budget: Budget) -> None:
        """An answer's rate-limit headers: the remaining gauges, and a cooldown before the provider has to say 429."""
        for kind, left in (("requests", budget.requests), ("tokens", budget.tokens)):
            if left is not None:
                self._levels[self.metrics.remaining, (provider, kind)] = left
        for header in budget.malformed:
            self._count(self.metrics.malformed_rate_limit_headers, provider, header)
        policy = self.health.policy
        if not policy.rate_limit_headers or status in RATE_LIMIT_STATUSES:  # a 429 (or 529) started its own cooldown
            return
        wait = budget.exhausted_for(policy.min_remaining_tokens)
        if wait is not None:
            self._record(Outcome(provider, status, "rate_limit_headers", wait), count_attempt=False)

    def _failed_attempt(self, entry: LogEntry) -> None:
        if not entry.provider:
            return
        key = (entry.request_id, entry.attempt)
        kind = classify(entry.status, entry.flags, entry.timing, owns_key=not self.passthrough(entry.provider))
        if kind in _TIMED_OUT:
            # (No attempt number: a hedged attempt's entry carries the number of the attempt started last.)
            log.info("request %s: an attempt to provider %s (group %s) ended: %s", entry.request_id, entry.provider, entry.group or "-", kind, extra={"request_id": entry.request_id})
        shown = self.health.policy.enabled and watched(entry.status) and entry.timing not in UNWATCHED_TIMINGS
        if not shown:
            self._record(Outcome(entry.provider, entry.status, kind, entry.retry_after_s, entry.started), duration_s=entry.attempt_s)
        elif entry.attempt_s is not None:  # recorded from its response headers (`answered`); its duration is known only now
            self.metrics.attempt_seconds.labels(entry.provider).observe(entry.attempt_s)
        retry = self._retries.pop((entry.request_id, entry.attempt + 1), None)
        if retry is not None:
            self._count(self.metrics.failovers, entry.provider, retry, kind)
        else:
            _remember(self._failed, key, (entry.provider, kind))
        waiter = self._waiting.pop(key, None)
        if waiter is not None:
            waiter.set()

    def _attempt(self, provider: str, status: int, outcome: str, duration_s: float | None) -> None:
        self._count(self.metrics.attempts, provider, str(status) if status else "none", outcome)
        if duration_s is not None:
            self.metrics.attempt_seconds.labels(provider).observe(duration_s)

    def _record(self, outcome: Outcome, count_attempt: bool = True, duration_s: float | None = None) -> None:
        if count_attempt:
            self._attempt(outcome.provider, outcome.status, outcome.kind, duration_s)
        seconds = self.health.record(outcome)
        if seconds:
            self._count(self.metrics.cooldowns, outcome.provider, outcome.kind)
            if self.shared is not None:
                self.shared.publish(outcome.provider, self.health.clock() + seconds, outcome.kind)

    def answered(self, provider: str, status: int, retry_after_s: float | None) -> None:
        """An attempt's failed answer (`statuses.watched`), seen as Envoy shows it: record its outcome, its only record.

        On a chain that does not hedge Envoy waits for this before it retries
        or passes the answer on; on one that hedges it is shown without waiting.
        """
        if succeeded(status):
            return
        self._record(Outcome(provider, status, classify(status, owns_key=not self.passthrough(provider)), retry_after_s))
        self._apply()

    def invalid_answer(self, provider: str, status: int) -> None:
        """A provider's successful answer that the gateway answered as a 502 (unreadable, empty, too large): its failure."""
        self._record(Outcome(provider, status, "invalid_answer"))
        self._apply()

    def _request(self, entry: LogEntry) -> None:
        for attempt in range(1, entry.attempt + 1):  # the request is over: none of its attempts waits for a retry now
            self._failed.pop((entry.request_id, attempt), None)
        status_class = f"{entry.status // 100}xx" if entry.status else "none"
        self._count(self.metrics.requests, entry.listener, entry.model or "none", entry.provider or "none", status_class)
        if entry.provider and succeeded(entry.status) and entry.flags:
            # Its answer started, then was cut: the provider stopped sending (a timeout) or closed mid-answer (a reset).
            kind = classify(entry.status, entry.flags - _NOT_THE_PROVIDERS)
            if kind != "ok":
                log.info("request %s: the answer of provider %s was cut: %s", entry.request_id, entry.provider, kind, extra={"request_id": entry.request_id})
                self._record(Outcome(entry.provider, entry.status, kind, started=entry.started), duration_s=entry.attempt_s)
                return
        if entry.provider and succeeded(entry.status):
            self._attempt(entry.provider, entry.status, "ok", entry.attempt_s)
            if entry.first_byte_s is not None:
                self.health.observe_latency(entry.provider, entry.first_byte_s)
            self.health.record(Outcome(entry.provider, entry.status, "ok", started=entry.started))
            if entry.usage_skipped:
                self._count(self.metrics.usage_skipped, entry.provider, "answer_too_large")
            for kind, count in (("input", entry.input_tokens), ("output", entry.output_tokens)):
                if count:
                    self._count(self.metrics.tokens, entry.provider, entry.provider_model or entry.model or "none", kind, amount=count)

    async def before_retry(self, request_id: str, attempt: int, timeout_s: float) -> bool:
        """Wait until attempt `attempt - 1` of this request has been observed; False if it was not within `timeout_s`."""
        key = (request_id, attempt - 1)
        if key in self._failed:
            return True
        waiter = self._waiting.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(waiter.wait(), timeout_s)
        except TimeoutError:
            self._waiting.pop(key, None)
            log.warning(
                "attempt %d of request %s started before the failed attempt's log entry arrived (%.0f ms)", attempt - 1, request_id, timeout_s * 1000, extra={"request_id": request_id}
            )
            return False
        return True

    def retry_started(self, request_id: str, attempt: int, provider: str) -> None:
        """Attempt `attempt` (>= 2) of a request goes to `provider`: one end of a failover."""
        previous = self._failed.pop((request_id, attempt - 1), None)
        if previous is not None:
            self.metrics.failovers.labels(previous[0], provider, previous[1]).inc()
        else:
            _remember(self._retries, (request_id, attempt), provider)


#: Response flags of a request that say nothing about its provider (the client went away).
_NOT_THE_PROVIDERS = frozenset({"downstream_connection_termination", "downstream_remote_reset"})


def _remember(pending: OrderedDict, key: tuple, value) -> None:
    pending[key] = value
    if len(pending) > _MAX_PENDING:
        pending.popitem(last=False)
