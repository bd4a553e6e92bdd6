"""A provider's 400 that another model may answer: a prompt over its context window, or a content-policy refusal.

On a chain whose model lists `retry_policy.context_window_fallbacks` or
`content_policy_fallbacks`, the upstream level reads each 400's body
(the "refused" phase). One of these turns into an internal redirect: Envoy
runs the request again, from the router level, and the router sends it to the
fallback model (`Redirects` carries what the first pass knew: the second pass
must not trust the headers it sees, which hold the first provider's key).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgspec

from ..config import Config

CONTEXT_WINDOW = "context_window"
CONTENT_POLICY = "content_policy"
#: The policy key that lists each reason's fallback models.
FALLBACK_KEYS = {CONTEXT_WINDOW: "context_window_fallbacks", CONTENT_POLICY: "content_policy_fallbacks"}
#: What the APIs say when a prompt is too long: OpenAI's and Azure's code, and the messages of Anthropic
#: ("prompt is too long"), Bedrock ("input is too long", "too many input tokens") and vLLM/sglang ("maximum context length").
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_PHRASES = ("prompt is too long", "input is too long", "too many input tokens", "maximum context length", "context length exceeded", "context window")
#: A content-policy refusal: OpenAI's `content_policy_violation`, Azure's `content_filter` (and its inner `ResponsibleAIPolicyViolation`).
_POLICY_CODES = frozenset({"content_policy_violation", "content_filter", "ResponsibleAIPolicyViolation"})
#: The header Envoy adds to a request it runs again after an internal redirect.
REDIRECTED_HEADER = "x-envoy-original-url"
#: The query parameter of the redirect's location that names its `Redirect`.
REDIRECT_PARAMETER = "x-arch-redirect"
#: A redirect not taken up by then is dropped (Envoy follows one at once).
REDIRECT_TTL_S = 30.0


def reason(body: bytes) -> str | None:
    """Why a 400 with this body might be answered by another model: `CONTEXT_WINDOW`, `CONTENT_POLICY`, or None."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    detail = data.get("error") if isinstance(data, dict) else None
    if isinstance(detail, str):  # Bedrock and some OpenAI-compatible servers: `{"message": ...}` or `{"error": "..."}`
        detail = {"message": detail}
    if not isinstance(detail, dict):
        detail = data if isinstance(data, dict) else {}
    inner = detail.get("innererror")
    codes = {str(detail.get(key)) for key in ("code", "type")} | ({str(inner.get("code"))} if isinstance(inner, dict) else set())
    if codes & _POLICY_CODES:
        return CONTENT_POLICY
    message = str(detail.get("message") or data.get("message") or "").lower() if isinstance(data, dict) else ""
    if codes & _CONTEXT_CODES or any(phrase in message for phrase in _CONTEXT_PHRASES):
        return CONTEXT_WINDOW
    return None


def fallback(config: Config, model: str, why: str) -> str | None:
    """The model a request for `model` refused for `why` goes to: the first of its fallbacks for that reason that is served."""
    chain = config.chain_for_model(model)
    if chain is None:
        return None
    return next((name for name in getattr(chain.policy, FALLBACK_KEYS[why]) if name in config.models and name != model), None)


@dataclass(frozen=True)
class Redirect:
    """What the first pass of a redirected request knew, for its second: where it goes and what the client sent."""

    model: str  # the fallback model
    asked: str  # the model the request asked for
    reason: str
    provider: str  # the provider that refused it
    path: str  # the client's path and query
    originals: Mapping[str, str]  # the client's values of the owned headers (its credentials among them)
    expires: float


@dataclass
class Redirects:
    """Redirects started by the upstream level and not yet taken up by the router level, by an unguessable token."""

    clock: Callable[[], float] = time.monotonic
    _pending: dict[str, Redirect] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, model: str, asked: str, why: str, provider: str, path: str, originals: Mapping[str, str]) -> str:
        token = secrets.token_urlsafe(18)
        with self._lock:
            now = self.clock()
            for stale in [key for key, value in self._pending.items() if value.expires < now]:
                del self._pending[stale]
            self._pending[token] = Redirect(model, asked, why, provider, path, dict(originals), now + REDIRECT_TTL_S)
        return token

    def take(self, token: str) -> Redirect | None:
        """The redirect `token` names, once; None for one never started here, taken already, or expired."""
        with self._lock:
            redirect = self._pending.pop(token, None)
        return redirect if redirect is not None and redirect.expires >= self.clock() else None
