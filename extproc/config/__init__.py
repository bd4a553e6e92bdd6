"""Config: load and validate the YAML (`load`), the frozen snapshot it resolves to (`model`)."""

from .load import ConfigError, Problem, load_config, parse_config
from .model import Chain, Config, Cooldown, Listener, Metrics, Provider, ProviderError, RetryPolicy, Tracing
from .store import ConfigStore

__all__ = [
    "Chain",
    "Config",
    "ConfigError",
    "ConfigStore",
    "Cooldown",
    "Listener",
    "Metrics",
    "Problem",
    "Provider",
    "ProviderError",
    "RetryPolicy",
    "Tracing",
    "load_config",
    "parse_config",
]
