"""The clusters a config adds: one per provider (its endpoint, TLS, DNS) and one aggregate per chain start (its members in order)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable

from ..config import Chain, Config, Provider
from ..contract import CLUSTER_METADATA_KEY, GROUP_METADATA_KEY, METADATA_NAMESPACE, PROVIDER_METADATA_KEY, PROVIDER_MODEL_METADATA_KEY, SYSTEM_METADATA_KEY
from .options import RenderOptions
from .telemetry import gen_ai_system
from .upstream import chain_upstream_filters, shared_upstream_filters
from .values import CIRCUIT_BREAKERS, HTTP_OPTIONS, HTTP_OPTIONS_KEY, TLS_CONTEXT, duration, socket_address

CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
_AGGREGATE = "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig"


def upstream_clusters(configs: Iterable[Config], options: RenderOptions = RenderOptions()) -> list[dict]:
    """A cluster per provider and an aggregate cluster per chain start, of every snapshot given (once per name: the
    first snapshot's; a reload lists the new one first, and renders only what the live ones add)."""
    clusters: dict[str, dict] = {}
    for config in configs:
        body_limit = config.body_limit
        shared = shared_upstream_filters(options, body_limit)
        for provider in config.providers.values():
            if provider.cluster not in clusters:
                clusters[provider.cluster] = provider_cluster(provider, body_limit, options, config.connect_timeout_s)
        for start, chain in config.chains.items():
            name = config.chain_clusters[start]
            if name not in clusters:
                clusters[name] = chain_cluster(name, config, chain, options, shared)
    return list(clusters.values())


def provider_cluster(provider: Provider, body_limit: int, options: RenderOptions, connect_timeout_s: float) -> dict:
    name = provider.cluster
    endpoint = {
        "endpoint": {"address": socket_address(provider.host, provider.port), "hostname": provider.authority},
        "metadata": {
            "filter_metadata": {
                METADATA_NAMESPACE: {
                    PROVIDER_METADATA_KEY: provider.name,
                    CLUSTER_METADATA_KEY: name,
                    PROVIDER_MODEL_METADATA_KEY: provider.model,
                    SYSTEM_METADATA_KEY: gen_ai_system(provider),
                    GROUP_METADATA_KEY: provider.group,
                }
            }
        },
    }
    cluster: dict = {
        "name": name,
        "connect_timeout": duration(connect_timeout_s),
        "per_connection_buffer_limit_bytes": body_limit + 65536,
        "circuit_breakers": CIRCUIT_BREAKERS,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }
    if is_ip(provider.host):
        cluster["type"] = "STATIC"
    else:
        cluster["type"] = "LOGICAL_DNS"
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if provider.tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TLS_CONTEXT,
                # An IP literal is not a server name: no SNI, and the certificate must name the address (IP SAN).
                **({} if is_ip(provider.host) else {"sni": provider.host}),
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": provider.ca_file or options.ca_file or system_ca_bundle()},
                        "match_typed_subject_alt_names": [{"san_type": "IP_ADDRESS" if is_ip(provider.host) else "DNS", "matcher": {"exact": provider.host}}],
                    }
                },
            },
        }
    return cluster


def chain_cluster(name: str, config: Config, chain: Chain, options: RenderOptions, shared: list[dict]) -> dict:
    """The aggregate cluster of a chain: its members' clusters in order (retries move down the list); its own upstream
    filters only where they are not the router's `shared` ones."""
    cluster = {
        "name": name,
        "connect_timeout": "5s",
        "lb_policy": "CLUSTER_PROVIDED",
        "per_connection_buffer_limit_bytes": config.body_limit + 65536,
        "circuit_breakers": CIRCUIT_BREAKERS,
        "cluster_type": {
            "name": "envoy.clusters.aggregate",
            "typed_config": {"@type": _AGGREGATE, "clusters": [config.providers[member].cluster for member in chain.providers]},
        },
    }
    filters = chain_upstream_filters(config, chain, options)
    if filters != shared:
        # Upstream filters run from the route's cluster, i.e. here, once per attempt; a cluster without its own runs the router's.
        cluster["typed_extension_protocol_options"] = {
            HTTP_OPTIONS_KEY: {"@type": HTTP_OPTIONS, "explicit_http_config": {"http_protocol_options": {}}, "http_filters": filters}
        }
    return cluster


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def system_ca_bundle() -> str:
    return next((path for path in CA_BUNDLES if os.path.exists(path)), CA_BUNDLES[0])
