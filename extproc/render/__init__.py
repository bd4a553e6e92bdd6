"""Render the Envoy bootstrap for a config: listeners, routes, chain and provider clusters.

The shape (docs/envoy-behaviour.md says which Envoy behaviour each piece rests on, and which test holds it):

- per listener, an HCM whose router-level ext_proc picks the chain and sets
  `x-arch-llm-provider` (from the headers and the model Envoy found in the
  body, `body.find_model`, for most requests); one route per chain start
  matches that header exactly; a catch-all answers 400 so an unrouted request
  fails loudly (`listener`, `routes`, `replies`);
- per provider, a cluster `provider.<name>.<hash of its host and TLS>` whose
  one endpoint carries the provider's name and cluster in its metadata (so the
  upstream level and the response header can tell which provider, and which
  host, an attempt went to); per chain start, an aggregate cluster
  `chain.<name>.<hash of its members>` over those providers in order, retried
  with `previous_priorities` so each retry moves to the next provider
  (`clusters`);
- the upstream filters each attempt runs, declared once on the router and only
  by a chain that needs others on its own cluster (`upstream`); the sidecar's
  clusters and ext_proc filters (`sidecar`); access logs (`logs`), traces and
  token usage (`telemetry`); the bootstrap around them (`bootstrap`).

Names change whenever what they stand for changes, so a reload adds new
clusters and routes beside the old ones and never repoints one in place.
"""

from .bootstrap import cds_path, heap_budget_mb, rds_path, render, render_dynamic, render_yaml, to_yaml
from .clusters import upstream_clusters
from .options import RenderOptions, SidecarTls
from .routes import MISSING_ROUTE_MESSAGE, route_config, route_config_name

__all__ = [
    "MISSING_ROUTE_MESSAGE",
    "RenderOptions",
    "SidecarTls",
    "cds_path",
    "heap_budget_mb",
    "rds_path",
    "render",
    "render_dynamic",
    "render_yaml",
    "route_config",
    "route_config_name",
    "to_yaml",
    "upstream_clusters",
]
