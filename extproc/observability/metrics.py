"""The sidecar's Prometheus metrics, in one registry per running sidecar.

Labels carry provider, model and listener names only: never a key, a header
value or request content.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

from ..config import Config
from ..processor.cooldown import ProviderHealth

# `*_created` series double every counter for nothing an operator alerts on.
disable_created_metrics()

_PROCESSING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("extproc_requests", "Client requests by listener, model, the provider that answered last, and status class.", ["listener", "model", "provider", "status_class"], registry=r)
        self.attempts = Counter("extproc_upstream_attempts", "Attempts sent to providers, by provider and outcome (HTTP status or failure kind).", ["provider", "status"], registry=r)
        self.failovers = Counter("extproc_failovers", "Retries that moved a request from one provider to the next.", ["from_provider", "to_provider", "reason"], registry=r)
        self.rate_limited = Counter("extproc_upstream_rate_limited", "429 answers observed, by provider.", ["provider"], registry=r)
        self.cooldowns = Counter("extproc_provider_cooldowns", "Cooldowns started, by provider and reason.", ["provider", "reason"], registry=r)
        self.tokens = Counter("extproc_tokens", "Tokens in successful answers' usage, by the provider that answered, its model, and type (input or output).", ["provider", "model", "type"], registry=r)
        self.remaining = Gauge("extproc_provider_remaining", "What the provider's latest answer said is left (its rate-limit headers), by kind: requests or tokens.", ["provider", "kind"], registry=r)
        self.malformed_rate_limit_headers = Counter("extproc_rate_limit_headers_malformed", "Rate-limit headers that could not be read (ignored), by provider and header.", ["provider", "header"], registry=r)
        self.rejected = Counter("extproc_rejected_requests", "Requests the sidecar answered itself, by reason (error code).", ["reason"], registry=r)
        self.processing = Histogram("extproc_processing_seconds", "Sidecar time per ext_proc message, by phase.", ["phase"], buckets=_PROCESSING_BUCKETS, registry=r)
        self.in_flight = Gauge("extproc_streams_in_flight", "ext_proc streams open now, by level.", ["level"], registry=r)
        self.reloads = Counter("extproc_config_reloads", "Config reloads by result.", ["result"], registry=r)
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
        info = GaugeMetricFamily("extproc_provider_info", "Providers of the current config; status is enabled, cooling_down or error.", labels=["provider", "model", "status"])
        remaining = GaugeMetricFamily("extproc_provider_cooldown_remaining_seconds", "Seconds left before a cooling provider is tried first again.", labels=["provider"])
        config = self.config()
        for provider in config.providers.values():
            left = self.health.remaining(provider.name)
            info.add_metric([provider.name, provider.model, "cooling_down" if left > 0 else "enabled"], 1)
            remaining.add_metric([provider.name], left)
        for error in config.provider_errors:
            info.add_metric([error.name, error.model, "error"], 1)
        yield info
        yield remaining
