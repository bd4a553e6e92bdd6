"""Config: load the YAML (`load`), validate its keys (`schema`), resolve them (`resolve`) into the frozen snapshot (`model`)."""

from .load import ConfigError, Problem, load_config, parse_config
from .model import Chain, Config, Cooldown, Listener, Metrics, Provider, ProviderError, RetryPolicy, Tracing
from .schema import json_schema
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
    "json_schema",
    "load_config",
    "parse_config",
]
