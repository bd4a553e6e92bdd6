"""The bootstrap around listeners and clusters: admin, overload manager, statistics kept, static or file-based (xDS) routes and clusters."""

from __future__ import annotations

import math
import os
import re

import yaml

from ..config import Config
from ..config.model import CHAIN_CLUSTER_PREFIX, FINGERPRINT_LENGTH, PROVIDER_CLUSTER_PREFIX
from ..contract import bulk_address
from .clusters import system_ca_bundle, upstream_clusters
from .listener import HCM, ROUTER, http_listener
from .options import RenderOptions
from .routes import route_config, route_config_name
from .sidecar import BULK_CLUSTER, sidecar_cluster
from .telemetry import TRACE_RUNTIME, trace_cluster
from .values import socket_address

ADMIN_CLUSTER = "envoy_admin"
_DOWNSTREAM_CONNECTIONS = "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
_FIXED_HEAP = "envoy.resource_monitors.fixed_heap"
_FIXED_HEAP_CONFIG = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"


#: What a config costs Envoy's heap, measured (`make bench-config`, docs/performance.md): about 65 KB per provider
#: (its cluster, its chain's cluster, its routes), up to ~0.25 MiB in a chain with upstream filters of its own (one
#: that hedges or times its first token). The default budget gives each 0.25 MiB, above a fixed 200 MiB for traffic,
#: so a config of any size starts with room to serve.
HEAP_BASE_MB = 200
HEAP_PER_PROVIDER_MB = 0.25


def heap_budget_mb(config: Config) -> int:
    """The default heap budget (`--max-heap-mb`) for `config`: it grows with the providers, never shedding at start."""
    return HEAP_BASE_MB + math.ceil(HEAP_PER_PROVIDER_MB * len(config.providers))


def render(config: Config, options: RenderOptions = RenderOptions()) -> dict:
    """A self-contained bootstrap: routes and clusters inline (a restart applies changes)."""
    return _bootstrap(
        [http_listener(config, listener, options, {"route_config": route_config(listener, [config])}) for listener in config.listeners],
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
        http_listener(config, listener, options, {"rds": {"route_config_name": route_config_name(listener), "config_source": _file_source(rds_path(xds_dir, listener.name))}})
        for listener in config.listeners
    ]
    bootstrap = _bootstrap(listeners, _fixed_clusters(config, options), options, config)
    bootstrap["dynamic_resources"] = {"cds_config": _file_source(cds_path(xds_dir))}
    return bootstrap


def _fixed_clusters(config: Config, options: RenderOptions) -> list[dict]:
    """The clusters fixed at start: the sidecar's, the trace collector's when tracing is on, Envoy's admin when its stats are served."""
    clusters = [sidecar_cluster(options, config.body_limit)]
    bulk = bulk_address(options.sidecar)
    if bulk is not None:
        clusters.append(sidecar_cluster(options, config.body_limit, BULK_CLUSTER, bulk))
    if config.tracing.endpoint:
        clusters.append(trace_cluster(config.tracing, options.ca_file or system_ca_bundle()))
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
        "@type": HCM,
        "stat_prefix": "envoy_stats",
        "route_config": {"virtual_hosts": [{"name": "envoy_stats", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "name": "envoy_stats",
        "address": socket_address("0.0.0.0", port),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


def cds_path(xds_dir: str) -> str:
    """The clusters' file, in a directory of its own: Envoy re-reads every file source of a directory whenever
    anything is moved into it, and at 5,000 providers reading the clusters takes it ~4 s (each routes write did so)."""
    return os.path.join(xds_dir, "cds", "cds.json")


def rds_path(xds_dir: str, listener: str) -> str:
    return os.path.join(xds_dir, "rds", f"rds_{listener}.json")


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
    """Writes a piece of config used in several places out in full each time (no `&id001` anchors for a reader to chase),
    and a program (Lua) as the block of lines it is, not one escaped string."""

    def ignore_aliases(self, data) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _text)


def to_yaml(document: dict) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120)


def _admin_address(options: RenderOptions) -> dict:
    """Admin on `host:port`, or on a Unix socket (`unix:/path`, mode 0600) that only the pod's user reaches."""
    if options.admin_address.startswith("unix:"):
        return {"pipe": {"path": options.admin_address.removeprefix("unix:"), "mode": 0o600}}
    return socket_address(options.admin_address, options.admin_port)
