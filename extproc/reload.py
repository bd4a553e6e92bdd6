"""Reload the config without a restart: on file change, SIGHUP or `POST /reload`.

A new snapshot is validated in full before anything changes. A file that
does not load (bad YAML, unset variable, unreadable) leaves the previous
snapshot serving; a provider entry that is invalid on its own is left out with
status `error` while the rest loads. Listener changes (ports) need an Envoy
restart and are logged as such; everything else (providers, models, chains,
keys, retry policies) goes to Envoy as new routes and clusters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging

from .config import Config, ConfigError, load_config
from .runtime import Runtime
from .xds import XdsFiles, XdsRejected

log = logging.getLogger(__name__)


class Reloader:
    def __init__(self, path: str, runtime: Runtime, xds: XdsFiles | None, loop: asyncio.AbstractEventLoop):
        self.path = path
        self.runtime = runtime
        self.xds = xds
        self.loop = loop
        self._lock = asyncio.Lock()
        self._digest = _digest(path)

    async def reload(self, trigger: str) -> tuple[bool, str]:
        async with self._lock:
            metrics = self.runtime.metrics
            metrics.last_reload.set_to_current_time()
            self._digest = _digest(self.path)
            try:
                new = load_config(self.path, lenient=True)
            except ConfigError as exc:
                metrics.reloads.labels("failure").inc()
                log.error("reload (%s) refused, still serving the previous config: %s", trigger, exc)
                return False, str(exc)
            old = self.runtime.store.current
            new = _keep_listeners(old, new)
            for error in new.provider_errors:
                log.error("provider %s left out: %s", error.name, error.message)
            if new == old:
                metrics.reloads.labels("unchanged").inc()
                metrics.last_reload_success.set_to_current_time()
                return True, "unchanged"
            if self.xds is not None:
                try:
                    await self.xds.transition(old, new, lambda: self._swap(new))
                except XdsRejected as exc:
                    metrics.reloads.labels("failure").inc()
                    log.error("reload (%s) refused, still serving the previous config: %s", trigger, exc)
                    return False, str(exc)
            else:
                self._swap(new)
            metrics.reloads.labels("success").inc()
            metrics.last_reload_success.set_to_current_time()
            message = f"reloaded ({trigger}): {len(new.providers)} providers, {len(new.models)} models"
            if new.provider_errors:
                message += f", {len(new.provider_errors)} provider entries left out"
            log.info("%s", message)
            return True, message

    def _swap(self, config: Config) -> None:
        self.runtime.store.swap(config)
        self.runtime.health.policy = config.cooldown
        self.runtime.health.retain(config.providers)

    def reload_from_thread(self) -> tuple[bool, str]:
        """For the HTTP endpoint's thread: run a reload on the sidecar's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(self.reload("POST /reload"), self.loop).result(timeout=60)

    async def watch(self, interval_s: float = 0.25) -> None:
        """Poll the file's content. A Kubernetes ConfigMap update swaps a symlink: the content changes too."""
        while True:
            await asyncio.sleep(interval_s)
            digest = await asyncio.to_thread(_digest, self.path)
            if digest != self._digest:
                await self.reload("file changed")


def _keep_listeners(old: Config, new: Config) -> Config:
    """Listeners are Envoy's sockets: a change of name, address or port waits for a restart."""

    def sockets(config: Config) -> list[tuple[str, str, int]]:
        return [(listener.name, listener.address, listener.port) for listener in config.listeners]

    if sockets(old) == sockets(new):
        return new
    log.warning("listener changes (name, address or port) need a restart of Envoy; keeping %s until then", sockets(old))
    return dataclasses.replace(new, listeners=old.listeners)


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None
