"""Reload the config without a restart: on file change, SIGHUP or `POST /reload`.

A new snapshot is validated in full before anything changes. A file that
does not load whole (bad YAML, an unset variable, an unreadable file, any
invalid entry) leaves the previous snapshot serving and counts a `failure`
naming the file, the key and why: one typo never silently drops a model that
was serving. (Only the first start is lenient: it serves the entries that
are valid, `Config.provider_errors`.) Listener changes (ports) need an Envoy
restart and are logged as such; everything else (providers, models, chains,
keys, retry policies) goes to Envoy as new routes and clusters.

Reloads are serialized and coalesced: a trigger that arrives while one runs is
served by the next run, so a burst of N triggers costs at most two reloads, and
a file whose content did not change since the last run costs one hash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from .config import Config, ConfigError, load_config
from .config.model import file_digest
from .providers import tokens
from .runtime import Runtime
from .xds import XdsFiles, XdsRejected

log = logging.getLogger(__name__)

#: Beyond the longest route timeout, before a retired snapshot's routes and clusters go.
RETIRE_MARGIN_S = 5.0


class Reloader:
    def __init__(self, path: str, runtime: Runtime, xds: XdsFiles | None, loop: asyncio.AbstractEventLoop):
        self.path = path
        self.runtime = runtime
        self.xds = xds
        self.loop = loop
        self._lock = asyncio.Lock()
        self._requested = 0  # triggers so far
        self._covered = 0  # triggers the latest run started after
        self._result: tuple[bool, str] = (True, "unchanged")
        self._digest = file_digest(path)  # of the content the last run read (or the initial load)

    async def reload(self, trigger: str) -> tuple[bool, str]:
        self._requested += 1
        ticket = self._requested
        async with self._lock:
            if self._covered >= ticket:  # a run that started after this trigger already read the file
                return self._result
            self._covered = self._requested
            try:
                self._result = await self._reload(trigger)
            except Exception as exc:  # a reload never takes the watcher (or the sidecar) down
                log.exception("reload (%s) failed unexpectedly; still serving the previous config", trigger)
                self.runtime.metrics.reloads.labels("error").inc()
                self._result = (False, f"reload failed unexpectedly: {type(exc).__name__}")
            return self._result

    async def _reload(self, trigger: str) -> tuple[bool, str]:
        metrics = self.runtime.metrics
        metrics.last_reload.set_to_current_time()
        digest = await asyncio.to_thread(file_digest, self.path)
        if digest == self._digest and digest is not None and self._result[0]:
            metrics.reloads.labels("unchanged").inc()
            return True, "unchanged"
        self._digest = digest
        try:  # off the event loop: 5,000 providers take ~1.5 s to read and check, and requests keep flowing meanwhile
            new = await asyncio.to_thread(load_config, self.path)
        except ConfigError as exc:
            metrics.reloads.labels("failure").inc()
            log.error("reload (%s) refused, still serving the previous config: %s", trigger, exc)
            return False, str(exc)
        old = self.runtime.store.current
        new = _keep_listeners(old, new)
        if new == old:
            metrics.reloads.labels("unchanged").inc()
            metrics.last_reload_success.set_to_current_time()
            return True, "unchanged"
        await tokens.prepare(new)  # a new provider's token is minted before the config serves it
        retire_until = time.monotonic() + max(listener.timeout for listener in (*old.listeners, *new.listeners)) + RETIRE_MARGIN_S
        if self.xds is not None:
            try:
                await self.xds.transition(self.runtime.store.live.configs, new, lambda: self._swap(new, retire_until))
            except XdsRejected as exc:
                metrics.reloads.labels("failure").inc()
                log.error("reload (%s) refused, still serving the previous config: %s", trigger, exc)
                return False, str(exc)
        else:
            self._swap(new, None)
        metrics.reloads.labels("success").inc()
        metrics.last_reload_success.set_to_current_time()
        message = f"reloaded ({trigger}): {len(new.providers)} providers, {len(new.models)} models"
        for warning in new.warnings:
            log.warning("%s: %s", new.source, warning)
        log.info("%s", message)
        return True, message

    def _swap(self, config: Config, retire_until: float | None) -> None:
        self.runtime.store.swap(config, retire_until)
        self.runtime.health.policy = config.cooldown
        self.runtime.health.retain(config.providers)

    async def prune(self) -> None:
        """Drop retired snapshots no request can still be using: from Envoy first, then from the sidecar."""
        async with self._lock:
            now = time.monotonic()
            store = self.runtime.store
            if not store.expired(now):
                return
            if self.xds is not None:
                await self.xds.prune(store.without_expired(now).configs)
            store.drop_expired(now)

    def reload_from_thread(self) -> tuple[bool, str]:
        """For the HTTP endpoint's thread: run a reload on the sidecar's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(self.reload("POST /reload"), self.loop).result(timeout=60)

    async def watch(self, interval_s: float = 0.25) -> None:
        """Poll the file's content (a Kubernetes ConfigMap update swaps a symlink: the content changes too); prune retired snapshots."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                digest = await asyncio.to_thread(file_digest, self.path)
                if digest != self._digest:
                    await self.reload("file changed")
                await self.prune()
            except Exception:
                log.exception("config watcher: unexpected error; watching on")
                self.runtime.metrics.reloads.labels("error").inc()


def _keep_listeners(old: Config, new: Config) -> Config:
    """Listeners are Envoy's sockets: a change of name, address or port waits for a restart."""

    def sockets(config: Config) -> list[tuple[str, str, int]]:
        return [(listener.name, listener.address, listener.port) for listener in config.listeners]

    if sockets(old) == sockets(new):
        return new
    log.warning("listener changes (name, address or port) need a restart of Envoy; keeping %s until then", sockets(old))
    return dataclasses.replace(new, listeners=old.listeners)
