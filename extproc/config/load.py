"""Load, validate and resolve the YAML config into a frozen `Config`.

Every problem is reported with the file, the key path and the reason, and all
problems of a file are reported at once, so one `extproc check` run shows
everything to fix.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from .envsubst import UnsetVariable, expand
from .model import (
    CREDENTIAL_HEADERS,
    DEFAULT_ALLOWED_METHODS,
    DEFAULT_ALLOWED_PATHS,
    RETRY_CONDITIONS,
    TRACE_PROTOCOLS,
    Chain,
    Config,
    Cooldown,
    Listener,
    Metrics,
    Provider,
    ProviderError,
    RetryPolicy,
    Tracing,
    frozen_mapping,
)

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024

#: base_url used when a provider of a well-known kind gives none.
KNOWN_BASE_URLS = {
    "openai": "https://api.openai.com",
    "mistral": "https://api.mistral.ai",
    "groq": "https://api.groq.com/openai",
    "deepseek": "https://api.deepseek.com",
    "anthropic": "https://api.anthropic.com",
}

#: Plano's `provider_interface` values -> the API kind they speak here (credentials, telemetry names).
#: Most are OpenAI-compatible APIs; `plano` (Plano's own routing model) has no meaning here.
PLANO_INTERFACES = {
    "openai": "openai", "chatgpt": "openai", "openrouter": "openai", "moonshotai": "openai", "xiaomi": "openai",
    "digitalocean": "openai", "vercel": "openai", "gemini": "openai", "deepseek": "deepseek", "groq": "groq",
    "mistral": "mistral", "claude": "anthropic", "anthropic": "anthropic", "azure_openai": "azure_openai",
}  # fmt: skip
#: Plano keys for features this gateway does not have: refused by name, with why, rather than as unknown keys.
PLANO_ONLY_KEYS = {
    "agents", "filters", "endpoints", "prompt_targets", "prompt_guards", "system_prompt", "ratelimits", "mode",
    "routing", "routing_preferences", "state_storage",
}  # fmt: skip
_OVERRIDES = {"upstream_connect_timeout", "upstream_tls_ca_path"}
_HOST = re.compile(r"^[A-Za-z0-9.-]+(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::\d{1,5})?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"})
_PATH_PREFIX = re.compile(r"^/(?!.*(?:^|/)\.\.?(?:/|$))[^?#\s]*$")
_METHOD = re.compile(r"^[A-Z]+$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    #: A problem of the environment (an unset variable), not of one entry: never skipped over.
    environmental: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """The config cannot be used; `problems` says where and why."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{source}: invalid configuration:\n{lines}")


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, lenient: bool = False) -> Config:
    """Read and resolve a config file; raise `ConfigError` on any problem (see `parse_config`)."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(source, [Problem("", f"cannot read the file: {exc.strerror or exc}")]) from exc
    return parse_config(text, source, os.environ if environ is None else environ, lenient)


def parse_config(text: str, source: str, environ: Mapping[str, str], lenient: bool = False) -> Config:
    """Resolve a config text.

    Strict (the default, and `extproc check`): any problem fails. Lenient (a
    running sidecar loading or reloading): a provider entry that is invalid on
    its own is left out and reported in `Config.provider_errors`; the others
    still load. Problems outside `model_providers[i]` always fail.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [Problem("", f"not valid YAML: {where}{getattr(exc, 'problem', exc)}")]) from exc
    reader = _Reader(environ)
    config = reader.config(data, source)
    if not reader.problems and config is not None:
        return config
    entries = _entry_problems(reader.problems) if lenient else None
    if not entries:
        raise ConfigError(source, reader.problems)
    # Again without the broken entries; what they were is kept as provider errors.
    key = "model_providers" if "model_providers" in data else "llm_providers"
    raw = data[key]
    kept = [item for index, item in enumerate(raw) if index not in entries]
    dropped = {_entry_model(raw[index]) for index in entries}
    retry = _Reader(environ, frozenset(dropped - {item.get("model") for item in kept if isinstance(item, dict)}))
    config = retry.config({**data, key: kept}, source)
    if retry.problems or config is None:
        raise ConfigError(source, reader.problems)
    errors = tuple(
        ProviderError(_entry_label(raw[index], index), _entry_model(raw[index]), "; ".join([*(str(problem) for problem in problems), *_lost_fallbacks(config, _entry_model(raw[index]))]))
        for index, problems in sorted(entries.items())
    )
    return dataclasses.replace(config, provider_errors=errors)


def _lost_fallbacks(config: Config, model: str) -> list[str]:
    """What a left-out entry costs other chains: the models that fell back to its model, now served by nobody."""
    if model in config.models:
        return []
    losers = sorted({provider.model for provider in config.providers.values() if provider.retry_policy and model in provider.retry_policy.fallback_models})
    return [f"{loser} no longer falls back to {model} (no valid provider serves it)" for loser in losers]


_ENTRY_PATH = re.compile(r"^model_providers\[(\d+)\]")


def _entry_problems(problems: list[Problem]) -> dict[int, list[Problem]] | None:
    """Problems by provider entry, or None when any problem is not local to one entry."""
    entries: dict[int, list[Problem]] = {}
    for problem in problems:
        match = _ENTRY_PATH.match(problem.path)
        if match is None or problem.environmental:
            return None
        entries.setdefault(int(match.group(1)), []).append(problem)
    return entries


def _entry_label(item: Any, index: int) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return name if isinstance(name, str) and name else f"model_providers[{index}]"


def _entry_model(item: Any) -> str:
    model = item.get("model") if isinstance(item, dict) else None
    return model if isinstance(model, str) else ""


class _Reader:
    """Walks the parsed YAML, collecting problems instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str], dropped_models: frozenset[str] = frozenset()):
        self.environ = environ
        self.problems: list[Problem] = []
        #: Models of entries left out in lenient mode: a fallback to them is skipped, not an error.
        self.dropped_models = dropped_models
        self.default_ca_file: str | None = None  # Plano's overrides.upstream_tls_ca_path

    def problem(self, path: str, message: str, environmental: bool = False) -> None:
        self.problems.append(Problem(path, message, environmental))

    # -- scalars -----------------------------------------------------------------

    def mapping(self, value: Any, path: str, allowed: set[str], required: set[str] = frozenset()) -> dict | None:
        if not isinstance(value, dict):
            self.problem(path or "(top level)", f"expected a mapping, got {_kind(value)}")
            return None
        for key in value:
            if key not in allowed:
                self.problem(_join(path, str(key)), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for key in sorted(required - value.keys()):
            self.problem(_join(path, key), "required key is missing")
        return value

    def text(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str):
            self.problem(path, f"expected a string, got {_kind(value)}")
            return None
        try:
            return expand(value, self.environ)
        except UnsetVariable as exc:
            self.problem(path, f"environment variable {exc.name} is not set (give a default with ${{{exc.name}:-value}})", environmental=True)
            return None

    def integer(self, value: Any, path: str, low: int, high: int | None = None) -> int | None:
        if isinstance(value, str):
            value = self.text(value, path)
            if value is None:
                return None
            try:
                value = int(value.strip())
            except ValueError:
                self.problem(path, f"expected an integer, got {value!r}")
                return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"expected an integer, got {_kind(value)}")
            return None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.problem(path, f"{value} is out of range: must be {bound}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.problem(path, f"expected true or false, got {_kind(value)}")
            return None
        return value

    def duration(self, value: Any, path: str) -> float | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            raw = self.text(value, path)
            if raw is None:
                return None
            match = _DURATION.match(raw)
            if not match:
                self.problem(path, f"expected a duration like 30s, 500ms or 5m, got {raw!r}")
                return None
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if seconds <= 0:
            self.problem(path, "must be greater than zero")
            return None
        return seconds

    def size(self, value: Any, path: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        else:
            raw = self.text(value, path)
            if raw is None:
                return None
            match = _SIZE.match(raw)
            if not match:
                self.problem(path, f"expected a size like 10MiB or 1048576, got {raw!r}")
                return None
            size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
        if size < 1024:
            self.problem(path, f"{size} bytes is too small: must be at least 1KiB")
            return None
        return size

    def sequence(self, value: Any, path: str) -> list:
        if not isinstance(value, list):
            self.problem(path, f"expected a list, got {_kind(value)}")
            return []
        return value

    # -- sections ----------------------------------------------------------------

    def config(self, data: Any, source: str) -> Config | None:
        if data is None:
            self.problem("", "the file is empty")
            return None
        allowed = {"version", "listeners", "model_providers", "llm_providers", "cooldown", "metrics", "tracing", "model_aliases", "overrides"}
        top = self.mapping({key: value for key, value in data.items() if key not in PLANO_ONLY_KEYS} if isinstance(data, dict) else data, "", allowed, {"listeners"})
        if top is None:
            return None
        for key in sorted(PLANO_ONLY_KEYS & data.keys()):
            self.problem(key, "a Plano feature this gateway does not have (it routes model traffic, with failover): remove it")
        if "llm_providers" in top:  # Plano's older spelling
            if "model_providers" in top:
                self.problem("llm_providers", "give model_providers or llm_providers (Plano's older name), not both")
            else:
                top = {**top, "model_providers": top["llm_providers"]}
        if "model_providers" not in top:
            self.problem("model_providers", "required key is missing")
        overrides = self.overrides(top.get("overrides", {}), "overrides")
        self.default_ca_file = overrides.get("upstream_tls_ca_path")
        cooldown = self.cooldown(top["cooldown"], "cooldown") if "cooldown" in top else Cooldown()
        metrics = self.metrics(top["metrics"], "metrics") if "metrics" in top else Metrics()
        tracing = self.tracing(top.get("tracing", {}), "tracing")
        listeners = [self.listener(item, f"listeners[{i}]", i) for i, item in enumerate(self.sequence(top.get("listeners", []), "listeners"))]
        raw_providers = self.sequence(top.get("model_providers", []), "model_providers")
        providers = [self.provider(item, f"model_providers[{i}]") for i, item in enumerate(raw_providers)]
        valid_listeners = [listener for listener in listeners if listener is not None]
        self.check_listeners(valid_listeners)
        valid = [provider for provider in providers if provider is not None]
        by_name = self.check_providers(valid, providers)
        models: dict[str, list[str]] = {}
        for provider in by_name.values():
            models.setdefault(provider.model, []).append(provider.name)
        # Models of entries that failed validation still count as declared, so a
        # fallback to them is not reported as a second, misleading problem.
        declared = set(models) | self.dropped_models | {item.get("model") for item in raw_providers if isinstance(item, dict) and isinstance(item.get("model"), str)}
        policies = self.model_policies(by_name, models, declared, providers)
        if self.problems:
            return None
        chains = {}
        for model, names in models.items():
            policy = policies.get(model, RetryPolicy())
            tail = [name for fallback in policy.fallback_models for name in models.get(fallback, ())]
            for index, name in enumerate(names):
                ordered = list(dict.fromkeys(names[index:] + tail))
                chains[name] = Chain(tuple(ordered), policy)
        defaults = [provider.name for provider in by_name.values() if provider.default]
        bare: dict[str, list[str]] = {}
        for model in models:
            bare.setdefault(model.partition("/")[2], []).append(model)
        owned = set(CREDENTIAL_HEADERS)
        for provider in by_name.values():
            owned.update(name for name, _ in provider.headers)
        return Config(
            source=source,
            listeners=tuple(valid_listeners),
            providers=frozen_mapping(by_name),
            models=frozen_mapping((model, tuple(names)) for model, names in models.items()),
            chains=frozen_mapping(chains),
            default_provider=defaults[0] if defaults else None,
            owned_headers=frozenset(owned),
            bare_models=frozen_mapping((name, full[0]) for name, full in bare.items() if len(full) == 1 and name not in models),
            cooldown=cooldown or Cooldown(),
            metrics=metrics or Metrics(),
            tracing=tracing or Tracing(),
            aliases=frozen_mapping(self.aliases(top.get("model_aliases", {}), "model_aliases", models, bare)),
            connect_timeout_s=overrides.get("upstream_connect_timeout", 5.0),
        )

    def cooldown(self, value: Any, path: str) -> Cooldown | None:
        raw = self.mapping(value, path, {"enabled", "default_cooldown", "max_cooldown", "failure_threshold", "rate_limit_headers", "min_remaining_tokens", "redis_url"})
        if raw is None:
            return None
        base = Cooldown()
        redis_url = self.text(raw["redis_url"], f"{path}.redis_url") if "redis_url" in raw else None
        if redis_url and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
            self.problem(f"{path}.redis_url", "expected a redis://, rediss:// or unix:// URL")  # never echo it: it may hold a password
        return Cooldown(
            enabled=self.boolean(raw["enabled"], f"{path}.enabled") if "enabled" in raw else base.enabled,
            default_s=self.duration(raw["default_cooldown"], f"{path}.default_cooldown") if "default_cooldown" in raw else base.default_s,
            max_s=self.duration(raw["max_cooldown"], f"{path}.max_cooldown") if "max_cooldown" in raw else base.max_s,
            failure_threshold=self.integer(raw["failure_threshold"], f"{path}.failure_threshold", 1, 1000) if "failure_threshold" in raw else base.failure_threshold,
            rate_limit_headers=self.boolean(raw["rate_limit_headers"], f"{path}.rate_limit_headers") if "rate_limit_headers" in raw else base.rate_limit_headers,
            min_remaining_tokens=self.integer(raw["min_remaining_tokens"], f"{path}.min_remaining_tokens", 0) if "min_remaining_tokens" in raw else base.min_remaining_tokens,
            redis_url=redis_url or None,
        )

    def metrics(self, value: Any, path: str) -> Metrics | None:
        raw = self.mapping(value, path, {"address", "port", "token_usage"})
        if raw is None:
            return None
        return Metrics(
            address=self.text(raw["address"], f"{path}.address") if "address" in raw else Metrics.address,
            port=self.integer(raw["port"], f"{path}.port", 0, 65535) if "port" in raw else Metrics.port,
            token_usage=self.boolean(raw["token_usage"], f"{path}.token_usage") if "token_usage" in raw else Metrics.token_usage,
        )

    def tracing(self, value: Any, path: str) -> Tracing | None:
        """The `tracing:` block, then the standard OTEL_* variables, which win (so a deployment can point at its collector).

        Plano's `random_sampling` (a percentage) and `sampling` (the OTel ratio, 0-1) are both understood.
        """
        raw = self.mapping(value, path, {"endpoint", "protocol", "service_name", "random_sampling", "sampling"})
        if raw is None:
            return None
        env = self.environ
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        endpoint_path = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") else "OTEL_EXPORTER_OTLP_ENDPOINT"
        if not endpoint and "endpoint" in raw:
            endpoint, endpoint_path = self.text(raw["endpoint"], f"{path}.endpoint"), f"{path}.endpoint"
        if endpoint:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                self.problem(endpoint_path, f"expected an http:// or https:// URL with a host, got {endpoint!r}")
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        protocol_path = "OTEL_EXPORTER_OTLP_PROTOCOL"
        if not protocol and "protocol" in raw:
            protocol, protocol_path = self.text(raw["protocol"], f"{path}.protocol"), f"{path}.protocol"
        if protocol and protocol not in TRACE_PROTOCOLS:
            self.problem(protocol_path, f"{protocol!r} is not supported (use {' or '.join(TRACE_PROTOCOLS)})")
        service = env.get("OTEL_SERVICE_NAME") or (self.text(raw["service_name"], f"{path}.service_name") if "service_name" in raw else None)
        percent = Tracing.sampling_percent
        if env.get("OTEL_TRACES_SAMPLER_ARG"):
            percent = self.ratio(env["OTEL_TRACES_SAMPLER_ARG"], "OTEL_TRACES_SAMPLER_ARG", 1.0)
        elif "sampling" in raw:
            percent = self.ratio(raw["sampling"], f"{path}.sampling", 1.0)
        elif "random_sampling" in raw:
            percent = self.ratio(raw["random_sampling"], f"{path}.random_sampling", 100.0)
        return Tracing(
            endpoint=endpoint or None,
            protocol=protocol if protocol in TRACE_PROTOCOLS else Tracing.protocol,
            service_name=service or Tracing.service_name,
            sampling_percent=percent if percent is not None else Tracing.sampling_percent,
        )

    def ratio(self, value: Any, path: str, scale: float) -> float | None:
        """A number between 0 and `scale`, as a percentage."""
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not 0 <= number <= scale:
            self.problem(path, f"expected a number between 0 and {scale:g}, got {value!r}")
            return None
        return number * 100.0 / scale

    def listener(self, item: Any, path: str, index: int) -> Listener | None:
        allowed = {"type", "name", "address", "port", "timeout", "max_body_bytes", "on_all_cooling", "access_log", "allowed_paths", "allowed_methods"}
        raw = self.mapping(item, path, allowed, {"type", "port"})
        if raw is None:
            return None
        before = len(self.problems)
        kind = self.text(raw.get("type"), f"{path}.type") if "type" in raw else None
        if kind is not None and kind != "model":
            self.problem(f"{path}.type", f"listener type {kind!r} is not supported: only 'model' listeners are")
        name = self.text(raw["name"], f"{path}.name") if "name" in raw else f"listener_{index}"
        address = self.text(raw["address"], f"{path}.address") if "address" in raw else "0.0.0.0"
        port = self.integer(raw["port"], f"{path}.port", 0, 65535) if "port" in raw else None
        timeout = self.duration(raw["timeout"], f"{path}.timeout") if "timeout" in raw else DEFAULT_TIMEOUT_S
        max_body = self.size(raw["max_body_bytes"], f"{path}.max_body_bytes") if "max_body_bytes" in raw else DEFAULT_MAX_BODY_BYTES
        on_all_cooling = self.text(raw["on_all_cooling"], f"{path}.on_all_cooling") if "on_all_cooling" in raw else "reject"
        if on_all_cooling not in (None, "reject", "try_anyway"):
            self.problem(f"{path}.on_all_cooling", f"{on_all_cooling!r} must be reject or try_anyway")
        access_log = self.boolean(raw["access_log"], f"{path}.access_log") if "access_log" in raw else False
        paths = self.strings(raw["allowed_paths"], f"{path}.allowed_paths", _PATH_PREFIX, "a path starting with / (no dot-segments, no query)") if "allowed_paths" in raw else DEFAULT_ALLOWED_PATHS
        methods = self.strings(raw["allowed_methods"], f"{path}.allowed_methods", _METHOD, "an upper-case HTTP method") if "allowed_methods" in raw else DEFAULT_ALLOWED_METHODS
        if len(self.problems) > before:
            return None
        return Listener(
            name=name,
            address=address,
            port=port,
            timeout_s=timeout,
            max_body_bytes=max_body,
            on_all_cooling=on_all_cooling,
            access_log=bool(access_log),
            allowed_paths=tuple(item.rstrip("/") or "/" for item in paths),
            allowed_methods=tuple(methods),
        )

    def strings(self, value: Any, path: str, pattern: re.Pattern, what: str) -> tuple[str, ...]:
        """A non-empty list of strings, each matching `pattern`."""
        items = self.sequence(value, path)
        if isinstance(value, list) and not items:
            self.problem(path, "is empty: nothing could be called")
        result = []
        for index, item in enumerate(items):
            text = self.text(item, f"{path}[{index}]")
            if text is not None and not pattern.match(text):
                self.problem(f"{path}[{index}]", f"{text!r} is not {what}")
            elif text is not None:
                result.append(text)
        return tuple(result)

    def check_listeners(self, listeners: list[Listener]) -> None:
        seen_names: set[str] = set()
        seen_ports: set[int] = set()
        for index, listener in enumerate(listeners):
            if listener.name in seen_names:
                self.problem(f"listeners[{index}].name", f"duplicate listener name {listener.name!r}")
            if listener.port and listener.port in seen_ports:
                self.problem(f"listeners[{index}].port", f"port {listener.port} is used by another listener")
            seen_names.add(listener.name)
            seen_ports.add(listener.port)
        if not listeners and not self.problems:
            self.problem("listeners", "at least one listener is required")

    def provider(self, item: Any, path: str) -> Provider | None:
        allowed = {"name", "model", "base_url", "access_key", "default", "retry_policy", "passthrough_auth", "headers", "ca_file", "provider_interface", "http_host"}
        raw = self.mapping(item, path, allowed, {"model"})
        if raw is None:
            return None
        before = len(self.problems)
        model = self.text(raw["model"], f"{path}.model") if "model" in raw else None
        kind = model_name = None
        if model is not None:
            kind, _, model_name = model.partition("/")
            if not kind or not model_name:
                self.problem(f"{path}.model", f"{model!r} must be provider/model, like openai/gpt-4")
        if "base_url" in raw:
            base_url = self.text(raw["base_url"], f"{path}.base_url")
        elif kind in KNOWN_BASE_URLS:
            base_url = KNOWN_BASE_URLS[kind]
        else:
            base_url = None
            if kind:
                self.problem(f"{path}.base_url", f"required for provider kind {kind!r} (known kinds with a default: {', '.join(sorted(KNOWN_BASE_URLS))})")
        url = self.base_url(base_url, f"{path}.base_url") if base_url is not None else None
        access_key = self.text(raw["access_key"], f"{path}.access_key") if "access_key" in raw else None
        if access_key == "":
            self.problem(f"{path}.access_key", "is empty (is its environment variable set to an empty value?)")
        default = self.boolean(raw["default"], f"{path}.default") if "default" in raw else False
        passthrough = self.boolean(raw["passthrough_auth"], f"{path}.passthrough_auth") if "passthrough_auth" in raw else False
        if passthrough and access_key:
            self.problem(f"{path}.passthrough_auth", "cannot be combined with access_key: choose the provider's key or the client's")
        headers = self.headers(raw["headers"], f"{path}.headers") if "headers" in raw else ()
        policy = self.retry_policy(raw["retry_policy"], f"{path}.retry_policy") if "retry_policy" in raw else None
        ca_file = self.text(raw["ca_file"], f"{path}.ca_file") if "ca_file" in raw else self.default_ca_file
        interface = self.text(raw["provider_interface"], f"{path}.provider_interface") if "provider_interface" in raw else None
        if interface is not None and interface not in PLANO_INTERFACES:
            reason = "Plano's own routing model is not served here" if interface == "plano" else f"use one of: {', '.join(sorted(PLANO_INTERFACES))}"
            self.problem(f"{path}.provider_interface", f"{interface!r} is not supported ({reason})")
        http_host = self.text(raw["http_host"], f"{path}.http_host") if "http_host" in raw else None
        if http_host is not None and not _HOST.match(http_host):
            self.problem(f"{path}.http_host", f"{http_host!r} is not a host[:port]")
        if ca_file is not None and not os.path.isfile(ca_file):
            self.problem(f"{path}.ca_file", f"{ca_file!r} is not a readable file")
        if url is not None and model is not None and "name" not in raw:
            name = f"{model}@{url[1]}:{url[2]}"
        else:
            name = self.text(raw.get("name"), f"{path}.name") if "name" in raw else None
        if name is not None and not _NAME.match(name):
            self.problem(f"{path}.name", f"{name!r} may only hold letters, digits and . _ : / @ - (and not start with a symbol)")
        if len(self.problems) > before or url is None or model is None or name is None:
            return None
        scheme, host, port, prefix = url
        return Provider(
            name=name,
            model=model,
            model_name=model_name,
            scheme=scheme,
            host=host,
            port=port,
            path_prefix=prefix,
            access_key=access_key,
            passthrough_auth=bool(passthrough),
            headers=headers,
            default=bool(default),
            retry_policy=policy,
            ca_file=ca_file,
            interface=PLANO_INTERFACES.get(interface) if interface else None,
            http_host=http_host,
        )

    def overrides(self, value: Any, path: str) -> dict:
        """Plano's `overrides`: the two that mean something here are honoured, the others refused by name."""
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, got {_kind(value)}")
            return {}
        result: dict = {}
        for key in value:
            if key not in _OVERRIDES:
                self.problem(_join(path, str(key)), f"a Plano override this gateway does not have (it understands: {', '.join(sorted(_OVERRIDES))})")
        if "upstream_connect_timeout" in value:
            result["upstream_connect_timeout"] = self.duration(value["upstream_connect_timeout"], f"{path}.upstream_connect_timeout")
        if "upstream_tls_ca_path" in value:
            ca = self.text(value["upstream_tls_ca_path"], f"{path}.upstream_tls_ca_path")
            if ca is not None and not os.path.isfile(ca):
                self.problem(f"{path}.upstream_tls_ca_path", f"{ca!r} is not a readable file")
            result["upstream_tls_ca_path"] = ca
        return {key: item for key, item in result.items() if item is not None}

    def aliases(self, value: Any, path: str, models: dict[str, list[str]], bare: dict[str, list[str]]) -> dict[str, str]:
        """Plano's `model_aliases`: {alias: {target: model}}; the target is a configured model (or its bare name)."""
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping of alias to {{target: model}}, got {_kind(value)}")
            return {}
        result = {}
        for alias, entry in value.items():
            where = _join(path, str(alias))
            raw = self.mapping(entry, where, {"target"}, {"target"})
            target = self.text(raw["target"], f"{where}.target") if raw and "target" in raw else None
            if target is None:
                continue
            candidates = [target] if target in models else bare.get(target, [])
            resolved = candidates[0] if len(candidates) == 1 else None
            if resolved is None:
                self.problem(f"{where}.target", f"model {target!r} is not served by any provider (known: {', '.join(models)})")
            elif str(alias) in models:
                self.problem(where, f"{alias!r} is a model already; an alias must be a new name")
            else:
                result[str(alias)] = resolved
        return result

    def base_url(self, value: str, path: str) -> tuple[str, str, int, str] | None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(path, f"{value!r} is not an http:// or https:// URL with a host")
            return None
        if parts.username or parts.password:
            self.problem(path, "must not hold credentials (user:password@): use access_key")
            return None
        if parts.query or parts.fragment:
            self.problem(path, f"{value!r} must not hold a query or fragment")
            return None
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            self.problem(path, f"{value!r} has an invalid port")
            return None
        return parts.scheme, parts.hostname, port, parts.path.rstrip("/")

    def headers(self, value: Any, path: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping of header name to value, got {_kind(value)}")
            return ()
        result = []
        for key, raw in value.items():
            name = str(key).lower()
            where = _join(path, str(key))
            if not _HEADER_NAME.match(name) or name in _RESERVED_HEADERS or name.startswith("x-arch-"):
                self.problem(where, f"{key!r} cannot be set per provider (reserved or not a valid header name)")
                continue
            if name == "authorization":
                self.problem(where, "set the provider's credential with access_key, not headers")
                continue
            text = self.text(raw, where)
            if text is not None:
                result.append((name, text))
        return tuple(result)

    def retry_policy(self, value: Any, path: str) -> RetryPolicy | None:
        allowed = {"retry_on", "max_attempts", "per_try_timeout", "fallback_models"}
        raw = self.mapping(value, path, allowed)
        if raw is None:
            return None
        codes: list[int] = []
        conditions: list[str] = []
        if raw.get("retry_on") == []:
            self.problem(f"{path}.retry_on", "an empty list would turn failover off; list at least one status or condition (the default is [429])")
        for index, item in enumerate(self.sequence(raw.get("retry_on", [429]), f"{path}.retry_on")):
            where = f"{path}.retry_on[{index}]"
            if isinstance(item, int) and not isinstance(item, bool):
                if 400 <= item <= 599:
                    codes.append(item)
                else:
                    self.problem(where, f"status {item} is not an HTTP error status (400-599)")
            elif isinstance(item, str) and item in RETRY_CONDITIONS:
                conditions.append(item)
            else:
                self.problem(where, f"{item!r} is neither a status code nor one of: {', '.join(sorted(RETRY_CONDITIONS))}")
        max_attempts = self.integer(raw["max_attempts"], f"{path}.max_attempts", 1, 10) if "max_attempts" in raw else None
        per_try = self.duration(raw["per_try_timeout"], f"{path}.per_try_timeout") if "per_try_timeout" in raw else None
        fallbacks = []
        for index, item in enumerate(self.sequence(raw.get("fallback_models", []), f"{path}.fallback_models")):
            model = self.text(item, f"{path}.fallback_models[{index}]")
            if model is not None:
                fallbacks.append(model)
        return RetryPolicy(
            status_codes=tuple(dict.fromkeys(codes)),
            conditions=tuple(dict.fromkeys(conditions)),
            max_attempts=max_attempts,
            per_try_timeout_s=per_try,
            fallback_models=tuple(dict.fromkeys(fallbacks)),
        )

    def check_providers(self, valid: list[Provider], raw: list[Provider | None]) -> dict[str, Provider]:
        by_name: dict[str, Provider] = {}
        indexes = {id(provider): index for index, provider in enumerate(raw) if provider is not None}
        defaults = []
        for provider in valid:
            path = f"model_providers[{indexes[id(provider)]}]"
            if provider.name in by_name:
                self.problem(f"{path}.name", f"duplicate provider name {provider.name!r} (names must be unique; set name: on each)")
                continue
            by_name[provider.name] = provider
            if provider.default:
                defaults.append(path)
        if len(defaults) > 1:
            self.problem(f"{defaults[1]}.default", f"only one provider can be the default; {defaults[0]} already is")
        return by_name

    def model_policies(self, by_name: dict[str, Provider], models: dict[str, list[str]], declared: set, raw: list[Provider | None]) -> dict[str, RetryPolicy]:
        """One retry policy per model: the first of its providers that declares one."""
        indexes = {provider.name: index for index, provider in enumerate(raw) if provider is not None}
        policies: dict[str, tuple[str, RetryPolicy]] = {}
        for provider in by_name.values():
            if provider.retry_policy is None:
                continue
            path = f"model_providers[{indexes[provider.name]}].retry_policy"
            if provider.model in policies:
                owner, policy = policies[provider.model]
                if policy != provider.retry_policy:
                    self.problem(path, f"model {provider.model!r} already has a different retry_policy on provider {owner!r}; declare it once per model")
                continue
            for index, fallback in enumerate(provider.retry_policy.fallback_models):
                if fallback == provider.model:
                    self.problem(f"{path}.fallback_models[{index}]", "a model cannot fall back to itself")
                elif fallback not in declared:
                    self.problem(f"{path}.fallback_models[{index}]", f"model {fallback!r} is not served by any provider (known: {', '.join(models)})")
            policies[provider.model] = (provider.name, provider.retry_policy)
        return {model: policy for model, (_, policy) in policies.items()}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(type(value), type(value).__name__)
