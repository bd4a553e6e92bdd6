"""What one running sidecar shares between its gRPC services and its HTTP endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Config, ConfigStore
from .observability.metrics import GatewayMetrics
from .observability.observer import Observer
from .processor.cooldown import ProviderHealth
from .processor.refusals import Redirects
from .processor.retrybudget import RetryBudgets


@dataclass
class Runtime:
    store: ConfigStore
    health: ProviderHealth
    metrics: GatewayMetrics
    observer: Observer
    serving: bool = False
    #: Each model's requests and retries lately (`retry_policy.retry_budget`).
    budgets: RetryBudgets = field(default_factory=RetryBudgets)
    #: Refusals the upstream level redirected, until the router level takes them up (`processor.refusals`).
    redirects: Redirects = field(default_factory=Redirects)
    #: What keeps this sidecar from doing its job (a dead Envoy, a stopped task), by part.
    problems: dict[str, str] = field(default_factory=dict)
    #: What works less well than it could but does not stop it (shared state away), by part: shown by /readyz, still ready.
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, config: Config) -> Runtime:
        health = ProviderHealth(config.cooldown)
        metrics = GatewayMetrics()
        runtime = cls(ConfigStore(config), health, metrics, Observer(health, metrics))
        runtime.observer.passthrough = lambda name: (provider := runtime.store.current.providers.get(name)) is not None and provider.passthrough_auth
        metrics.watch_providers(lambda: runtime.store.current, health)
        return runtime

    @property
    def ready(self) -> bool:
        """A config is loaded (it always is once running), the gRPC server is serving, and nothing is broken.

        A config with no providers is still ready: it answers every request
        itself (404), which is what its author asked for.
        """
        return self.serving and not self.problems
