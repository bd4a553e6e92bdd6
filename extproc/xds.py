"""Envoy's routes and provider clusters as files Envoy watches (filesystem xDS).

A reload must never let a request take a route to a cluster Envoy does not
have, or the sidecar name a route Envoy does not have. Cluster and route names
are derived from what they stand for (see `Config.chain_clusters`), so a
reload only ever adds resources beside the old ones:

1. clusters and routes = live ∪ new, written together, both confirmed applied
   and the clusters warm (no request names a new route before step 2, so
   Envoy may take the routes first);
2. the sidecar swaps to the new snapshot: new requests name new routes only;
3. the previous snapshot's routes and clusters stay until no request routed
   under it can still be running (`prune`, called by the reloader later).

Each file is written whole to a temporary name and renamed into place, which
is what Envoy's directory watch picks up. Files are JSON (a reload to 200
providers took 570 ms of pure-Python YAML) and written off the event loop,
which keeps serving requests meanwhile. When Envoy's admin address is known
(`extproc up`, `extproc serve --envoy-admin`) each step waits until Envoy
reports the new version, and a rejected update is rolled back; otherwise it
waits a fixed settle time and cannot tell a rejection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import msgspec

from . import envoyadmin
from .config import Config
from .render import RenderOptions, cds_path, rds_path, route_config, route_config_name, upstream_clusters

log = logging.getLogger(__name__)

_CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_ROUTES_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


#: After Envoy confirms new routes, before the sidecar names them (see `transition`).
WORKER_SETTLE_S = 0.1


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
        #: Envoy's counters as the last confirmed step left them: the next step's baseline, one stats query (~0.2 s at
        #: 5,000 providers) fewer. None after a write nothing confirmed (a rejection counted then must not be the next step's).
        self._confirmed: dict | None = None
        for path in (cds_path(directory), rds_path(directory, "")):
            os.makedirs(os.path.dirname(path), exist_ok=True)

    def write(self, configs: Sequence[Config]) -> None:
        """Write the files for these snapshots (the first one's listeners) without waiting."""
        self.version += 1
        self._confirmed = None
        self._write(configs, ("cds", "rds"))

    async def transition(self, live: Sequence[Config], new: Config, swap: Callable[[], None]) -> None:
        """Add `new`'s resources beside the live ones, then swap; `XdsRejected` leaves Envoy and the sidecar on `live`."""
        configs = [new, *live]
        try:
            # Clusters and routes in one step: no request names a new route before `swap`, so Envoy may take the
            # routes before the clusters they name are warm (the step waits for both, and for warming to end).
            await self._step(configs, ("cds", "rds"))
        except XdsRejected:
            await asyncio.to_thread(self.write, live)
            raise
        # Envoy confirms a route table on its main thread and hands it to its
        # workers asynchronously: give them a moment before naming new routes.
        await asyncio.sleep(WORKER_SETTLE_S)
        swap()

    async def prune(self, remaining: Sequence[Config]) -> None:
        """Remove every route, then every cluster, that no remaining snapshot names."""
        await self._step(remaining, ("rds",))
        await self._step(remaining, ("cds",))

    async def _step(self, configs: Sequence[Config], kinds: tuple[str, ...]) -> None:
        """Write `kinds` ("cds", "rds") of these snapshots (the first one's listeners) as a new version and wait until Envoy has it."""
        names = [
            *(["cluster_manager.cds"] if "cds" in kinds else []),
            *([f"http.{listener.name}.rds.{route_config_name(listener)}" for listener in configs[0].listeners] if "rds" in kinds else []),
        ]
        before = self._confirmed if self._confirmed is not None else await asyncio.to_thread(self._stats) if self.admin_url() else {}
        self._confirmed = None
        self.version += 1
        await asyncio.to_thread(self._write, configs, kinds)
        if not self.admin_url():
            await asyncio.sleep(self.settle_s)
            return
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            asked = time.monotonic()
            stats = await asyncio.to_thread(self._stats)
            rejected = [name for name in names if _number(stats, f"{name}.update_rejected") > _number(before, f"{name}.update_rejected")]
            if rejected:
                kind = "CDS" if any(name.startswith("cluster_manager") for name in rejected) else "RDS"
                raise XdsRejected(f"Envoy rejected the new {kind} resources (its log says why)")
            if _number(stats, "cluster_manager.warming_clusters") == 0 and all(stats.get(f"{name}.version_text") == str(self.version) for name in names):
                self._confirmed = stats
                return
            # Envoy answers a stats query on the main thread that applies the update, walking every statistic
            # (~0.6 s at 5,000 providers): ask again only after twice that, leaving it two thirds of its time.
            await asyncio.sleep(max(0.01, 2 * (time.monotonic() - asked)))
        log.warning("Envoy did not confirm %s version %s within %.0fs; going on", "+".join(kinds), self.version, self.timeout_s)

    def _stats(self) -> dict:
        return envoyadmin.stats(self.admin_url(), "(version_text|warming_clusters|update_rejected)$")

    def _write(self, configs: Sequence[Config], kinds: tuple[str, ...]) -> None:
        if "cds" in kinds:
            self._write_clusters(configs)
        if "rds" in kinds:
            self._write_routes(configs)

    def _write_clusters(self, configs: Sequence[Config]) -> None:
        self._publish(cds_path(self.directory), _CLUSTER_TYPE, upstream_clusters(configs, self.options))

    def _write_routes(self, configs: Sequence[Config]) -> None:
        for listener in configs[0].listeners:
            self._publish(rds_path(self.directory, listener.name), _ROUTES_TYPE, [route_config(listener, configs)])

    def _publish(self, path: str, type_url: str, resources: list[dict]) -> None:
        document = {"version_info": str(self.version), "resources": [{"@type": type_url, **resource} for resource in resources]}
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".json")
        with os.fdopen(handle, "wb") as stream:  # msgspec: 30× json.dump's pure-Python encoder on 22 MB of clusters
            stream.write(msgspec.json.encode(document))
        os.replace(temporary, path)
