"""Router answers already made, kept in wire form for the requests that repeat them.

A steady client sends the same request shape again and again: the same method,
path and header names, the same values in the headers the gateway owns, and a
body in which Envoy finds the same model (wherever it is: the answer says
"where Envoy found it"). The router's decision is a pure function of those, the
config and which providers are cooling down, except where it reads the moment
(a half-open provider's trial, a weighted draw, a credential minted at run
time); `router.Forward.reusable` says none of these went into it. Such an answer is
kept, serialized, and given again while its provider stays available and the
providers it passed over keep cooling down (checked on each use), under the
same config snapshot: the decision, the header plan and protobuf
serialization run once per shape instead of once per request.
"""

from __future__ import annotations

from collections.abc import Hashable

from ..config import Config
from ..processor.cooldown import ProviderHealth

#: Shapes kept at once (~2 KB each); all are dropped when it is reached, so clients sending ever-new header values cost no more memory.
LIMIT = 1024


class Answers:
    """Kept answers by request shape, for one config snapshot; used from the event loop only."""

    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self._config: Config | None = None
        self._answers: dict[Hashable, tuple[str, tuple[str, ...], bytes]] = {}

    def get(self, config: Config, key: Hashable, health: ProviderHealth | None) -> bytes | None:
        """The answer kept for `key` under `config`, if it is still the one the router would give."""
        if config is not self._config:
            return None
        kept = self._answers.get(key)
        if kept is None:
            return None
        provider, passed_over, answer = kept
        if health is not None and not health.still_picks(provider, passed_over):
            return None
        return answer

    def put(self, config: Config, key: Hashable, provider: str, passed_over: tuple[str, ...], answer: bytes) -> None:
        if config is not self._config or len(self._answers) >= self.limit:
            self._answers = {}
            self._config = config
        self._answers[key] = (provider, passed_over, answer)

    def __len__(self) -> int:
        return len(self._answers)
