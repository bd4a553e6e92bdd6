"""One running sidecar: its gRPC services, its metrics port and its config reloads.

`extproc serve` runs it alone; `extproc up` runs it beside the Envoy it starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine

import grpc

from .config import Config
from .observability.http import MetricsServer
from .providers import tokens
from .reload import Reloader
from .runtime import Runtime
from .server.app import ServerTls, start_server
from .sharedstate import PART, SharedCooldowns
from .xds import XdsFiles

log = logging.getLogger(__name__)


class Sidecar:
    def __init__(
        self,
        config: Config,
        listen: str,
        config_path: str | None = None,
        metrics_port: int | None = None,
        xds: XdsFiles | None = None,
        tls: ServerTls | None = None,
        reload_token: str | None = None,
    ):
        self.config = config
        self.listen = listen
        self.tls = tls  # mutual TLS for a TCP listener
        self.reload_token = reload_token  # lets non-loopback callers POST /reload
        self.config_path = config_path  # watched and reloaded when given
        self.metrics_port = config.metrics.port if metrics_port is None else metrics_port
        self.xds = xds  # Envoy's routes and clusters, written here and kept current
        self.runtime = Runtime.create(config)
        self.port = 0  # the bound TCP port, 0 for a Unix socket
        self.metrics: MetricsServer | None = None
        self.reloader: Reloader | None = None
        self._server: grpc.aio.Server | None = None
        self._bulk: grpc.Server | None = None  # the bulk lane (large requests), beside a Unix socket
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        await tokens.prepare(self.config)
        self.spawn(tokens.keep_fresh(lambda: self.runtime.store.live.configs, self.runtime.notes), "token refresher")
        if self.xds is not None:
            self.xds.write([self.config])
        self._server, self.port, self._bulk = await start_server(self.runtime, self.listen, self.tls)
        self.metrics = MetricsServer(self.runtime, self.config.metrics.address, self.metrics_port, self.reload_token).start()
        if self.config.cooldown.redis_url:
            shared = SharedCooldowns(self.config.cooldown.redis_url, self.runtime.health, self.runtime.metrics, self.runtime.notes, lambda: self.runtime.store.current)
            self.runtime.observer.shared = shared
            self.spawn(shared.run(), PART)
        if self.config_path:
            self.reloader = Reloader(self.config_path, self.runtime, self.xds, asyncio.get_running_loop())
            self.metrics.reload = self.reloader.reload_from_thread
            self.spawn(self.reloader.watch(), "config watcher")

    def spawn(self, work: Coroutine, part: str) -> asyncio.Task:
        """Run `work` beside the servers; if it ever stops on an error, /readyz fails and says why."""
        task = asyncio.create_task(work, name=part)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._ended(done, part))
        return task

    def _ended(self, task: asyncio.Task, part: str) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        log.error("%s stopped: %r", part, task.exception(), exc_info=task.exception())
        self.runtime.problems[part] = f"stopped: {task.exception()!r}"

    def reload_soon(self, trigger: str) -> None:
        """For a signal handler: reload on the loop, without waiting."""
        if self.reloader is not None:
            self.spawn(self.reloader.reload(trigger), f"reload ({trigger})")

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.metrics.address}:{self.metrics.port if self.metrics else self.metrics_port}"

    async def stop(self, grace_s: float) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:  # bounded: a task stuck on an unanswering peer (Redis) must not hold the stop
            await asyncio.wait(tasks, timeout=grace_s)
        if self._server is not None:
            self.runtime.serving = False
            await self._server.stop(grace=grace_s)
            self._server = None
        bulk, self._bulk = self._bulk, None
        if bulk is not None:
            await asyncio.to_thread(lambda: bulk.stop(grace_s).wait())
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
