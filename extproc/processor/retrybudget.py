"""Retry budgets (`retry_policy.retry_budget`): a model's failovers kept to a share of its requests.

Envoy's own `retry_budget` counts the active requests of the route's
cluster, and a chain's cluster is an aggregate that counts none: its budget
is only ever its floor (docs/envoy-behaviour.md). So the sidecar keeps it:
the router level counts each request of a model, the upstream level each
retry (every attempt after the first, a hedge included), over a sliding
window; a request that starts while the model's retries are over budget is
sent with no retries (`x-envoy-max-retries: 0`), so its provider's failed
answer reaches the client as the provider sent it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: How far back requests and retries are counted, in one-second buckets.
WINDOW_S = 10
#: Retries allowed whatever the share (per second of the window): a quiet model still fails over (Envoy's floor is 3).
MIN_RETRIES_PER_S = 3


@dataclass
class _Window:
    """Counts in one-second buckets over the last `WINDOW_S` seconds."""

    buckets: list[int] = field(default_factory=lambda: [0] * WINDOW_S)
    second: int = 0

    def add(self, now: float) -> None:
        self._advance(now)
        self.buckets[self.second % WINDOW_S] += 1

    def total(self, now: float) -> int:
        self._advance(now)
        return sum(self.buckets)

    def _advance(self, now: float) -> None:
        second = int(now)
        if second - self.second >= WINDOW_S:
            self.buckets = [0] * WINDOW_S
        else:
            for passed in range(self.second + 1, second + 1):
                self.buckets[passed % WINDOW_S] = 0
        self.second = max(self.second, second)


@dataclass
class RetryBudgets:
    """Per model: its requests and retries lately, and whether a new request may retry."""

    clock: Callable[[], float] = time.monotonic
    _requests: dict[str, _Window] = field(default_factory=dict)
    _retries: dict[str, _Window] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the bulk lane's threads count too

    def request(self, model: str, percent: float) -> bool:
        """Count a request of `model`; True when it may fail over (its model's retries are within `percent` of its requests)."""
        with self._lock:
            now = self.clock()
            requests = self._requests.setdefault(model, _Window())
            requests.add(now)
            retries = self._retries[model].total(now) if model in self._retries else 0
            return retries < max(percent / 100 * requests.total(now), MIN_RETRIES_PER_S * WINDOW_S)

    def retried(self, model: str) -> None:
        """Count a retry (an attempt after the first, a hedge included) of a request for `model`."""
        with self._lock:
            self._retries.setdefault(model, _Window()).add(self.clock())
