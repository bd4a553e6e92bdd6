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
    hedged: bool = False  # the chain hedges (`hedge_after`): an attempt started by a per-try timeout races the one before
    #: The model asked for, when its attempts need it: their retries count against its `retry_budget`, a refusal finds its fallbacks.
    model: str | None = None

    def encode(self, found_at: int | None = None) -> str:
        """`found_at`: where Envoy found the model in the body; a span starting there is written as its width only,
        so the same request with its model elsewhere in the body (after a longer prompt) encodes the same."""
        data: dict = {"p": self.path, "h": dict(self.originals)}
        span = self.span
        if span is not None and found_at is not None and span.start == found_at and not span.insert:
            data["w"] = span.end - span.start
        elif span is not None:
            data["s"] = [span.start, span.end, int(span.insert), int(span.needs_comma)]
        if self.body_model is not None:
            data["m"] = self.body_model
        if self.hedged:
            data["g"] = 1
        if self.model is not None:
            data["b"] = self.model
        return msgspec.json.encode(data).decode()  # one per request: msgspec is ~10x cheaper than json.dumps here

    @classmethod
    def decode(cls, text: str, found_at: int | None = None) -> RequestContext:
        """`found_at`: where Envoy found the model (a span written as a width starts there)."""
        data = msgspec.json.decode(text)
        span = data.get("s")
        width = data.get("w")
        if width is not None and found_at is not None:
            span = [found_at, found_at + width, 0, 0]
        return cls(
            path=data["p"],
            originals=data.get("h", {}),
            span=ModelSpan(span[0], span[1], bool(span[2]), bool(span[3])) if span else None,
            body_model=data.get("m"),
            hedged=bool(data.get("g")),
            model=data.get("b"),
        )
