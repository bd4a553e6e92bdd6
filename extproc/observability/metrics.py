"""The sidecar's Prometheus metrics, in one registry per running sidecar.

Labels carry provider, model and listener names only: never a key, a header
value or request content.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

from ..config import Config
from ..processor.cooldown import ProviderHealth

# `*_created` series double every counter for nothing an operator alerts on.
disable_created_metrics()

_ATTEMPT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_PROCESSING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


PROVIDER_STATES = ("enabled", "cooling_down", "error")


class Labelled:
    """A labelled metric whose children are kept in a dict.

    prometheus_client's own `labels()` validates and locks on every call (~4 µs
    here, seven calls per request entry); label values are names from the
    config and status codes, so the dict stays small.
    """

    def __init__(self, metric: Counter | Gauge | Histogram):
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        """The child for these label values (a Counter, Gauge or Histogram child, as `metric.labels` returns)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Labelled(Counter("extproc_requests", "Client requests by listener, model, the provider that answered last, and status class.", ["listener", "model", "provider", "status_class"], registry=r))
        self.attempts = Labelled(Counter("extproc_upstream_attempts", "Attempts sent to providers: HTTP `code` (none without a response) and `outcome` (ok, rate_limited, server_error, client_error, connect_failure, reset, timeout, first_token_timeout, hedged_out, cancelled, invalid_answer: a success the client's API could not carry).", ["provider", "code", "outcome"], registry=r))
        self.attempt_seconds = Labelled(Histogram("extproc_upstream_attempt_duration_seconds", "Attempts from the first byte sent to the provider to the last byte of its answer (streams included), by provider.", ["provider"], buckets=_ATTEMPT_BUCKETS, registry=r))
        self.hedged = Labelled(Counter("extproc_hedged_attempts", "Attempts started beside an unanswered one (retry_policy.hedge_after), by the provider they went to.", ["provider"], registry=r))
        self.failovers = Labelled(Counter("extproc_failovers", "Retries that moved a request from one provider to the next.", ["from_provider", "to_provider", "reason"], registry=r))
        self.cooldowns = Labelled(Counter("extproc_provider_cooldowns", "Cooldowns started, by provider and reason.", ["provider", "reason"], registry=r))
        self.tokens = Labelled(Counter("extproc_tokens", "Tokens in successful answers' usage, by the provider that answered, its model, and type (input or output).", ["provider", "model", "type"], registry=r))
        self.usage_skipped = Labelled(Counter(
            "extproc_token_usage_skipped", "Successful answers whose tokens were not counted, by provider and reason (answer_too_large: over what Envoy buffers).", ["provider", "reason"], registry=r
        ))
        self.remaining = Labelled(Gauge("extproc_provider_remaining", "What the provider's latest answer said is left (its rate-limit headers), by kind: requests or tokens.", ["provider", "kind"], registry=r))
        self.malformed_rate_limit_headers = Labelled(Counter("extproc_rate_limit_headers_malformed", "Rate-limit headers that could not be read (ignored), by provider and header.", ["provider", "header"], registry=r))
        self.translated = Labelled(Counter("extproc_translated_attempts", "Attempts whose request and answer were translated between APIs, by provider and API pair.", ["provider", "api"], registry=r))
        self.dropped_fields = Labelled(Counter("extproc_translation_dropped_fields", "Client request fields with no equivalent in the provider's API: dropped, never sent raw.", ["provider", "field"], registry=r))
        self.malformed_events = Labelled(Counter(
            "extproc_translation_malformed_events", "Events of a translated answer stream that could not be read: each reached the client as an error event.", ["provider"], registry=r
        ))
        self.over_retry_budget = Labelled(Counter(
            "extproc_retry_budget_exhausted", "Requests sent with no retries because their model's retries were over retry_policy.retry_budget, by model.", ["model"], registry=r
        ))
        self.context_window_moves = Labelled(Counter(
            "extproc_context_window_fallbacks", "Requests whose estimated prompt was over every provider's max_input_tokens of their model, sent to a context_window_fallbacks model.", ["model", "fallback"], registry=r
        ))
        self.refusal_fallbacks = Labelled(Counter(
            "extproc_refusal_fallbacks", "Requests a provider refused (a prompt too long, a content policy) sent again to a fallback model, by model, fallback and reason.", ["model", "fallback", "reason"], registry=r
        ))
        self.rejected = Labelled(Counter("extproc_rejected_requests", "Requests the sidecar answered itself, by reason (error code).", ["reason"], registry=r))
        self.reused_answers = Counter(
            "extproc_router_answers_reused", "Requests routed with the answer kept for their shape (no decision made): against extproc_requests_total, the share of steady clients.", registry=r
        )
        self.processing = Labelled(Histogram("extproc_processing_seconds", "Sidecar time per ext_proc message, by phase.", ["phase"], buckets=_PROCESSING_BUCKETS, registry=r))
        self.in_flight = Labelled(Gauge("extproc_streams_in_flight", "ext_proc streams open now, by level.", ["level"], registry=r))
        self.reloads = Labelled(Counter("extproc_config_reloads", "Config reloads by result.", ["result"], registry=r))
        self.last_reload = Gauge("extproc_config_last_reload_timestamp_seconds", "When the config was last (re)loaded or a reload was attempted.", registry=r)
        self.last_reload_success = Gauge("extproc_config_last_reload_success_timestamp_seconds", "When the config was last loaded successfully.", registry=r)

    def watch_providers(self, config: Callable[[], Config], health: ProviderHealth) -> None:
        """Export provider state, computed at scrape time from the current snapshot."""
        self.registry.register(_ProviderCollector(config, health))


class _ProviderCollector:
    def __init__(self, config: Callable[[], Config], health: ProviderHealth):
        self.config = config
        self.health = health

    def describe(self):
        return []

    def collect(self):
        # One series per provider and state, 0 or 1 (as kube-state-metrics does): no series appears or vanishes when a state changes.
        state = GaugeMetricFamily("extproc_provider_state", "Providers of the current config: 1 for the state each is in (enabled, cooling_down, error), 0 for the others.", labels=["provider", "model", "state"])
        remaining = GaugeMetricFamily("extproc_provider_cooldown_remaining_seconds", "Seconds left before a cooling provider is tried first again.", labels=["provider"])
        groups = GaugeMetricFamily(
            "extproc_provider_group_info", "Always 1: the priority group of each provider (its model and rank, \"openai/gpt-4o#1\") and its weight there; join on `provider`.",
            labels=["provider", "model", "group", "weight"],
        )
        latency = GaugeMetricFamily(
            "extproc_provider_latency_seconds",
            "Each provider's time to its first byte lately (an exponentially weighted average of its answers' that decays while it has none): what routing.strategy latency compares.",
            labels=["provider"],
        )
        config = self.config()
        for provider in config.providers.values():
            groups.add_metric([provider.name, provider.model, provider.group, str(provider.weight)], 1)
            seconds = self.health.expected_latency(provider.name)
            if seconds is not None:
                latency.add_metric([provider.name], seconds)
            left = self.health.remaining(provider.name)
            current = "cooling_down" if left > 0 else "enabled"
            for name in PROVIDER_STATES:
                state.add_metric([provider.name, provider.model, name], 1 if name == current else 0)
            remaining.add_metric([provider.name], left)
        for error in config.provider_errors:
            for name in PROVIDER_STATES:
                state.add_metric([error.name, error.model, name], 1 if name == "error" else 0)
        yield state
        yield remaining
        yield groups
        yield latency
