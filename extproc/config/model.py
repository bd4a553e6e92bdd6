"""The running configuration: frozen, typed, resolved once from the YAML.

Everything the data path needs is precomputed here (chains, lookups), so a
request only does dictionary look-ups. A reload builds a new `Config` and
swaps it in whole; nothing in here is ever mutated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType

from ..contract import HEDGE_TIMING
from . import schema
from .schema import Cooldown, Listener, Metrics, RetryPolicy, Routing

#: The start of every chain's (aggregate) cluster name: Envoy keeps no statistics of its own for these (render's `stats_config`).
CHAIN_CLUSTER_PREFIX = "chain."
PROVIDER_CLUSTER_PREFIX = "provider."
#: Headers meant for the gateway's own hop, never for a provider: the client's session cookies, its
#: credentials for a proxy, and where it came from. Stripped on every attempt unless a provider's
#: `headers:` sets them.
CLIENT_ONLY_HEADERS = frozenset({"cookie", "proxy-authorization", "forwarded"})


class Provider(schema.Provider):
    """One `model_providers` entry as it runs: its keys as written (`schema.Provider`), and what they resolve to.

    Built by `resolve` without validating again (`model_construct`): the entry was, and what is added is derived from it.
    """

    name: str
    model_name: str  # as the provider is sent it: "gpt-4" (the entry's `model` is as clients ask for it: "openai/gpt-4")
    scheme: str
    host: str
    port: int
    path_prefix: str  # base_url's path without a trailing slash, "" if none
    #: Its priority group's name, set when the config is resolved: its model and the group's rank, "openai/gpt-4o#1".
    group: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def prefixed_path(self, path: str) -> str:
        """The client's path (and query) under this provider's base_url path.

        A base_url written the SDK way, ending in /v1, does not double the
        client's own /v1: `https://host/coding/v1` + `/v1/chat/completions`
        is `/coding/v1/chat/completions`.
        """
        prefix = self.path_prefix
        if prefix.endswith("/v1") and (path == "/v1" or path.startswith(("/v1/", "/v1?"))):
            prefix = prefix[: -len("/v1")]
        return prefix + path

    @cached_property
    def identity(self) -> str:
        """What it calls, as another gateway would see it: the model at one deployment with one credential.

        Shared cooldowns (Redis) are keyed by it, so two gateways share a
        provider's cooldown only when they call the same model on the same
        host and path with the same key, whatever each names its provider.
        The credential enters only through its SHA-256.
        """
        credential = self.access_key or self.aws_access_key_id or self.vertex_credentials or ""
        secret = hashlib.sha256(credential.encode()).hexdigest() if credential else ""
        parts = (self.model, self.scheme, self.host, str(self.port), self.path_prefix, self.vertex_project or "", self.vertex_location or "", self.aws_region_name or "", secret)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]

    @cached_property
    def cluster(self) -> str:
        """Envoy's cluster for this provider, named for the host it stands for.

        The name changes whenever the scheme, host, port, TLS trust or group
        (in its endpoint's metadata) changes, so a cluster is never repointed
        in place: a request routed before a reload reaches exactly the host
        its credentials were chosen for.
        """
        return f"{PROVIDER_CLUSTER_PREFIX}{self.name}.{fingerprint(self.scheme, self.host, str(self.port), self.ca_file or '', file_digest(self.ca_file) or '', self.group)}"

    @property
    def authority(self) -> str:
        """Host header value: the port only when it is not the scheme's default."""
        if self.http_host:
            return self.http_host
        default_port = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal is bracketed (RFC 3986)
        return host if self.port == default_port else f"{host}:{self.port}"


@dataclass(frozen=True)
class Chain:
    """The ordered providers a request tries when it starts at `providers[0]`."""

    providers: tuple[str, ...]
    policy: RetryPolicy
    #: Every provider of it sends a key the gateway owns (none `passthrough_auth`): a refused key (401, 403) fails over.
    owns_keys: bool = True

    @classmethod
    def of(cls, providers: tuple[str, ...], policy: RetryPolicy, owns_keys: bool = True) -> Chain:
        """A chain; without a second attempt to hedge on, `hedge_after` is dropped (it would only time the one attempt out)."""
        chain = cls(providers, policy, owns_keys)
        return chain.unhedged if policy.hedge_after is not None and not chain.hedges else chain

    @property
    def num_retries(self) -> int:
        attempts = self.policy.max_attempts or len(self.providers)
        return max(attempts - 1, 0)

    @property
    def hedges(self) -> bool:
        """Two of its attempts can be in flight at once (`hedge_after`, and a provider to hedge on)."""
        return self.policy.timing == HEDGE_TIMING and self.num_retries > 0

    @property
    def reads_refusals(self) -> bool:
        """Its attempts' 400s are read, and a refusal another model may answer is redirected there (refusal fallbacks);
        never where it hedges: Envoy 1.40 crashes when an upstream filter releases a failed answer beside another attempt."""
        return self.policy.refusal_fallbacks and not self.hedges

    @property
    def unhedged(self) -> Chain:
        """The same chain without `hedge_after`: plain failover (its own `per_try_timeout` only).

        Envoy 1.40 crashes when an upstream filter releases a failed answer
        while another attempt is in flight (docs/envoy-behaviour.md), and the
        upstream level holds every answer it translates: a request whose
        answer may be translated takes this chain's route (`contract.unhedged_route`).
        """
        return replace(self, policy=self.policy.model_copy(update={"hedge_after": None}))


@dataclass(frozen=True)
class Tracing:
    """Envoy's OpenTelemetry traces, exported over OTLP; no endpoint, no tracing."""

    endpoint: str | None = None  # `http(s)://host:port[/path]`: the collector (for http/protobuf, the traces path is added when absent)
    protocol: str = "http/protobuf"
    service_name: str = "extproc"
    sampling_percent: float = 100.0


@dataclass(frozen=True)
class ProviderError:
    """A provider entry left out of the snapshot because it is invalid on its own."""

    name: str  # its name, or its position when it has none
    model: str
    message: str


@dataclass(frozen=True)
class Config:
    source: str
    listeners: tuple[Listener, ...]
    providers: Mapping[str, Provider]  # by name, in file order
    models: Mapping[str, tuple[str, ...]]  # model -> its own providers, by priority (then file order)
    chains: Mapping[str, Chain]  # start provider name -> chain
    default_provider: str | None
    #: Headers some provider sets: every attempt restores or drops them.
    owned_headers: frozenset[str]
    #: model -> its priority groups (names, weights), for a model with a group of more than one provider; the router
    #: starts a request in the first group with a provider not cooling down, picked by weight.
    groups: Mapping[str, tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]] = field(default_factory=dict)
    #: A model's bare name ("gpt-4o") -> the model ("openai/gpt-4o"), where only one model has that name.
    bare_models: Mapping[str, str] = field(default_factory=dict)
    cooldown: Cooldown = Cooldown()
    metrics: Metrics = Metrics()
    tracing: Tracing = Tracing()
    #: model -> how a request picks among the members of its priority groups (`routing`), where the config says.
    routing: Mapping[str, Routing] = field(default_factory=dict)
    #: Plano's `model_aliases`: a name clients may ask for -> the model it stands for.
    aliases: Mapping[str, str] = field(default_factory=dict)
    connect_timeout_s: float = 5.0  # to providers (Plano's `overrides.upstream_connect_timeout`)
    provider_errors: tuple[ProviderError, ...] = ()
    #: What loads but probably does not do what was meant (a weight without a priority, say), key by key.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def chain_for_model(self, model: str) -> Chain | None:
        names = self.models.get(model)
        return self.chains[names[0]] if names else None

    @cached_property
    def chain_clusters(self) -> Mapping[str, str]:
        """Chain start -> Envoy's aggregate cluster for that chain, named for its members in order.

        A chain whose members, attempts or attempt timing change gets a new
        cluster (and route), so retries of a request routed before a reload
        stay on the providers it was routed to.
        """
        return frozen_mapping(
            (start, f"{CHAIN_CLUSTER_PREFIX}{start}.{fingerprint(*(self.providers[name].cluster for name in chain.providers), str(chain.num_retries), chain.policy.timing, str(chain.policy.attempt_timeout), str(chain.owns_keys), *(('refusals',) if chain.policy.refusal_fallbacks else ()))}")
            for start, chain in self.chains.items()
        )

    @cached_property
    def windows(self) -> bool:
        """Some provider declares `max_input_tokens`: requests are measured against it (otherwise nothing is)."""
        return any(provider.max_input_tokens is not None for provider in self.providers.values())

    @cached_property
    def body_limit(self) -> int:
        """The largest listener's `max_body_bytes`: what Envoy buffers of a body or an answer, and what sizes the sidecar's gRPC messages."""
        return max((listener.max_body_bytes for listener in self.listeners), default=0)

    @cached_property
    def providers_by_identity(self) -> Mapping[str, tuple[str, ...]]:
        """`Provider.identity` -> the names of this config's providers with it (a shared cooldown applies to each)."""
        names: dict[str, list[str]] = {}
        for provider in self.providers.values():
            names.setdefault(provider.identity, []).append(provider.name)
        return frozen_mapping((identity, tuple(members)) for identity, members in names.items())

    @cached_property
    def providers_by_cluster(self) -> Mapping[str, Provider]:
        return frozen_mapping((provider.cluster, provider) for provider in self.providers.values())


def frozen_mapping(items) -> Mapping:
    return MappingProxyType(dict(items))


#: Hex digits of a resource name's `fingerprint`.
FINGERPRINT_LENGTH = 10


def fingerprint(*parts: str) -> str:
    """A short, stable digest of `parts` for resource names."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:FINGERPRINT_LENGTH]


def file_digest(path: str | None) -> str | None:
    """The SHA-256 of a file's content; None when there is no path or it cannot be read."""
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None
