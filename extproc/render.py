"""Render the Envoy bootstrap for a config: listeners, routes, chain and provider clusters.

The shape (docs/envoy-behaviour.md says which Envoy behaviour each piece rests on, and which test holds it):

- per listener, an HCM whose router-level ext_proc picks the chain and sets
  `x-arch-llm-provider` (from the headers and the model Envoy found in the
  body, `render_body`, for most requests); one route per chain start matches
  that header exactly; a catch-all answers 400 so an unrouted request fails
  loudly;
- per provider, a cluster `provider.<name>.<hash of its host and TLS>` whose
  one endpoint carries the provider's name and cluster in its metadata (so the
  upstream level and the response header can tell which provider, and which
  host, an attempt went to);
- per chain start, an aggregate cluster `chain.<name>.<hash of its members>`
  over those providers in order, retried with `previous_priorities` so each
  retry moves to the next provider; the upstream-level ext_proc runs on it
  once per attempt.

Names change whenever what they stand for changes, so a reload adds new
clusters and routes beside the old ones and never repoints one in place.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import yaml

from .config import Chain, Config, Listener, Provider
from .config.model import CHAIN_CLUSTER_PREFIX, FINGERPRINT_LENGTH, PROVIDER_CLUSTER_PREFIX
from .contract import (
    ATTEMPT_NAMESPACE,
    ATTEMPT_TAG,
    BODY_NAMESPACE,
    CLUSTER_METADATA_KEY,
    DOWNSTREAM_LOG,
    FAILED_STATUS,
    GROUP_METADATA_KEY,
    GROUP_TAG,
    HOST_METADATA_ATTRIBUTE,
    INPUT_TOKENS,
    LISTENER_METADATA,
    LISTENER_TAG,
    METADATA_NAMESPACE,
    MODEL_METADATA_KEY,
    MODEL_TAG,
    OUTPUT_TOKENS,
    PATH_METADATA_KEY,
    PHASE_METADATA,
    PROVIDER_METADATA_KEY,
    PROVIDER_MODEL_METADATA_KEY,
    PROVIDER_TAG,
    SIDECAR_REPLY_DETAILS,
    SYSTEM_METADATA_KEY,
    TIMEOUT_RETRY_HEADER,
    TIMING_METADATA_KEY,
    TIMING_TAG,
    UNHEDGED_TIMING,
    UPSTREAM_LOG,
    USAGE_NAMESPACE,
    bulk_address,
    message_limit,
    unhedged_route,
)
from .processor.cooldown import AUTH_STATUSES, OVERLOADED
from .processor.headermutator import CHAIN_HEADER, ROUTE_HEADER, TRANSLATE_HEADER
from .processor.ratelimit import HEADER_NAMES as RATE_LIMIT_HEADERS
from .processor.router import CLIENT_HEADER_LIMIT
from .render_body import find_model, large_request, model_patch, small_request
from .render_composite import composite, execute, header_input, only_when
from .render_telemetry import TRACE_RUNTIME, gen_ai_system, hcm_tracing, trace_cluster, usage_filters, usage_tags
from .translator import MESSAGES

SIDECAR_CLUSTER = "extproc_sidecar"
BULK_CLUSTER = "extproc_sidecar_bulk"
ADMIN_CLUSTER = "envoy_admin"
MISSING_ROUTE_MESSAGE = "x-arch-llm-provider header not set, llm gateway cannot perform routing"
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
_CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
_CODEC = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_AGGREGATE = "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig"
_PREVIOUS_PRIORITIES = "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_DOWNSTREAM_CONNECTIONS = "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
_STDOUT_ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_GRPC_ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_FIXED_HEAP = "envoy.resource_monitors.fixed_heap"
_FIXED_HEAP_CONFIG = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"

#: The listener allows `CLIENT_HEADER_LIMIT` (what a client may send, Envoy's
#: default) plus this, so what the gateway adds (credentials, routing, provider
#: headers, Envoy's own) never pushes an accepted request over; the sidecar
#: answers a client that sends more than its limit with 431.
HEADER_HEADROOM = 32
#: No client is "internal" (an empty list would mean Envoy's defaults, loopback and private ranges
#: included): every request gets Envoy's own request id, whatever x-request-id it sent.
_NO_ADDRESS = {"address_prefix": "255.255.255.255", "prefix_len": 32}

#: `x-envoy-attempt-count` of a retry (2 and above): the attempts the upstream ext_proc rebuilds.
RETRY_ATTEMPT = r"[2-9]|[1-9][0-9]+"
#: Generous limits: Envoy's defaults (3 concurrent retries per cluster) would
#: silently turn failovers into errors under load.
CIRCUIT_BREAKERS = {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000, "max_retries": 100000}]}


@dataclass(frozen=True)
class SidecarTls:
    """Envoy's side of mutual TLS to a sidecar on TCP (PEM files)."""

    cert_file: str
    key_file: str
    ca_file: str  # the sidecar's server certificate chains to this


@dataclass(frozen=True)
class RenderOptions:
    sidecar: str = "unix:/run/extproc/sidecar.sock"  # `unix:/path`, or `host:port` (mutual TLS with `sidecar_tls`)
    sidecar_tls: SidecarTls | None = None
    admin_address: str = "127.0.0.1"  # or `unix:/path`
    admin_port: int = 9901
    message_timeout_s: float = 5.0
    ca_file: str | None = None  # None: the first system CA bundle found
    #: Envoy's heap budget for the overload manager; None: the config's `heap_budget_mb`. Fit it under the container's memory limit.
    max_heap_bytes: int | None = None
    #: A listener that serves only Envoy's Prometheus stats (`/stats/prometheus`, read from the admin API) for scraping; None: none.
    envoy_stats_port: int | None = None


#: What a config costs Envoy's heap, measured (`make bench-config`, docs/performance.md): about 0.15 MiB per provider
#: (its cluster, its chain's cluster with the upstream filters, its routes). The default budget gives each 0.25 MiB,
#: above a fixed 200 MiB for traffic, so a config of any size starts with room to serve.
HEAP_BASE_MB = 200
HEAP_PER_PROVIDER_MB = 0.25


def heap_budget_mb(config: Config) -> int:
    """The default heap budget (`--max-heap-mb`) for `config`: it grows with the providers, never shedding at start."""
    return HEAP_BASE_MB + math.ceil(HEAP_PER_PROVIDER_MB * len(config.providers))


def render(config: Config, options: RenderOptions = RenderOptions()) -> dict:
    """A self-contained bootstrap: routes and clusters inline (a restart applies changes)."""
    return _bootstrap(
        [_listener(config, listener, options, {"route_config": route_config(listener, [config])}) for listener in config.listeners],
        [*_fixed_clusters(config, options), *upstream_clusters([config], options)],
        options,
        config,
    )


def render_dynamic(config: Config, xds_dir: str, options: RenderOptions = RenderOptions()) -> dict:
    """A bootstrap whose routes (RDS) and provider clusters (CDS) come from files in `xds_dir`.

    The sidecar rewrites those files on every reload and Envoy applies them
    without a restart; only listeners (ports) are fixed at start.
    """
    listeners = [
        _listener(config, listener, options, {"rds": {"route_config_name": route_config_name(listener), "config_source": _file_source(rds_path(xds_dir, listener.name))}})
        for listener in config.listeners
    ]
    bootstrap = _bootstrap(listeners, _fixed_clusters(config, options), options, config)
    bootstrap["dynamic_resources"] = {"cds_config": _file_source(cds_path(xds_dir))}
    return bootstrap


def _fixed_clusters(config: Config, options: RenderOptions) -> list[dict]:
    """The clusters fixed at start: the sidecar's, the trace collector's when tracing is on, Envoy's admin when its stats are served."""
    clusters = [_sidecar_cluster(options, config.body_limit)]
    bulk = bulk_address(options.sidecar)
    if bulk is not None:
        clusters.append(_sidecar_cluster(options, config.body_limit, BULK_CLUSTER, bulk))
    if config.tracing.endpoint:
        clusters.append(trace_cluster(config.tracing, options.ca_file or _system_ca_bundle()))
    if options.envoy_stats_port is not None:
        admin = {"lb_endpoints": [{"endpoint": {"address": _admin_address(options)}}]}
        clusters.append({"name": ADMIN_CLUSTER, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": ADMIN_CLUSTER, "endpoints": [admin]}})
    return clusters


def _stats_listener(port: int) -> dict:
    """Envoy's Prometheus stats, and nothing else of the admin API (which can drain and reconfigure Envoy), for scraping."""
    routes = [
        {"match": {"path": "/stats/prometheus"}, "route": {"cluster": ADMIN_CLUSTER}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "only /stats/prometheus is served here\n"}}},
    ]
    hcm = {
        "@type": _HCM,
        "stat_prefix": "envoy_stats",
        "route_config": {"virtual_hosts": [{"name": "envoy_stats", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    return {
        "name": "envoy_stats",
        "address": _socket_address("0.0.0.0", port),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


def cds_path(xds_dir: str) -> str:
    """The clusters' file, in a directory of its own: Envoy re-reads every file source of a directory whenever
    anything is moved into it, and at 5,000 providers reading the clusters takes it ~4 s (each routes write did so)."""
    return os.path.join(xds_dir, "cds", "cds.json")


def rds_path(xds_dir: str, listener: str) -> str:
    return os.path.join(xds_dir, "rds", f"rds_{listener}.json")


def route_config_name(listener: Listener) -> str:
    return f"{listener.name}_routes"


def upstream_clusters(configs: Iterable[Config], options: RenderOptions = RenderOptions()) -> list[dict]:
    """A cluster per provider and an aggregate cluster per chain start, of every snapshot given (once per name)."""
    clusters: dict[str, dict] = {}
    for config in configs:
        body_limit = config.body_limit
        shared = shared_upstream_filters(options, body_limit)
        for provider in config.providers.values():
            clusters.setdefault(provider.cluster, _provider_cluster(provider, body_limit, options, config.connect_timeout_s))
        for start, chain in config.chains.items():
            name = config.chain_clusters[start]
            clusters.setdefault(name, _chain_cluster(name, config, chain, options, shared))
    return list(clusters.values())


def route_config(listener: Listener, configs: Iterable[Config]) -> dict:
    """A route per chain of every snapshot given, matching its start and cluster exactly, then the catch-all 400."""
    routes: dict[str, dict] = {}
    for config in configs:
        for start, chain in config.chains.items():
            name = config.chain_clusters[start]
            model = config.providers[start].model
            routes.setdefault(name, _chain_route(start, name, chain, listener, model))
            if chain.hedges:
                routes.setdefault(unhedged_route(name), _chain_route(start, name, chain.unhedged, listener, model, unhedged_route(name), UNHEDGED_TIMING))
    ordered = list(routes.values())
    ordered.append(
        {
            "name": "missing_provider_header",
            "match": {"prefix": "/"},
            "direct_response": {"status": 400, "body": {"inline_string": _error_json(MISSING_ROUTE_MESSAGE, "invalid_request_error", "missing_provider_header")}},
            "response_headers_to_add": [_set_header("content-type", "application/json")],
        }
    )
    return {
        "name": route_config_name(listener),
        "virtual_hosts": [
            {
                "name": listener.name,
                "domains": ["*"],
                "include_request_attempt_count": True,
                # Where a chain hedges, a retry says whether a per-try timeout started it (then it races the attempt before it).
                **({"include_is_timeout_retry_header": True} if any(chain.hedges for config in configs for chain in config.chains.values()) else {}),
                "request_body_buffer_limit": listener.max_body_bytes,
                # Routing is done: neither header goes to a provider (retries are rebuilt without them too).
                "request_headers_to_remove": [CHAIN_HEADER, ROUTE_HEADER],
                # Which provider answered (an answer no provider gave has none: an empty value is not added).
                "response_headers_to_add": [_set_header(ROUTE_HEADER, f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{PROVIDER_METADATA_KEY})%")],
                "routes": ordered,
            }
        ],
    }


def _file_source(path: str) -> dict:
    return {"path_config_source": {"path": path, "watched_directory": {"path": os.path.dirname(path)}}, "resource_api_version": "V3"}


def _bootstrap(listeners: list[dict], clusters: list[dict], options: RenderOptions, config: Config) -> dict:
    if options.envoy_stats_port is not None:
        listeners = [*listeners, _stats_listener(options.envoy_stats_port)]
    bootstrap = {
        "node": {"id": "extproc-gateway", "cluster": "extproc"},
        "admin": {"address": _admin_address(options)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        # A chain's aggregate cluster would keep ~150 statistics (~26 KB) that its providers' clusters and the
        # sidecar's metrics (failovers, attempts by outcome) already say: a third of Envoy's memory at 5,000 providers.
        "stats_config": {"stats_matcher": {"exclusion_list": {"patterns": [{"prefix": f"cluster.{CHAIN_CLUSTER_PREFIX}"}, _provider_stats_dropped()]}}},
        "overload_manager": {
            "refresh_interval": "0.25s",
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {"@type": _DOWNSTREAM_CONNECTIONS, "max_active_downstream_connections": 50000},
                },
                {"name": _FIXED_HEAP, "typed_config": {"@type": _FIXED_HEAP_CONFIG, "max_heap_size_bytes": options.max_heap_bytes or heap_budget_mb(config) * 1024 * 1024}},
            ],
            # Near the heap budget Envoy returns memory to the system, then refuses new requests (503) rather than be OOM-killed.
            "actions": [
                {"name": "envoy.overload_actions.shrink_heap", "triggers": [{"name": _FIXED_HEAP, "threshold": {"value": 0.90}}]},
                {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": [{"name": _FIXED_HEAP, "threshold": {"value": 0.98}}]},
            ],
        },
    }
    if config.tracing.endpoint:
        bootstrap["layered_runtime"] = {"layers": [{"name": "tracing", "static_layer": TRACE_RUNTIME}]}
    return bootstrap


#: Of a provider's cluster (one endpoint, no load balancing, generous circuit breakers) Envoy keeps its requests,
#: connections, resets, bytes, connect times and TLS; these other ~80 statistics (load balancing, membership,
#: updates, breakers, flow control, and what Envoy counts on the chain's cluster) would say nothing and cost
#: ~16 KB a provider. By name, or (ending in `.`/`_`) by prefix; Envoy matches a pattern to the whole name.
_PROVIDER_STATS_DROPPED = (
    "assignment_", "circuit_breakers.", "lb_", "membership_", "update_", "upstream_flow_control_", "upstream_internal_redirect_", "upstream_rq_retry_",
    "upstream_rq_retry", "bind_errors", "default.total_match_count", "max_host_weight", "original_dst_host_invalid", "retry_or_shadow_abandoned", "version",
    "warming_state", "upstream_http3_broken", "upstream_queue_overloaded", "upstream_cx_close_notify", "upstream_cx_connect_attempts_exceeded",
    "upstream_cx_connect_with_0_rtt", "upstream_cx_destroy", "upstream_cx_destroy_local", "upstream_cx_destroy_remote",
    "upstream_cx_destroy_with_active_rq", "upstream_cx_http1_total", "upstream_cx_http2_total", "upstream_cx_http3_total",
    "upstream_cx_idle_timeout", "upstream_cx_max_duration_reached", "upstream_cx_max_requests", "upstream_cx_none_healthy",
    "upstream_cx_pool_overflow", "upstream_cx_preconnect_skipped", "upstream_cx_rx_bytes_buffered", "upstream_cx_tx_bytes_buffered",
    "upstream_cx_length_ms", "upstream_rq_0rtt", "upstream_rq_active_overflow", "upstream_rq_maintenance_mode",
    "upstream_rq_max_duration_reached", "upstream_rq_pending_failure_eject", "upstream_rq_pending_overflow", "upstream_rq_pending_total",
    "upstream_rq_per_try_idle_timeout", "upstream_rq_rx_reset_no_error", "upstream_rq_per_cx",
    # Counted on the route's cluster (the chain's), never on a provider's behind it.
    "upstream_rq_completed", "upstream_rq_timeout", "upstream_rq_per_try_timeout",
)


def _provider_stats_dropped() -> dict:
    names = "|".join(re.escape(name) + (".*" if name.endswith((".", "_")) else "") for name in _PROVIDER_STATS_DROPPED)
    provider = re.escape(f"cluster.{PROVIDER_CLUSTER_PREFIX}")
    return {"safe_regex": {"regex": rf"{provider}.+\.[0-9a-f]{{{FINGERPRINT_LENGTH}}}\.({names})"}}


def render_yaml(config: Config, options: RenderOptions = RenderOptions(), xds_dir: str | None = None) -> str:
    header = f"# Rendered by `extproc render` from {config.source} (`make envoy-config`). Do not edit: edit the YAML and render again.\n"
    bootstrap = render(config, options) if xds_dir is None else render_dynamic(config, xds_dir, options)
    return header + to_yaml(bootstrap)


class _Dumper(yaml.SafeDumper):
    """Writes a piece of config used in several places out in full each time (no `&id001` anchors for a reader to chase)."""

    def ignore_aliases(self, data) -> bool:
        return True


def to_yaml(document: dict) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120)


def _admin_address(options: RenderOptions) -> dict:
    """Admin on `host:port`, or on a Unix socket (`unix:/path`, mode 0600) that only the pod's user reaches."""
    if options.admin_address.startswith("unix:"):
        return {"pipe": {"path": options.admin_address.removeprefix("unix:"), "mode": 0o600}}
    return _socket_address(options.admin_address, options.admin_port)


def _socket_address(address: str, port: int) -> dict:
    return {"socket_address": {"address": address, "port_value": port}}


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _sidecar_cluster(options: RenderOptions, body_limit: int, name: str = SIDECAR_CLUSTER, sidecar: str | None = None) -> dict:
    """The sidecar's gRPC cluster. Its connections buffer a whole message: Envoy 1.40 crashes on a message
    from the sidecar larger than the connection's buffer limit (1 MiB by default; docs/envoy-behaviour.md)."""
    sidecar = sidecar or options.sidecar
    if sidecar.startswith("unix:"):
        address = {"pipe": {"path": sidecar.removeprefix("unix:").removeprefix("//")}}
    else:
        host, _, port = sidecar.rpartition(":")
        address = _socket_address(host.strip("[]") or "127.0.0.1", int(port))
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS_KEY: {"@type": _HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}
        },
        "circuit_breakers": CIRCUIT_BREAKERS,
        "per_connection_buffer_limit_bytes": message_limit(body_limit),
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]},
    }
    tls = options.sidecar_tls
    if tls is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TLS,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [{"certificate_chain": {"filename": tls.cert_file}, "private_key": {"filename": tls.key_file}}],
                    "validation_context": {"trusted_ca": {"filename": tls.ca_file}},
                },
            },
        }
    return cluster


def _whole_body(listener: Listener) -> dict:
    """Envoy takes in the whole request before the sidecar hears of it.

    A client that trickles its body then costs only its own request (Envoy's
    buffer), never a sidecar stream or a bulk-lane thread waiting on it;
    past `max_body_bytes` Envoy answers 413 itself (JSON, `_local_replies`).
    A CONNECT has no body to wait for (its stream stays open): it goes on to
    the sidecar, which refuses it at once.
    """
    buffer = {"name": "envoy.filters.http.buffer", "typed_config": {"@type": _BUFFER, "max_request_bytes": listener.max_body_bytes}}
    connect = {"single_predicate": {"input": header_input(":method"), "value_match": {"exact": "CONNECT"}}}
    return only_when("extproc.whole_body", {"not_matcher": connect}, "buffer", buffer)


def _router_ext_proc(options: RenderOptions, listener: Listener) -> dict:
    """The router-level ext_proc, in three lanes picked by `content-length` (a composite filter).

    - small (`SMALL_CONTENT_LENGTH`): the sidecar receives the request headers
      and what Envoy found in the body (`render_body.find_model`), not the body; it asks
      for the body (a mode override) only when Envoy found no model;
    - large (7 digits or more, beside a Unix-socket sidecar): the bulk lane,
      so a large body never passes through the event loop that serves the
      other requests;
    - the rest: the body with the headers, as Envoy's JSON parser would cost
      its worker more than the sidecar's message (bench/find_model.py).
    """
    found = _ext_proc("router", options, listener.max_body_bytes, listener.name, body_mode="NONE")
    main = _ext_proc("router", options, listener.max_body_bytes, listener.name)
    lanes = [{"predicate": small_request(), "on_match": execute("found", found)}]
    if bulk_address(options.sidecar) is not None:
        bulk = _ext_proc("router", options, listener.max_body_bytes, listener.name, BULK_CLUSTER)
        lanes.append({"predicate": large_request(), "on_match": execute("bulk", bulk)})
    return composite("extproc.router", {"matcher_list": {"matchers": lanes}, "on_no_match": execute("main", main)})


def _ext_proc(
    phase: str, options: RenderOptions, body_limit: int, listener: str | None = None, cluster: str = SIDECAR_CLUSTER, body_mode: str = "BUFFERED"
) -> dict:
    metadata = [{"key": PHASE_METADATA, "value": phase}]
    if listener is not None:
        metadata.append({"key": LISTENER_METADATA, "value": listener})
    config = {
        "@type": _EXT_PROC,
        "grpc_service": {
            "envoy_grpc": {"cluster_name": cluster, "max_receive_message_length": message_limit(body_limit)},
            "initial_metadata": metadata,
        },
        "failure_mode_allow": False,
        "status_on_error": {"code": 503},
        "message_timeout": _duration(options.message_timeout_s),
        "processing_mode": _processing_mode(request_body=body_mode),
    }
    if phase == "router":
        namespaces: dict = {"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}}
        config["metadata_options"] = namespaces
        # The router level drops a client's own x-envoy-* headers (x-envoy-original-path, …).
        config["mutation_rules"] = {"allow_envoy": True}
        if body_mode == "NONE":  # the model comes from Envoy; the body only when Envoy found none
            namespaces["forwarding_namespaces"] = {"untyped": [BODY_NAMESPACE]}
            config["allow_mode_override"] = True
        else:  # the headers decide nothing that the body must wait for: save a round trip
            config["send_body_without_waiting_for_header_response"] = True
    else:
        # The request's context, and where Envoy found the model (the context's span may be relative to it).
        config["metadata_options"] = {"forwarding_namespaces": {"untyped": [METADATA_NAMESPACE, BODY_NAMESPACE]}, "receiving_namespaces": {"untyped": [ATTEMPT_NAMESPACE]}}
        config["request_attributes"] = [HOST_METADATA_ATTRIBUTE]
        # The body and the answer only for a translated attempt (mode overrides); a failed answer is the failed phase's.
        config["allow_mode_override"] = True
    return {"name": "envoy.filters.http.ext_proc", "typed_config": config}


def _processing_mode(request_headers: str = "SEND", request_body: str = "NONE", response_headers: str = "SKIP", response_body: str = "NONE") -> dict:
    """An ext_proc processing mode; trailers are never sent (no decision reads them)."""
    return {
        "request_header_mode": request_headers,
        "request_body_mode": request_body,
        "request_trailer_mode": "SKIP",
        "response_header_mode": response_headers,
        "response_body_mode": response_body,
        "response_trailer_mode": "SKIP",
    }


def _listener(config: Config, listener: Listener, options: RenderOptions, routes: dict) -> dict:
    token_usage = config.metrics.token_usage
    tracing = config.tracing.endpoint is not None
    # Each answer's Retry-After and, when cooldowns read them, its rate-limit headers reach the sidecar in the log entries.
    logged = ("retry-after", "retry-after-ms", *(RATE_LIMIT_HEADERS if config.cooldown.rate_limit_headers else ()))
    router = {
        "@type": _ROUTER,
        "suppress_envoy_headers": True,
        "upstream_log": [_failed_attempts_log(listener, logged)],
        "upstream_http_filters": shared_upstream_filters(options, config.body_limit),
    }
    hcm = {
        "@type": _HCM,
        "stat_prefix": listener.name,
        "codec_type": "AUTO",
        **routes,
        # Request ids are Envoy's own (failover tracking keys on them), echoed to the client.
        "use_remote_address": True,
        "internal_address_config": {"unix_sockets": False, "cidr_ranges": [_NO_ADDRESS]},
        "preserve_external_request_id": False,
        "always_set_request_id_in_response": True,
        # Paths: `//` merged; escaped slashes refused; dot-segments refused by the sidecar (400 invalid_path).
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "request_headers_timeout": "10s",
        # A stream stalled mid-answer ends here (counted against its provider as a timeout), not at the route's timeout.
        "stream_idle_timeout": _duration(listener.stream_idle_timeout_s),
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST", "max_headers_count": CLIENT_HEADER_LIMIT + HEADER_HEADROOM},
        "http_filters": [
            *(usage_filters(listener.max_body_bytes) if token_usage else ()),
            _whole_body(listener),
            *find_model(),
            _router_ext_proc(options, listener),
            model_patch(METADATA_NAMESPACE),
            {"name": "envoy.filters.http.router", "typed_config": router},
        ],
        "access_log": [_access_log(DOWNSTREAM_LOG, listener, logged, extra_tags=usage_tags() if token_usage else (), log_filter=_REQUESTS_ONLY)]
        + ([_stdout_access_log(token_usage)] if listener.access_log else []),
        "local_reply_config": _local_replies(),
    }
    if tracing:
        hcm["tracing"] = hcm_tracing(config.tracing)
    return {
        "name": listener.name,
        "address": _socket_address(listener.address, listener.port),
        "per_connection_buffer_limit_bytes": listener.max_body_bytes + 65536,
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


def _chain_route(start: str, cluster: str, chain: Chain, listener: Listener, model: str, name: str | None = None, timing: str | None = None) -> dict:
    """The route of the chain starting at `start`, matched by its routing headers (`name`: the cluster's unless given).

    `timing` (the chain's unless given) tells the failed-attempts log what its attempts came to.
    """
    name = name or cluster
    timing = chain.policy.timing if timing is None else timing
    action: dict = {
        "cluster": cluster,
        "timeout": _duration(listener.timeout_s),
        "auto_host_rewrite": True,
    }
    retry = _retry_policy(chain)
    if retry is not None:
        action["retry_policy"] = retry
    if chain.hedges:
        # An attempt past `hedge_after` is not reset: the next one starts beside it and the first answer wins.
        action["hedge_policy"] = {"hedge_on_per_try_timeout": True}
    route = {
        "name": name,
        "match": {
            "prefix": "/",
            "headers": [{"name": ROUTE_HEADER, "string_match": {"exact": start}}, {"name": CHAIN_HEADER, "string_match": {"exact": name}}],
        },
        "route": action,
        # The request's span is named for the model it asked for (Envoy's default name is "ingress").
        "decorator": {"operation": f"llm {model}"},
    }
    if timing:  # read by the failed-attempts log: what a timed-out or unanswered attempt came to, and whether it was watched
        route["metadata"] = {"filter_metadata": {METADATA_NAMESPACE: {TIMING_METADATA_KEY: timing}}}
    return route


def _retry_policy(chain: Chain) -> dict | None:
    """Failover to the next provider; a chain with nothing to fail over to keeps only its `per_try_timeout`.

    (A chain of one provider, or one started at its last provider because the
    others are cooling down, must still time out as configured.)
    """
    policy = chain.policy
    conditions = list(policy.conditions)
    # Anthropic's 529 (overloaded) is its 429: wherever 429 fails over, so does 529. A key the gateway owns that is
    # refused (401, 403) fails over too; a client's own credential refused does not move to the gateway's keys.
    statuses = [*policy.status_codes]
    statuses += [OVERLOADED] if 429 in statuses and OVERLOADED not in statuses else []
    statuses += [status for status in AUTH_STATUSES if status not in statuses] if chain.owns_keys else []
    if statuses:
        conditions.append("retriable-status-codes")
    if policy.first_token_timeout_s is not None and "reset" not in conditions:
        conditions.append("reset")  # Envoy retries a per-try timeout (an abandoned attempt) only on a reset condition
    timeout = policy.attempt_timeout_s
    if not conditions or chain.num_retries == 0:
        return {"num_retries": 0, "per_try_timeout": _duration(timeout)} if timeout else None
    retry: dict = {
        "retry_on": ",".join(conditions),
        "num_retries": chain.num_retries,
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {"@type": _PREVIOUS_PRIORITIES, "update_frequency": 1},
        },
        # Failing over goes to another provider: no reason to wait between attempts.
        "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.005s"},
    }
    if statuses:
        retry["retriable_status_codes"] = statuses
    if timeout:
        retry["per_try_timeout"] = _duration(timeout)
    return retry


def _failed_attempts_log(listener: Listener, response_headers: Iterable[str]) -> dict:
    """Every attempt that did not succeed (status >= 400, or no response), one entry each, unbatched.

    Envoy sends it as the attempt ends, before it retries: a 429 is known to
    the sidecar before the retry's own stream starts (see `Observer`).
    Succeeding attempts are left out (the request's entry covers them), so the
    plain path costs no entry here. Keep the filter in step with `observer.succeeded`.
    """
    failed = {
        "or_filter": {
            "filters": [
                {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "extproc.failed_attempt.min_status"}}}},
                {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 0, "runtime_key": "extproc.failed_attempt.no_response"}}}},
            ]
        }
    }
    attempt = {"tag": ATTEMPT_TAG, "request_header": {"name": "x-envoy-attempt-count"}}
    timing = {"tag": TIMING_TAG, "metadata": {"kind": {"route": {}}, "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": TIMING_METADATA_KEY}]}}}
    group = {"tag": GROUP_TAG, "metadata": {"kind": {"host": {}}, "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": GROUP_METADATA_KEY}]}}}
    return _access_log(UPSTREAM_LOG, listener, response_headers, buffer_bytes=0, extra_tags=[attempt, timing, group], log_filter=failed)


def _access_log(
    log_name: str, listener: Listener, response_headers: Iterable[str], buffer_bytes: int = 16384, extra_tags: Iterable[dict] = (), log_filter: dict | None = None
) -> dict:
    """Entries reported to the sidecar, off the request path.

    Request entries are batched for at most 20 ms (or 16 KiB): totals only
    need to arrive, at a fraction of the cost of one gRPC message per entry.
    """
    tags = [
        {"tag": PROVIDER_TAG, "metadata": {"kind": {"host": {}}, "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": PROVIDER_METADATA_KEY}]}}},
        {"tag": MODEL_TAG, "metadata": {"kind": {"request": {}}, "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": MODEL_METADATA_KEY}]}}},
        {"tag": LISTENER_TAG, "literal": {"value": listener.name}},
        *extra_tags,
    ]
    logger = {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": _GRPC_ACCESS_LOG,
            "common_config": {
                "log_name": log_name,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": SIDECAR_CLUSTER}},
                "buffer_size_bytes": buffer_bytes,
                "buffer_flush_interval": "0.020s",
                "custom_tags": tags,
            },
            "additional_response_headers_to_log": list(response_headers),
        },
    }
    if log_filter is not None:
        logger["filter"] = log_filter
    return logger


#: Request entries only: not a connection that closed before a request (a port check, a half-sent head), which has neither.
_REQUESTS_ONLY = {
    "or_filter": {
        "filters": [
            {"header_filter": {"header": {"name": ":method", "present_match": True}}},
            {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 1, "runtime_key": "extproc.access_log.min_status"}}}},
        ]
    }
}


def _stdout_access_log(token_usage: bool) -> dict:
    """One JSON line per request for people: which model, which provider answered, after how many attempts.

    Written by Envoy itself; it never holds header values, so no key can leak into it.
    """
    fields = {
        "time": "%START_TIME%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "method": "%REQ(:METHOD)%",
        "path": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{PATH_METADATA_KEY})%",  # the client's: `:path` is the last attempt's by now
        "model": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{MODEL_METADATA_KEY})%",
        "provider": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{PROVIDER_METADATA_KEY})%",
        "group": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{GROUP_METADATA_KEY})%",
        "provider_model": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{PROVIDER_MODEL_METADATA_KEY})%",
        "status": "%RESPONSE_CODE%",
        "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        "duration_ms": "%DURATION%",
        "flags": "%RESPONSE_FLAGS%",
        "details": "%RESPONSE_CODE_DETAILS%",
    }
    if token_usage:
        fields[INPUT_TOKENS] = f"%DYNAMIC_METADATA({USAGE_NAMESPACE}:{INPUT_TOKENS})%"
        fields[OUTPUT_TOKENS] = f"%DYNAMIC_METADATA({USAGE_NAMESPACE}:{OUTPUT_TOKENS})%"
    return {
        "name": "envoy.access_loggers.stdout",
        "filter": _REQUESTS_ONLY,
        "typed_config": {"@type": _STDOUT_ACCESS_LOG, "log_format": {"json_format": fields}},
    }


def _local_replies() -> dict:
    """Envoy's own error replies as JSON: body too large, a request it could not read, sidecar or providers unreachable.

    The sidecar's own answers (local replies too, known by their details)
    keep their body. OpenAI's error shape, or Anthropic's for a client of its API (a
    `/v1/messages` path: the client's, from the router level's metadata, or
    `:path` when the router level never ran). "Could not read" is a 4xx Envoy
    answered before a request id was given, i.e. before any filter ran
    (header too large, an underscore in a header name, an escaped slash in
    the path): the sidecar's and the routes' own 4xx answers carry an id and
    are JSON already.
    """

    def mapper(status_filter: dict, type_: str, code: str, message: str, unread: bool = False, anthropic_type: str | None = None) -> dict:
        filters: list[dict] = [{"status_code_filter": {"comparison": status_filter}}, _NOT_THE_SIDECARS]
        if unread:
            filters.append({"header_filter": {"header": {"name": "x-request-id", "present_match": True, "invert_match": True}}})
        if anthropic_type is not None:
            filters.append(_ANTHROPIC_CLIENT)
            body = {"type": "error", "error": {"type": anthropic_type, "message": message}}
        else:
            body = {"error": {"message": message, "type": type_, "param": None, "code": code, "details": "%RESPONSE_CODE_DETAILS%"}}
        return {
            "filter": {"and_filter": {"filters": filters}},
            "body_format_override": {"json_format": body, "content_type": "application/json"},
        }

    too_large = {"op": "EQ", "value": {"default_value": 413, "runtime_key": "extproc.local_reply.too_large"}}
    client_error = {"op": "GE", "value": {"default_value": 400, "runtime_key": "extproc.local_reply.client_error"}}
    server_error = {"op": "GE", "value": {"default_value": 500, "runtime_key": "extproc.local_reply.server_error"}}
    replies = (
        (too_large, "invalid_request_error", "request_too_large", "The request body is over this gateway's size limit.", False, "request_too_large"),
        (server_error, "api_error", "gateway_error", "The gateway could not complete the request. %LOCAL_REPLY_BODY%", False, "api_error"),
        (client_error, "invalid_request_error", "invalid_request", "The gateway could not read this request (%LOCAL_REPLY_BODY%).", True, "invalid_request_error"),
    )
    return {
        "mappers": [
            *(mapper(status, type_, code, message, unread, anthropic) for status, type_, code, message, unread, anthropic in replies),
            *(mapper(status, type_, code, message, unread) for status, type_, code, message, unread, _ in replies),
        ]
    }


def _cel(expression: str) -> dict:
    """An access-log filter on a CEL expression (the local-reply mappers' filters are access-log filters)."""
    return {"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {"@type": _CEL_FILTER, "expression": expression}}}


#: A local reply the sidecar did not make (its own, at either level, have these details: `streams.immediate`).
_NOT_THE_SIDECARS = _cel(f"response.code_details != '{SIDECAR_REPLY_DETAILS}'")


def _anthropic_path(match_if_absent: bool) -> dict:
    matcher = {"filter": METADATA_NAMESPACE, "path": [{"key": PATH_METADATA_KEY}], "value": {"string_match": {"prefix": MESSAGES}}}
    return {"metadata_filter": {"matcher": matcher, "match_if_key_not_found": match_if_absent}}


#: A client of Anthropic's API: its path (as the router level recorded it) is `/v1/messages`, or, when the router level never ran, `:path` is.
_ANTHROPIC_CLIENT = {
    "or_filter": {
        "filters": [
            _anthropic_path(match_if_absent=False),
            {"and_filter": {"filters": [_anthropic_path(match_if_absent=True), {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": MESSAGES}}}}]}},
        ]
    }
}


def _error_json(message: str, type_: str, code: str) -> str:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def _set_header(name: str, value: str) -> dict:
    return {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _provider_cluster(provider: Provider, body_limit: int, options: RenderOptions, connect_timeout_s: float) -> dict:
    name = provider.cluster
    endpoint = {
        "endpoint": {"address": _socket_address(provider.host, provider.port), "hostname": provider.authority},
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
        "connect_timeout": _duration(connect_timeout_s),
        "per_connection_buffer_limit_bytes": body_limit + 65536,
        "circuit_breakers": CIRCUIT_BREAKERS,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }
    if _is_ip(provider.host):
        cluster["type"] = "STATIC"
    else:
        cluster["type"] = "LOGICAL_DNS"
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if provider.tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TLS,
                # An IP literal is not a server name: no SNI, and the certificate must name the address (IP SAN).
                **({} if _is_ip(provider.host) else {"sni": provider.host}),
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": provider.ca_file or options.ca_file or _system_ca_bundle()},
                        "match_typed_subject_alt_names": [{"san_type": "IP_ADDRESS" if _is_ip(provider.host) else "DNS", "matcher": {"exact": provider.host}}],
                    }
                },
            },
        }
    return cluster


def _chain_cluster(name: str, config: Config, chain: Chain, options: RenderOptions, shared: list[dict]) -> dict:
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
    filters = _upstream_filters(config, chain, options)
    if filters != shared:
        # Upstream filters run from the route's cluster, i.e. here, once per attempt; a cluster without its own runs the router's.
        cluster["typed_extension_protocol_options"] = {
            _HTTP_OPTIONS_KEY: {"@type": _HTTP_OPTIONS, "explicit_http_config": {"http_protocol_options": {}}, "http_filters": filters}
        }
    return cluster


def shared_upstream_filters(options: RenderOptions, body_limit: int) -> list[dict]:
    """The upstream filters of a chain that neither hedges nor times its first token, with cooldowns on: the bulk of
    a large config. Declared once, on the router; a chain that needs others declares its own on its cluster (Envoy
    runs a cluster's own instead of the router's)."""
    return [
        _failed_answers(options),
        _retries_only("extproc.retries", _ext_proc("upstream", options, body_limit, body_mode="NONE")),
        _retries_only("extproc.model_patch", model_patch(ATTEMPT_NAMESPACE)),
        _UPSTREAM_CODEC,
    ]


def _upstream_filters(config: Config, chain: Chain, options: RenderOptions) -> list[dict]:
    """What each attempt of `chain` passes through: the failed-answer watch, the first-token hold, the retry's rebuild, the model patch."""
    if chain.hedges:  # Envoy marks every attempt, the first too: the patch's Lua strips the mark from each
        patch = model_patch(ATTEMPT_NAMESPACE, strip=(TIMEOUT_RETRY_HEADER,))
    else:
        patch = _retries_only("extproc.model_patch", model_patch(ATTEMPT_NAMESPACE))
    return [
        *([_failed_answers(options)] if config.cooldown.enabled and not chain.hedges else []),
        *([_first_token_hold(options, config)] if chain.policy.timing else []),
        _retries_only("extproc.retries", _ext_proc("upstream", options, config.body_limit, body_mode="NONE")),
        patch,
        _UPSTREAM_CODEC,
    ]


_UPSTREAM_CODEC = {"name": "envoy.filters.http.upstream_codec", "typed_config": {"@type": _CODEC}}


def _failed_answers(options: RenderOptions) -> dict:
    """Shows the sidecar each attempt's answer that moves its provider's state (429, 529, 5xx) before Envoy acts on it.

    The sidecar records the outcome before it answers, and Envoy neither
    retries nor passes the answer on before that: when a client holds the
    answer, or the next attempt starts, the cooldown is known, whichever
    attempt of whichever chain it was. Chosen on the answer's `:status` (a
    composite), so an answer that succeeds costs no message. Listed first: its
    answer's headers come to it last, as the router will see them. With
    cooldowns off nothing needs knowing sooner: not rendered (the access log counts).

    Nor on a chain that hedges (docs/envoy-behaviour.md): Envoy 1.40 crashes
    when an upstream filter releases a held failed answer while another
    attempt is in flight, and an upstream filter sees the latest attempt's
    host whichever attempt answered. Each attempt's log entry names its own
    provider: those chains' failed answers are recorded from them.
    """
    watch = _answer_phase("failed", options.message_timeout_s, response_attributes=[HOST_METADATA_ATTRIBUTE])
    failed = {"input": header_input(":status", response=True), "value_match": {"safe_regex": {"google_re2": {}, "regex": FAILED_STATUS}}}
    return only_when("extproc.failed", {"single_predicate": failed}, "watch", watch)


def _first_token_hold(options: RenderOptions, config: Config) -> dict:
    """Holds an event stream's response headers at the sidecar until its first token (the "hold" phase).

    Until Envoy's router has the headers it has sent the client nothing, so
    the per-try timeout can still abandon (or hedge) the attempt. Chosen on
    the answer's headers (a composite on content-type), so a JSON answer or
    an error passes untouched; the sidecar gets the headers and, without
    waiting for its reply, the first chunks; it answers all of them once one
    holds a token and ends the stream, so the rest flows past it.
    """
    hold = _answer_phase(
        "hold",
        # The sidecar answers the headers only when the first token came: Envoy's per-try and route timeouts bound the wait.
        max((listener.timeout_s for listener in config.listeners), default=options.message_timeout_s),
        response_body="STREAMED",
        send_body_without_waiting_for_header_response=True,
    )
    stream = {"input": header_input("content-type", response=True), "value_match": {"prefix": "text/event-stream"}}
    return only_when("extproc.first_token", {"single_predicate": stream}, "hold", hold)


def _answer_phase(phase: str, message_timeout_s: float, response_body: str = "NONE", **fields) -> dict:
    """An upstream ext_proc that starts at an attempt's answer (a composite delegates it on the answer's headers).

    The provider has answered: a sidecar that cannot take part lets the
    answer go on unchanged, never turns it into an error (`failure_mode_allow`).
    """
    config = {
        "@type": _EXT_PROC,
        "grpc_service": {"envoy_grpc": {"cluster_name": SIDECAR_CLUSTER}, "initial_metadata": [{"key": PHASE_METADATA, "value": phase}]},
        "failure_mode_allow": True,
        "message_timeout": _duration(message_timeout_s),
        "processing_mode": _processing_mode(request_headers="SKIP", response_headers="SEND", response_body=response_body),
        **fields,
    }
    return {"name": "envoy.filters.http.ext_proc", "typed_config": config}


def _retries_only(name: str, http_filter: dict) -> dict:
    """Run `http_filter` on retries only (`x-envoy-attempt-count` 2, 3, …), and on an attempt 1 the router marked for translation.

    The router level already made the request right for the chain's first
    provider, so attempt 1 needs no second gRPC stream (nor a patch), unless
    that provider speaks another API than the client (any chain may: an OpenAI
    client and an Anthropic provider, or the reverse); a retry must be rebuilt
    for its own provider. One predicate for every retry, however long the chain.
    """
    marked = {"single_predicate": {"input": header_input(TRANSLATE_HEADER), "value_match": {"exact": "1"}}}
    retry = {"single_predicate": {"input": header_input("x-envoy-attempt-count"), "value_match": {"safe_regex": {"google_re2": {}, "regex": RETRY_ATTEMPT}}}}
    return only_when(name, {"or_matcher": {"predicate": [marked, retry]}}, "rebuild", http_filter)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _system_ca_bundle() -> str:
    return next((path for path in CA_BUNDLES if os.path.exists(path)), CA_BUNDLES[0])
