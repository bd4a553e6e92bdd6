"""What the router level hands to every attempt of the same request.

It travels in Envoy's dynamic metadata (namespace `extproc`), which Envoy
forwards to each upstream-level stream untouched by earlier attempts, so any
sidecar process can serve any attempt: nothing is kept in one process's memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from .jsonbody import ModelSpan


@dataclass(frozen=True)
class RequestContext:
    path: str  # the client's :path, query included
    originals: Mapping[str, str] = field(default_factory=dict, repr=False)  # client values of owned headers
    span: ModelSpan | None = None  # where the body's model is; None when there is no body
    body_model: str | None = None  # the model name the body already carries (set by the router level)
    attempts: int = 1  # how many attempts the chain makes: the last one is watched to its response headers
    hedged: bool = False  # the chain hedges (`hedge_after`): an attempt started by a per-try timeout races the one before

    def encode(self) -> str:
        data: dict = {"p": self.path, "h": dict(self.originals)}
        if self.span is not None:
            data["s"] = [self.span.start, self.span.end, int(self.span.insert), int(self.span.needs_comma)]
        if self.body_model is not None:
            data["m"] = self.body_model
        if self.attempts != 1:
            data["n"] = self.attempts
        if self.hedged:
            data["g"] = 1
        return msgspec.json.encode(data).decode()  # one per request: msgspec is ~10x cheaper than json.dumps here

    @classmethod
    def decode(cls, text: str) -> RequestContext:
        data = msgspec.json.decode(text)
        span = data.get("s")
        return cls(
            path=data["p"],
            originals=data.get("h", {}),
            span=ModelSpan(span[0], span[1], bool(span[2]), bool(span[3])) if span else None,
            body_model=data.get("m"),
            attempts=data.get("n", 1),
            hedged=bool(data.get("g")),
        )
