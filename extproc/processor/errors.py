"""The gateway's own error replies: OpenAI-style (`{"error": {"message", "type", "param", "code"}}`), or Anthropic's for its clients."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

from ..translator import speaks_anthropic, tables


@dataclass(frozen=True)
class Reply:
    """An answer the gateway gives itself instead of calling a provider."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    reason: str = ""  # the error code, for metrics; "" for a normal answer
    #: Every provider of the chain is cooling: seconds until the first is back (a listener that waits may ask again then).
    cooling_s: float | None = None


def error_reply(status: int, message: str, type_: str, code: str | None = None, headers: tuple[tuple[str, str], ...] = (), param: str | None = None) -> Reply:
    body = json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()
    return Reply(status, body, (("content-type", "application/json"), *headers), code or type_)


def for_client(reply: Reply, path: str) -> Reply:
    """`reply` in the shape the client on `path` reads: Anthropic's clients (`/v1/messages`) get `{"type": "error", "error": {"type", "message"}}`."""
    if reply.status < 400 or not speaks_anthropic(path):
        return reply
    body = tables.anthropic_error(reply.status, json.loads(reply.body)["error"]["message"])
    if reply.status >= 500:  # the gateway's own failure: not `overloaded_error` (503), which SDKs retry as if it would pass
        body["error"] = {**body["error"], "type": "api_error"}  # type: ignore[dict-item]
    return replace(reply, body=json.dumps(body).encode())


def json_reply(status: int, payload: object) -> Reply:
    return Reply(status, json.dumps(payload).encode())


def invalid_request(message: str, code: str | None = None) -> Reply:
    return error_reply(400, message, "invalid_request_error", code)


def model_not_found(model: str, known: list[str]) -> Reply:
    listing = ", ".join(known) if known else "none are configured"
    message = f"The model '{model}' does not exist or is not served by this gateway (available: {listing})."
    return error_reply(404, message, "invalid_request_error", "model_not_found")


def too_large(size: int, limit: int) -> Reply:
    message = f"The request body is {size} bytes, over this gateway's limit of {limit} bytes."
    return error_reply(413, message, "invalid_request_error", "request_too_large")


def bad_answer(provider: str, what: str) -> Reply:
    """A provider's successful answer the client's API cannot carry (`translator.BadAnswer` says what it lacked)."""
    message = f"Provider '{provider}' answered, but {what}: the gateway could not translate it for your API."
    return error_reply(502, message, "api_error", "bad_provider_answer")


def answer_too_large(provider: str) -> Reply:
    message = f"Provider '{provider}' answered more than this gateway's size limit (the listener's max_body_bytes): it cannot be translated whole."
    return error_reply(502, message, "api_error", "response_too_large")


def credentials_missing(message: str) -> Reply:
    return error_reply(503, message, "api_error", "provider_credentials_missing")


def redirect_refused() -> Reply:
    """A request Envoy redirected that the gateway did not: a provider's own redirect, or one already taken up or expired."""
    return error_reply(502, "The provider answered with a redirect, which this gateway does not follow.", "api_error", "provider_redirect")


def no_provider_for(endpoint: str, model: str, why: str) -> Reply:
    message = f"No provider of model '{model}' serves {endpoint} ({why})."
    return error_reply(404, message, "invalid_request_error", "endpoint_not_served")


def all_cooling(model: str, cooling_s: float) -> Reply:
    retry_after_s = max(math.ceil(cooling_s), 1)
    message = f"Every provider of model '{model}' is rate limited or failing; retry after {retry_after_s}s."
    reply = error_reply(429, message, "rate_limit_error", "all_providers_cooling_down", (("retry-after", str(retry_after_s)),))
    return replace(reply, cooling_s=cooling_s)


def invalid_path(path: str) -> Reply:
    message = "The request path may not contain '.' or '..' segments (literal or percent-encoded) or backslashes."
    return error_reply(400, message, "invalid_request_error", "invalid_path")


def unknown_endpoint(path: str, allowed: tuple[str, ...]) -> Reply:
    message = f"This gateway does not forward {path!r} (it serves: {', '.join(allowed)})."
    return error_reply(404, message, "invalid_request_error", "unknown_endpoint")


def method_not_allowed(method: str, allowed: tuple[str, ...]) -> Reply:
    message = f"Method {method} is not allowed here (allowed: {', '.join(allowed)})."
    return error_reply(405, message, "invalid_request_error", "method_not_allowed", (("allow", ", ".join(allowed)),))


def too_many_headers(count: int, limit: int) -> Reply:
    message = f"The request has {count} headers; this gateway accepts at most {limit}."
    return error_reply(431, message, "invalid_request_error", "too_many_headers")
