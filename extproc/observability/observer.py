"""Turn Envoy's access-log entries into cooldowns and metrics.

Envoy reports every upstream attempt (router `upstream_log`) and every client
request (HCM `access_log`) to the sidecar over the gRPC access log service,
after the fact and off the request path: observing costs a request nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ..processor.cooldown import Outcome, ProviderHealth, classify
from .metrics import GatewayMetrics

_MAX_TRACKED_REQUESTS = 10000


@dataclass(frozen=True)
class LogEntry:
    """One access-log entry, reduced to what the gateway learns from it."""

    upstream: bool  # an attempt (True) or the client's whole request (False)
    request_id: str
    provider: str  # "" when no provider was reached
    status: int
    flags: frozenset[str] = frozenset()
    retry_after_s: float | None = None
    model: str = ""
    listener: str = ""


@dataclass
class Observer:
    health: ProviderHealth
    metrics: GatewayMetrics
    _last_failure: OrderedDict = field(default_factory=OrderedDict)

    def observe(self, entry: LogEntry) -> None:
        if entry.upstream:
            self._attempt(entry)
        else:
            self._request(entry)

    def _attempt(self, entry: LogEntry) -> None:
        if not entry.provider:
            return
        kind = classify(entry.status, entry.flags)
        self.metrics.attempts.labels(entry.provider, str(entry.status) if entry.status else kind).inc()
        if kind == "rate_limited":
            self.metrics.rate_limited.labels(entry.provider).inc()
        started = self.health.record(Outcome(entry.provider, entry.status, kind, entry.retry_after_s))
        if started:
            self.metrics.cooldowns.labels(entry.provider, kind).inc()
        previous = self._last_failure.pop(entry.request_id, None)
        if previous is not None:
            self.metrics.failovers.labels(previous[0], entry.provider, previous[1]).inc()
        if kind not in ("ok", "cancelled"):
            self._last_failure[entry.request_id] = (entry.provider, kind)
            if len(self._last_failure) > _MAX_TRACKED_REQUESTS:
                self._last_failure.popitem(last=False)

    def _request(self, entry: LogEntry) -> None:
        self._last_failure.pop(entry.request_id, None)
        status_class = f"{entry.status // 100}xx" if entry.status else "none"
        self.metrics.requests.labels(entry.listener, entry.model or "none", entry.provider or "none", status_class).inc()
