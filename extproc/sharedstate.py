"""Cooldowns shared between replicas through Redis: each one written with its expiry, published, applied everywhere.

Redis is never on the request path: the router level reads each process's own
`ProviderHealth`, and this only feeds it. A cooldown started here is queued
(never awaited by a request), then `SET extproc:cooldown:<identity>` with the
cooldown's end as its expiry and `PUBLISH extproc:cooldowns`; every other
replica, subscribed, applies it within milliseconds, and one that (re)connects
reads the keys still alive. A cooldown is keyed by the provider's identity
(`Provider.identity`: its model, deployment and credential), not its name, so
gateways of different configs on one Redis share exactly the cooldowns of
what they both call. Nothing grows: keys expire with their cooldowns,
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
from collections.abc import Awaitable, Callable

import redis.asyncio as redis
from prometheus_client import Counter, Gauge
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .config import Config
from .observability.metrics import GatewayMetrics
from .processor.cooldown import ProviderHealth

log = logging.getLogger(__name__)

KEY_PREFIX = "extproc:cooldown:"
CHANNEL = "extproc:cooldowns"
PART = "shared state (redis)"
#: Cooldowns waiting to be written while Redis is slow or away; past this, the oldest are dropped (each replica still has its own).
_OUTBOX = 1000
_BACKOFF_S = (0.2, 10.0)
#: Seconds any one exchange with Redis may take, and between pings of an idle connection.
_DEADLINE_S = 2.0
_PING_EVERY_S = 1.0
_NO_RETRY = Retry(NoBackoff(), 0)


class SharedCooldowns:
    def __init__(self, url: str, health: ProviderHealth, metrics: GatewayMetrics, notes: dict[str, str], config: Callable[[], Config]):
        self._url = url  # may hold a password: never logged
        self.health = health
        self.config = config  # the running config (its providers' identities)
        # Registered only when shared state is configured: without Redis there is nothing to be up or down.
        self.up_gauge = Gauge("extproc_shared_state_up", "1 while the shared cooldown state (Redis) is reachable; 0 while not (each replica then uses its own).", registry=metrics.registry)
        self.exchanged = Counter("extproc_shared_cooldowns", "Cooldowns exchanged with other replicas, by direction (published, applied).", ["direction"], registry=metrics.registry)
        self.notes = notes  # shown by /readyz, without making it fail
        self.origin = uuid.uuid4().hex  # this replica: its own messages come back and are skipped
        self._outbox: asyncio.Queue[tuple[str, float, str]] = asyncio.Queue(_OUTBOX)
        self._up: bool | None = None

    def publish(self, provider: str, until: float, reason: str) -> None:
        """A cooldown started here (called on the event loop, from the observer): queued, never awaited."""
        known = self.config().providers.get(provider)
        if known is None:  # gone with a reload meanwhile
            return
        if self._outbox.full():
            self._outbox.get_nowait()
        self._outbox.put_nowait((known.identity, until, reason))

    async def run(self) -> None:
        """Connect, catch up, then exchange cooldowns until anything fails; again, with backoff, for ever.

        Whatever ends a session (an error, a deadline, a Redis that stopped
        answering) is "down": gauge 0, a note on /readyz, one log line.
        """
        self.up_gauge.set(0)
        self.notes[PART] = "connecting"
        delay = _BACKOFF_S[0]
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as failure:  # every failure of Redis is "down, reconnect", never the end of sharing
                if self._up:
                    delay = _BACKOFF_S[0]
                self._state(False, _reason(failure))
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_S[1])

    async def _session(self) -> None:
        """One connection's life: it only ends by raising.

        redis-py retries nothing here (`_NO_RETRY`): a hidden retry loop turned
        a cancellation into endless reconnects to a stopped Redis. Each step has
        a deadline and an idle connection is pinged, so a Redis that stops
        answering is noticed within `_PING_EVERY_S + _DEADLINE_S`.
        """
        client = redis.from_url(self._url, socket_connect_timeout=_DEADLINE_S, socket_timeout=_DEADLINE_S, retry=_NO_RETRY)
        pubsub = client.pubsub()
        tasks: list[asyncio.Task] = []
        try:
            async with asyncio.timeout(2 * _DEADLINE_S):
                await pubsub.subscribe(CHANNEL)
                await self._catch_up(client)
            self._state(True)
            tasks = [asyncio.create_task(work) for work in (self._receive(pubsub), self._send(client), self._heartbeat(client))]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise ConnectionError("the shared state session ended")
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=_DEADLINE_S)
            await _bounded(pubsub.aclose())
            await _bounded(client.aclose())

    async def _catch_up(self, client: redis.Redis) -> None:
        """Cooldowns other replicas started before this one listened (their keys are alive exactly as long)."""
        async for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=100):
            value = await client.get(key)
            if value is not None:
                self._apply(value)

    async def _receive(self, pubsub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_PING_EVERY_S)
            if message is not None and message.get("type") == "message":
                self._apply(message["data"])

    async def _send(self, client: redis.Redis) -> None:
        while True:
            identity, until, reason = await self._outbox.get()
            if until <= time.time():
                continue
            value = json.dumps({"identity": identity, "until": until, "reason": reason, "origin": self.origin})
            async with asyncio.timeout(2 * _DEADLINE_S):
                await client.set(f"{KEY_PREFIX}{identity}", value, pxat=int(until * 1000))
                await client.publish(CHANNEL, value)
            self.exchanged.labels("published").inc()

    async def _heartbeat(self, client: redis.Redis) -> None:
        """A connection that only listens hears nothing from a stopped Redis: ask it something now and then."""
        while True:
            await asyncio.sleep(_PING_EVERY_S)
            async with asyncio.timeout(_DEADLINE_S):
                await client.ping()

    def _apply(self, raw: bytes | str) -> None:
        try:
            message = json.loads(raw)
            identity, until, origin = str(message["identity"]), float(message["until"]), message.get("origin")
        except (ValueError, KeyError, TypeError):
            log.warning("ignored an unreadable shared cooldown")
            return
        if origin == self.origin:
            return
        for provider in self.config().providers_by_identity.get(identity, ()):  # none: a provider this gateway does not call
            if self.health.share(provider, until):
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


def _reason(failure: BaseException) -> str:
    if isinstance(failure, TimeoutError):
        return f"no answer within {_DEADLINE_S:.0f}s"
    return f"{type(failure).__name__}: {failure}"


async def _bounded(closing: Awaitable[object]) -> None:
    """Close a client or subscription without ever waiting on a Redis that does not answer."""
    try:
        async with asyncio.timeout(_DEADLINE_S):
            await closing
    except Exception:  # the connection is being dropped anyway
        log.debug("closing a Redis connection failed", exc_info=True)
