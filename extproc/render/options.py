"""How a bootstrap is rendered for where it runs: the sidecar's address, the admin address, timeouts, the heap budget."""

from __future__ import annotations

from dataclasses import dataclass


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
