"""Resolve a validated config file into the frozen `Config` the data path uses.

The schema checked each key on its own; here the keys meet: provider names
and defaults, one retry policy per model, fallbacks to models somebody
serves, aliases, chains, and the OTEL_* variables over the `tracing:` block.
Problems are collected, never raised one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic_core import PydanticCustomError

from .. import providers, translator
from ..providers import CREDENTIAL_HEADERS, kind_of
from . import model, schema
from .model import Chain, Config, frozen_mapping


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    #: A problem of the environment (an unset variable), not of one entry: never skipped over.
    environmental: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass
class Resolver:
    """Builds a `Config` from a validated file, collecting problems in `problems`."""

    source: str
    environ: Mapping[str, str]
    providers_key: str = "model_providers"
    #: Models of entries left out in lenient mode: a fallback to them is skipped, not an error.
    dropped_models: frozenset[str] = frozenset()
    problems: list[Problem] = field(default_factory=list)

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def config(self, file: schema.ConfigFile, entries: list[tuple[int, schema.Provider]], declared: set[str]) -> Config | None:
        """`entries`: the provider entries that passed the schema, with their index in the file.

        `declared`: every model the file names, valid entry or not (a fallback to a broken entry is not a second problem).
        """
        ca_default = file.overrides.upstream_tls_ca_path
        providers = {index: self.provider(entry, f"{self.providers_key}[{index}]", ca_default) for index, entry in entries}
        listeners = self.listeners(file.listeners)
        by_name = self.unique_providers(providers)
        models: dict[str, list[str]] = {}
        for provider in by_name.values():
            models.setdefault(provider.model, []).append(provider.name)
        groups = {name: _groups([by_name[member] for member in names]) for name, names in models.items()}
        for name, model_groups in groups.items():
            for rank, group in enumerate(model_groups, 1):
                for member in group:
                    by_name[member] = by_name[member].model_copy(update={"group": f"{name}#{rank}"})
        models = {name: [member for group in groups[name] for member in group] for name in models}
        policies = self.model_policies(by_name, models, declared | set(models) | self.dropped_models, providers)
        routing = self.model_routing(by_name, providers)
        bare: dict[str, list[str]] = {}
        for name in models:
            bare.setdefault(name.partition("/")[2], []).append(name)
        aliases = self.aliases(file.model_aliases, models, bare)
        tracing = self.tracing(file.tracing)
        self.related_keys(file, listeners)
        if self.problems:
            return None
        return Config(
            source=self.source,
            listeners=tuple(listeners),
            providers=frozen_mapping(by_name),
            models=frozen_mapping((name, tuple(names)) for name, names in models.items()),
            groups=frozen_mapping(
                (name, tuple((tuple(group), tuple(by_name[member].weight for member in group)) for group in model_groups))
                for name, model_groups in groups.items()
                if any(len(group) > 1 for group in model_groups)
            ),
            chains=frozen_mapping(_chains(models, groups, policies, by_name)),
            default_provider=next((provider.name for provider in by_name.values() if provider.default), None),
            owned_headers=_owned_headers(by_name),
            bare_models=frozen_mapping((name, full[0]) for name, full in bare.items() if len(full) == 1 and name not in models),
            cooldown=file.cooldown,
            metrics=file.metrics,
            tracing=tracing,
            aliases=frozen_mapping(aliases),
            routing=frozen_mapping(routing),
            connect_timeout_s=file.overrides.upstream_connect_timeout or 5.0,
            warnings=(*self.warnings(entries, listeners, policies), *_routing_warnings(routing, groups)),
        )

    def related_keys(self, file: schema.ConfigFile, listeners: list[schema.Listener]) -> None:
        """Keys that are each valid but cannot go together."""
        if file.metrics.port:
            for index, listener in enumerate(listeners):
                if listener.port == file.metrics.port:
                    self.problem("metrics.port", f"{file.metrics.port} is listener {listener.name}'s port (listeners[{index}].port): each needs its own")
        for index, entry in enumerate(file.listeners):
            for key in sorted({"max_wait", "max_waiting"} & entry.model_fields_set):
                if entry.on_all_cooling != "wait":
                    self.problem(f"listeners[{index}].{key}", f"only applies with listeners[{index}].on_all_cooling: wait (it is {entry.on_all_cooling!r})")
            if entry.on_all_cooling == "wait" and entry.max_wait >= entry.timeout:
                self.problem(f"listeners[{index}].max_wait", f"{entry.max_wait:g}s is not shorter than listeners[{index}].timeout ({entry.timeout:g}s)")
        if file.cooldown.slow_start is not None and not file.cooldown.enabled:
            self.problem("cooldown.slow_start", "has nothing to ramp with cooldown.enabled false: no provider ever comes back from a cooldown")
        if file.cooldown.default_cooldown > file.cooldown.max_cooldown:
            self.problem(
                "cooldown.default_cooldown",
                f"{file.cooldown.default_cooldown:g}s is longer than cooldown.max_cooldown ({file.cooldown.max_cooldown:g}s), which caps every cooldown",
            )

    def warnings(self, entries: list[tuple[int, schema.Provider]], listeners: list[schema.Listener], policies: Mapping[str, schema.RetryPolicy]) -> list[str]:
        """What loads but probably does not do what was meant: `extproc check` prints these, the sidecar logs them."""
        found = []
        for index, entry in entries:
            if entry.weight != 1 and entry.priority is None:
                found.append(
                    f"{self.providers_key}[{index}].weight: {entry.weight} has no effect without a priority "
                    "(providers of a model are tried in file order; give those that share traffic the same priority)"
                )
        longest = max((listener.timeout for listener in listeners), default=0.0)
        for name, policy in policies.items():
            if policy.context_window_fallbacks and policy.hedge_after is not None:
                found.append(
                    f"model {name}: context_window_fallbacks take only prompts estimated too long (max_input_tokens) on a chain that hedges:"
                    " a provider's own refusal is not read there (hedge_after)"
                )
            for key, seconds in (("per_try_timeout", policy.per_try_timeout), ("first_token_timeout", policy.first_token_timeout), ("hedge_after", policy.hedge_after)):
                if seconds is not None and seconds >= longest:
                    found.append(f"model {name}: retry_policy.{key} ({seconds:g}s) is not shorter than the listener's timeout ({longest:g}s): it never ends an attempt")
        return found

    def listeners(self, entries: list[schema.Listener]) -> list[schema.Listener]:
        result: list[schema.Listener] = []
        names: set[str] = set()
        ports: set[int] = set()
        for index, entry in enumerate(entries):
            name = entry.name or f"listener_{index}"
            if name in names:
                self.problem(f"listeners[{index}].name", f"duplicate listener name {name!r}")
            if entry.port and entry.port in ports:
                self.problem(f"listeners[{index}].port", f"port {entry.port} is used by another listener")
            names.add(name)
            ports.add(entry.port)
            result.append(entry.model_copy(update={"name": name}))
        if not entries:
            self.problem("listeners", "at least one listener is required")
        return result

    def provider(self, entry: schema.Provider, path: str, ca_default: str | None) -> model.Provider | None:
        before = len(self.problems)
        model_name = entry.model.partition("/")[2]
        kind_rules = providers.kind_named(entry.kind)
        if not self.kind_keys(entry, path, kind_rules):
            return None
        keys = {key: getattr(entry, key) for key in kind_rules.config_keys}
        try:
            base_url = entry.base_url or (kind_rules.base_url_of(keys) if kind_rules.base_url_of else kind_rules.base_url)
        except ValueError as exc:
            self.problem(f"{path}.model", str(exc))
            return None
        if base_url is None:
            defaults = sorted(name for name, known in providers.KINDS.items() if known.base_url)
            self.problem(f"{path}.base_url", f"required for provider kind {entry.kind!r} (known kinds with a default: {', '.join(defaults)})")
            return None
        parts = urlsplit(base_url)
        if not parts.hostname:
            return None
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if entry.access_key == "":
            self.problem(f"{path}.access_key", "is empty (is its environment variable set to an empty value?)")
        if entry.passthrough_auth and entry.access_key:
            self.problem(f"{path}.passthrough_auth", "cannot be combined with access_key: choose the provider's key or the client's")
        name = entry.name or f"{entry.model}@{parts.hostname}:{port}"
        if not schema.NAME.match(name):
            self.problem(f"{path}.model", f"{name!r} cannot name a provider: give the entry a name: of letters, digits and . _ : / @ -")
        if len(self.problems) > before:
            return None
        resolved = {
            "name": name,
            "model_name": kind_rules.wire_model(model_name) if kind_rules.wire_model else model_name,
            "scheme": parts.scheme,
            "host": parts.hostname,
            "port": port,
            "path_prefix": parts.path.rstrip("/"),
            "ca_file": entry.ca_file or ca_default,
            **(kind_rules.settle(keys) if kind_rules.settle else {}),
        }
        return model.Provider.model_construct(entry.model_fields_set | resolved.keys(), **(entry.__dict__ | resolved))

    def kind_keys(self, entry: schema.Provider, path: str, kind_rules: providers.Kind) -> bool:
        """Whether `entry` has the keys its kind requires and none that only other kinds take (each problem noted)."""
        before = len(self.problems)
        for key in sorted(providers.KIND_KEYS - kind_rules.config_keys):
            if getattr(entry, key) is not None:
                owners = ", ".join(f"{name}/…" for name, known in providers.KINDS.items() if key in known.config_keys)
                self.problem(f"{path}.{key}", f"is only for {owners} providers, not {kind_rules.name!r}")
        for key in kind_rules.required_keys:
            if getattr(entry, key) is None:
                self.problem(f"{path}.{key}", f"is required for {kind_rules.name}/… providers")
        return len(self.problems) == before

    def unique_providers(self, providers: dict[int, model.Provider | None]) -> dict[str, model.Provider]:
        by_name: dict[str, model.Provider] = {}
        default = None
        for index, provider in providers.items():
            if provider is None:
                continue
            path = f"{self.providers_key}[{index}]"
            if provider.name in by_name:
                self.problem(f"{path}.name", f"duplicate provider name {provider.name!r} (names must be unique; set name: on each)")
                continue
            by_name[provider.name] = provider
            if provider.default and default:
                self.problem(f"{path}.default", f"only one provider can be the default; {default} already is")
            elif provider.default:
                default = path
        return by_name

    def model_policies(self, by_name: dict[str, model.Provider], models: dict[str, list[str]], declared: set[str], providers: dict[int, model.Provider | None]) -> dict[str, schema.RetryPolicy]:
        """One retry policy per model: the first of its providers that declares one; its fallbacks must be other, served models."""

        def fallbacks(path: str, provider: model.Provider) -> None:
            assert provider.retry_policy is not None
            for key in ("fallback_models", "context_window_fallbacks", "content_policy_fallbacks"):
                for index, fallback in enumerate(getattr(provider.retry_policy, key)):
                    if fallback == provider.model:
                        self.problem(f"{path}.{key}[{index}]", "a model cannot fall back to itself")
                    elif fallback not in declared:
                        self.problem(f"{path}.{key}[{index}]", f"model {fallback!r} is not served by any provider (known: {', '.join(models)})")

        return self.once_per_model(by_name, providers, "retry_policy", fallbacks)

    def model_routing(self, by_name: dict[str, model.Provider], providers: dict[int, model.Provider | None]) -> dict[str, schema.Routing]:
        return self.once_per_model(by_name, providers, "routing")

    def once_per_model(self, by_name: dict[str, model.Provider], providers: dict[int, model.Provider | None], key: str, check: Callable[[str, model.Provider], None] | None = None) -> dict:
        """A per-model setting written on a provider (`retry_policy`, `routing`): the first of the model's providers that
        declares it; another that declares a different one is a problem. `check` looks at the first one (its path, its provider)."""
        indexes = {provider.name: index for index, provider in providers.items() if provider is not None}
        found: dict[str, tuple[str, object]] = {}
        for provider in by_name.values():
            value = getattr(provider, key)
            if value is None:
                continue
            path = f"{self.providers_key}[{indexes[provider.name]}].{key}"
            if provider.model in found:
                owner, known = found[provider.model]
                if known != value:
                    self.problem(path, f"model {provider.model!r} already has a different {key} on provider {owner!r}; declare it once per model")
                continue
            if check is not None:
                check(path, provider)
            found[provider.model] = (provider.name, value)
        return {name: value for name, (_, value) in found.items()}

    def aliases(self, entries: Mapping[str, schema.Alias], models: dict[str, list[str]], bare: dict[str, list[str]]) -> dict[str, str]:
        """Plano's `model_aliases`: the target is a configured model, or a bare name only one model has."""
        result = {}
        for alias, entry in entries.items():
            candidates = [entry.target] if entry.target in models else bare.get(entry.target, [])
            if len(candidates) != 1:
                self.problem(f"model_aliases.{alias}.target", f"model {entry.target!r} is not served by any provider (known: {', '.join(models)})")
            elif alias in models:
                self.problem(f"model_aliases.{alias}", f"{alias!r} is a model already; an alias must be a new name")
            else:
                result[alias] = candidates[0]
        return result

    def tracing(self, block: schema.Tracing) -> model.Tracing:
        """The `tracing:` block, then the standard OTEL_* variables, which win (so a deployment can point at its collector)."""
        env = self.environ
        endpoint, where = block.endpoint, "tracing.endpoint"
        for variable in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            if env.get(variable):
                endpoint, where = env[variable], variable
                break
        if endpoint and where != "tracing.endpoint" and (reason := schema.check_endpoint(endpoint)):
            self.problem(where, reason)
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or block.protocol
        if protocol and protocol not in schema.TRACE_PROTOCOLS:
            self.problem("OTEL_EXPORTER_OTLP_PROTOCOL", f"{protocol!r} is not supported (use {' or '.join(schema.TRACE_PROTOCOLS)})")
        percent = block.sampling if block.sampling is not None else block.random_sampling
        if env.get("OTEL_TRACES_SAMPLER_ARG"):
            try:
                percent = schema.check_ratio(env["OTEL_TRACES_SAMPLER_ARG"], 1.0)
            except PydanticCustomError as error:
                self.problem("OTEL_TRACES_SAMPLER_ARG", error.message())
        return model.Tracing(
            endpoint=endpoint or None,
            protocol=protocol if protocol in schema.TRACE_PROTOCOLS else model.Tracing.protocol,
            service_name=env.get("OTEL_SERVICE_NAME") or block.service_name or model.Tracing.service_name,
            sampling_percent=percent if percent is not None else model.Tracing.sampling_percent,
        )


_NO_POLICY = schema.RetryPolicy()
_NO_ROUTING = schema.Routing()


def _groups(members: list[model.Provider]) -> list[list[str]]:
    """A model's providers (in file order) as priority groups, lowest priority first; an unset priority is the provider's position."""
    keyed = sorted(((provider.priority if provider.priority is not None else position, position, provider.name) for position, provider in enumerate(members)))
    groups: dict[int, list[str]] = {}
    for priority, _, name in keyed:
        groups.setdefault(priority, []).append(name)
    return list(groups.values())


def _chains(
    models: dict[str, list[str]], groups: dict[str, list[list[str]]], policies: dict[str, schema.RetryPolicy], by_name: dict[str, model.Provider]
) -> dict[str, Chain]:
    """A chain per provider it can start at: itself, the rest of its group, the later groups, the fallback models' providers."""
    chains = {}
    for name_of_model in models:
        policy = policies.get(name_of_model, _NO_POLICY)
        tail = [name for fallback in policy.fallback_models for name in models.get(fallback, ())]
        for index, group in enumerate(groups[name_of_model]):
            later = [member for following in groups[name_of_model][index + 1 :] for member in following]
            for member in group:
                members = tuple(dict.fromkeys([member, *group, *later, *tail]))
                chains[member] = Chain.of(members, policy, owns_keys=not any(by_name[name].passthrough_auth for name in members))
    return chains


def _owned_headers(by_name: dict[str, model.Provider]) -> frozenset[str]:
    """Headers some provider (or a translation) sets: every attempt restores or drops them."""
    owned = set(CREDENTIAL_HEADERS)
    apis = frozenset(translator.provider_api(provider) for provider in by_name.values())
    if len(apis) > 1:
        owned.update(translator.HEADERS)  # set on translated attempts only: restored or dropped on the others
    owned.update(translator.read_for(apis))
    for provider in by_name.values():
        owned.update(provider.headers)
        owned.update(kind_of(provider).sets_headers)  # a signature's: restored (dropped) on the next attempt
    return frozenset(owned)


def _routing_warnings(routing: Mapping[str, schema.Routing], groups: Mapping[str, list[list[str]]]) -> list[str]:
    return [
        f"model {name}: routing has no effect: no priority group of it has more than one provider to choose among"
        for name, how in routing.items()
        if how != _NO_ROUTING and not any(len(group) > 1 for group in groups[name])
    ]
