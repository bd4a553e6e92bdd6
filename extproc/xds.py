"""Envoy's routes and provider clusters as files Envoy watches (filesystem xDS).

A reload must never leave Envoy with a route to a cluster it does not have, or
the sidecar naming a route Envoy does not have. So a transition goes through
the union of the old and new resources:

1. clusters = old ∪ new, then routes = old ∪ new (both confirmed applied);
2. the sidecar swaps to the new snapshot: new requests name new routes only;
3. routes = new, then clusters = new.

Each file is written whole to a temporary name and renamed into place, which
is what Envoy's directory watch picks up. When Envoy's admin address is known
(`extproc up`) each step waits until Envoy reports the new version; otherwise
(`extproc serve` beside a separate Envoy) it waits a fixed settle time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable

from . import envoyadmin
from .config import Config
from .render import RenderOptions, cds_path, rds_path, route_config, route_config_name, to_yaml, upstream_clusters

log = logging.getLogger(__name__)

_CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_ROUTES_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


class XdsRejected(RuntimeError):
    """Envoy refused new routes or clusters; the previous ones stay."""


def _number(stats: dict, name: str) -> int:
    return int(stats.get(name, 0) or 0)


class XdsFiles:
    def __init__(self, directory: str, options: RenderOptions, admin_url: Callable[[], str] = str, settle_s: float = 1.0, timeout_s: float = 10.0):
        self.directory = directory
        self.options = options
        self.admin_url = admin_url
        self.settle_s = settle_s
        self.timeout_s = timeout_s
        self.version = int(time.time() * 1000)  # monotonic across sidecar restarts sharing the directory
        os.makedirs(directory, exist_ok=True)

    def write(self, config: Config, previous: Config | None = None) -> None:
        """Write the files for `config` (merged with `previous`, when given) without waiting."""
        self.version += 1
        self._write_clusters(config, previous)
        self._write_routes(config, previous)

    async def transition(self, old: Config, new: Config, swap: Callable[[], None]) -> None:
        """Move Envoy and the sidecar from `old` to `new`; `XdsRejected` leaves both on `old`."""
        try:
            await self._step(lambda: self._write_clusters(new, old), "cds", new)
            await self._step(lambda: self._write_routes(new, old), "rds", new)
        except XdsRejected:
            self.write(old)
            raise
        swap()
        await self._step(lambda: self._write_routes(new, None), "rds", new)
        await self._step(lambda: self._write_clusters(new, None), "cds", new)

    async def _step(self, write: Callable[[], None], kind: str, config: Config) -> None:
        names = ["cluster_manager.cds"] if kind == "cds" else [f"http.{listener.name}.rds.{route_config_name(listener)}" for listener in config.listeners]
        before = await asyncio.to_thread(self._stats) if self.admin_url() else {}
        self.version += 1
        write()
        if not self.admin_url():
            await asyncio.sleep(self.settle_s)
            return
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            stats = await asyncio.to_thread(self._stats)
            if any(_number(stats, f"{name}.update_rejected") > _number(before, f"{name}.update_rejected") for name in names):
                raise XdsRejected(f"Envoy rejected the new {kind.upper()} resources (its log says why)")
            if _number(stats, "cluster_manager.warming_clusters") == 0 and all(stats.get(f"{name}.version_text") == str(self.version) for name in names):
                return
            await asyncio.sleep(0.01)
        log.warning("Envoy did not confirm %s version %s within %.0fs; going on", kind, self.version, self.timeout_s)

    def _stats(self) -> dict:
        return envoyadmin.stats(self.admin_url(), "(version_text|warming_clusters|update_rejected)$")

    def _write_clusters(self, config: Config, previous: Config | None) -> None:
        clusters = {cluster["name"]: cluster for cluster in upstream_clusters(previous, self.options)} if previous else {}
        clusters.update((cluster["name"], cluster) for cluster in upstream_clusters(config, self.options))
        self._publish(cds_path(self.directory), _CLUSTER_TYPE, list(clusters.values()))

    def _write_routes(self, config: Config, previous: Config | None) -> None:
        chains = {**previous.chains, **config.chains} if previous else config.chains
        for listener in config.listeners:
            self._publish(rds_path(self.directory, listener.name), _ROUTES_TYPE, [route_config(listener, chains)])

    def _publish(self, path: str, type_url: str, resources: list[dict]) -> None:
        document = {"version_info": str(self.version), "resources": [{"@type": type_url, **resource} for resource in resources]}
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".yaml")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(to_yaml(document))
        os.replace(temporary, path)
