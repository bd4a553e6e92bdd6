"""Cooldowns shared between replicas through Redis: each one written with its expiry, published, applied everywhere.

Redis is never on the request path: the router level reads each process's own
`ProviderHealth`, and this only feeds it. A cooldown started here is queued
(never awaited by a request), then `SET extproc:cooldown:<provider>` with the
cooldown's end as its expiry and `PUBLISH extproc:cooldowns`; every other
replica, subscribed, applies it within milliseconds, and one that (re)connects
reads the keys still alive. Nothing grows: keys expire with their cooldowns,
messages are not stored. While Redis is away each replica keeps its own state,
says so once (log, `/readyz`, `extproc_shared_state_up 0`) and reconnects with
backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import redis.asyncio as redis
from prometheus_client import Counter, Gauge

from .observability.metrics import GatewayMetrics
from .processor.cooldown import ProviderHealth

log = logging.getLogger(__name__)

KEY_PREFIX = "extproc:cooldown:"
CHANNEL = "extproc:cooldowns"
PART = "shared state (redis)"
#: Cooldowns waiting to be written while Redis is slow or away; past this, the oldest are dropped (each replica still has its own).
_OUTBOX = 1000
_BACKOFF_S = (0.2, 10.0)


class SharedCooldowns:
    def __init__(self, url: str, health: ProviderHealth, metrics: GatewayMetrics, notes: dict[str, str]):
        self._url = url  # may hold a password: never logged
        self.health = health
        # Registered only when shared state is configured: without Redis there is nothing to be up or down.
        self.up_gauge = Gauge("extproc_shared_state_up", "1 while the shared cooldown state (Redis) is reachable; 0 while not (each replica then uses its own).", registry=metrics.registry)
        self.exchanged = Counter("extproc_shared_cooldowns", "Cooldowns exchanged with other replicas, by direction (published, applied).", ["direction"], registry=metrics.registry)
        self.notes = notes  # shown by /readyz, without making it fail
        self.origin = uuid.uuid4().hex  # this replica: its own messages come back and are skipped
        self._outbox: asyncio.Queue[tuple[str, float, str]] = asyncio.Queue(_OUTBOX)
        self._up: bool | None = None

    def publish(self, provider: str, until: float, reason: str) -> None:
        """A cooldown started here (called on the event loop, from the observer): queued, never awaited."""
        if self._outbox.full():
            self._outbox.get_nowait()
        self._outbox.put_nowait((provider, until, reason))

    async def run(self) -> None:
        """Connect, catch up, then exchange cooldowns until the connection fails; again, with backoff, for ever."""
        self.up_gauge.set(0)
        self.notes[PART] = "connecting"
        delay = _BACKOFF_S[0]
        while True:
            client = redis.from_url(self._url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=2)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    await self._catch_up(client)
                    self._state(True)
                    delay = _BACKOFF_S[0]
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._receive(pubsub))
                        group.create_task(self._send(client))
            except* (redis.RedisError, OSError, TimeoutError) as failure:
                self._state(False, _reason(failure))
            finally:
                await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_S[1])

    async def _catch_up(self, client: redis.Redis) -> None:
        """Cooldowns other replicas started before this one listened (their keys are alive exactly as long)."""
        async for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=100):
            value = await client.get(key)
            if value is not None:
                self._apply(value)

    async def _receive(self, pubsub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message.get("type") == "message":
                self._apply(message["data"])

    async def _send(self, client: redis.Redis) -> None:
        while True:
            provider, until, reason = await self._outbox.get()
            if until <= time.time():
                continue
            value = json.dumps({"provider": provider, "until": until, "reason": reason, "origin": self.origin})
            await client.set(f"{KEY_PREFIX}{provider}", value, pxat=int(until * 1000))
            await client.publish(CHANNEL, value)
            self.exchanged.labels("published").inc()

    def _apply(self, raw: bytes | str) -> None:
        try:
            message = json.loads(raw)
            provider, until, origin = str(message["provider"]), float(message["until"]), message.get("origin")
        except (ValueError, KeyError, TypeError):
            log.warning("ignored an unreadable shared cooldown")
            return
        if origin != self.origin and self.health.share(provider, until):
            self.exchanged.labels("applied").inc()

    def _state(self, up: bool, reason: str = "") -> None:
        """Gauge and /readyz always; the log once per change (not once per reconnect attempt)."""
        self.up_gauge.set(1 if up else 0)
        if up:
            self.notes.pop(PART, None)
        else:
            self.notes[PART] = f"unreachable ({reason}); each replica uses its own cooldowns meanwhile"
        if up is not self._up:
            if up:
                log.info("shared cooldown state reachable")
            else:
                log.warning("shared cooldown state unreachable: %s; each replica uses its own cooldowns until it is back", reason)
        self._up = up


def _reason(failure: BaseExceptionGroup) -> str:
    first = failure.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return f"{type(first).__name__}: {first}"
