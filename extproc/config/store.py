"""The running config: one snapshot, swapped whole on reload.

Readers take `store.current` once per stream and keep that reference, so a
request never sees half of an old config and half of a new one.
"""

from __future__ import annotations

from .model import Config


class ConfigStore:
    def __init__(self, config: Config):
        self._current = config

    @property
    def current(self) -> Config:
        return self._current

    def swap(self, config: Config) -> None:
        self._current = config  # a single reference assignment: atomic for every reader
