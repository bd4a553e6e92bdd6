"""The running config: one snapshot, swapped whole on reload, and the ones Envoy may still name.

Readers take `store.live` once per stream and keep that reference, so a
request never sees half of an old config and half of a new one.

After a reload, requests routed under the previous snapshot may still be in
flight, and their retries run on the (immutable, content-named) clusters that
snapshot routed them to. Such a snapshot stays *retiring* until no request
routed under it can still be running (the longest route timeout has passed);
until then its providers are still found by cluster name, so every attempt
gets the credentials of the host Envoy actually picked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from .model import Config, Provider


@dataclass(frozen=True)
class Live:
    """The current snapshot and those retiring, as one immutable value."""

    #: The snapshot that routes new requests (its `owned_headers` cover every live snapshot).
    current: Config
    #: (deadline on the monotonic clock, snapshot), oldest first.
    retiring: tuple[tuple[float, Config], ...] = ()
    _by_cluster: Mapping[str, Provider] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, current: Config, retiring: tuple[tuple[float, Config], ...] = ()) -> Live:
        configs = _newest_first(current, retiring)
        owned = frozenset().union(*(config.owned_headers for config in configs))
        by_cluster: dict[str, Provider] = {}
        for config in configs:  # newest first: a rotated key for the same host wins
            for name, provider in config.providers_by_cluster.items():
                by_cluster.setdefault(name, provider)
        if owned != current.owned_headers:
            current = dataclasses.replace(current, owned_headers=owned)
        return cls(current, retiring, by_cluster)

    @property
    def configs(self) -> list[Config]:
        """Every snapshot Envoy may still route by: the current one first."""
        return _newest_first(self.current, self.retiring)

    def provider(self, cluster: str) -> Provider | None:
        """The provider whose host is this Envoy cluster, from the newest snapshot that has it."""
        return self._by_cluster.get(cluster)


def _newest_first(current: Config, retiring: tuple[tuple[float, Config], ...]) -> list[Config]:
    return [current, *(config for _, config in reversed(retiring))]


class ConfigStore:
    def __init__(self, config: Config):
        self._live = Live.of(config)
        self._loaded = config

    @property
    def live(self) -> Live:
        return self._live

    @property
    def current(self) -> Config:
        """The snapshot as loaded from the file (what a reload compares with)."""
        return self._loaded

    def swap(self, config: Config, retire_until: float | None = None) -> None:
        """Make `config` current; the previous one retires until `retire_until` (None: at once)."""
        retiring = self._live.retiring
        if retire_until is not None:
            retiring = (*retiring, (retire_until, self._loaded))
        self._loaded = config
        self._live = Live.of(config, retiring)  # a single reference assignment: atomic for every reader

    def expired(self, now: float) -> list[Config]:
        return [config for deadline, config in self._live.retiring if deadline <= now]

    def without_expired(self, now: float) -> Live:
        """What `live` becomes once the expired snapshots are dropped."""
        return Live.of(self._loaded, tuple(item for item in self._live.retiring if item[0] > now))

    def drop_expired(self, now: float) -> None:
        self._live = self.without_expired(now)
