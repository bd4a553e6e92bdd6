"""Per-attempt headers: restore the client's originals, drop what earlier attempts added.

Envoy reuses one header map across the attempts of a request, so a header set
for provider A is still there when the retry to provider B runs its filter.
Every attempt therefore rebuilds every header the gateway owns from the
originals the router level captured, never from what it currently sees.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ..config import Chain, Config, Provider
from ..config.model import CLIENT_ONLY_HEADERS
from ..providers import CREDENTIAL_HEADERS, kind_of, upstream_path
from .backendauth import credential_headers

INTERNAL_PREFIX = "x-arch-"
#: Envoy's own headers: a client's are dropped at the router level (Envoy sets its own, e.g. the attempt count, later).
ENVOY_PREFIX = "x-envoy-"
ROUTE_HEADER = "x-arch-llm-provider"
#: Names the chain's Envoy cluster (content-named, see `Config.chain_clusters`) for the route
#: match; the route removes it before the request goes upstream.
CHAIN_HEADER = "x-arch-route"
#: Set by the router level when attempt 1 must be translated: Envoy then runs the upstream level on attempt 1 too.
TRANSLATE_HEADER = "x-arch-translate"
#: Set by the router level when the body's model must be rewritten: Envoy then runs its Lua patch, which removes it.
PATCH_HEADER = "x-arch-model-patch"


def client_values(config: Config, headers: Mapping[str, str]) -> dict[str, str]:
    """The client's values of the owned headers: what every attempt is rebuilt from."""
    return {name: headers[name] for name in config.owned_headers if name in headers}


def carried(config: Config, originals: Mapping[str, str], chain: Chain) -> dict[str, str]:
    """The originals later attempts of `chain` need.

    The client's credentials are kept only when a provider of the chain will
    be sent them, so they travel no further than they must.
    """
    if any(config.providers[name].passthrough_auth for name in chain.providers):
        return dict(originals)
    return {name: value for name, value in originals.items() if name not in CREDENTIAL_HEADERS}


@dataclass(frozen=True)
class HeaderPlan:
    set: tuple[tuple[str, str], ...]
    remove: tuple[str, ...]


def plan(
    config: Config, provider: Provider, path: str, originals: Mapping[str, str], present: Collection[str], chain: str | None = None, extra: Mapping[str, str | None] | None = None
) -> HeaderPlan:
    """The header mutations that make this attempt's request exactly right for `provider`.

    `chain` (router level only) names the chain cluster Envoy must route to
    and sets the routing header (the route removes both before the request
    goes upstream); there the client's own `x-envoy-*` headers are dropped
    too. `extra`: what this attempt adds (a translated attempt's API version,
    say; None removes a header). No provider gets the gateway's internal headers or the client's
    `CLIENT_ONLY_HEADERS`.
    """
    values: dict[str, str | None] = {name: originals.get(name) for name in config.owned_headers}
    for name in present:
        if name in CLIENT_ONLY_HEADERS or name.startswith(INTERNAL_PREFIX) or (chain is not None and name.startswith(ENVOY_PREFIX)):
            values[name] = None
    values.update(credential_headers(provider, originals))
    for name, value in kind_of(provider).default_headers:  # the kind's API version, say: a client that sent its own keeps it
        if values.get(name) is None and (name in values or name not in present):
            values[name] = value
    if extra:
        values.update(extra)
    values.update(provider.headers)
    values[":path"] = upstream_path(provider, path)
    if chain is not None:
        values[ROUTE_HEADER] = provider.name
        values[CHAIN_HEADER] = chain
    to_set = tuple((name, value) for name, value in values.items() if value is not None)
    to_remove = tuple(name for name, value in values.items() if value is None)
    return HeaderPlan(to_set, to_remove)
