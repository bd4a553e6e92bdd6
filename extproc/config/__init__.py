"""Config: load and validate the YAML (`load`), the frozen snapshot it resolves to (`model`)."""

from .load import ConfigError, Problem, load_config, parse_config
from .model import Chain, Config, Listener, Provider, RetryPolicy
from .store import ConfigStore

__all__ = [
    "Chain",
    "Config",
    "ConfigError",
    "ConfigStore",
    "Listener",
    "Problem",
    "Provider",
    "RetryPolicy",
    "load_config",
    "parse_config",
]
