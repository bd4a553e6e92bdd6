"""The mock provider's Google Vertex AI (`api="vertex"`): a token endpoint, rawPredict for Claude, the OpenAI-compatible endpoint.

It checks what Google checks, so a test proves the gateway's credentials and
paths, not just its plumbing: the token endpoint grants an access token only
for a service-account JWT (RFC 7523) signed by the key whose public half it
holds; every model call needs a token it issued that has not expired; Claude's
rawPredict wants `anthropic_version: vertex-2023-10-16` and no `model` in the
body; the OpenAI endpoint wants a publisher-qualified model (`google/…`).
Errors come in Google's shape: `{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from . import anthropic

TOKEN_PATH = "/token"
_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_CLAUDE = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/publishers/anthropic/models/([^/:]+):(rawPredict|streamRawPredict)$")
_OPENAI = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/endpoints/openapi/chat/completions$")
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}).encode()


@dataclass
class VertexState:
    """The tokens one mock issued, and the service-account key it trusts."""

    public_key: str  # PEM
    lifetime_s: int = 3600
    issued: dict[str, float] = field(default_factory=dict)  # token -> expiry (time.time())

    def grant(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """The token endpoint: an access token for a JWT assertion this mock's key signed."""
        import google.auth.jwt

        form = {key: values[0] for key, values in parse_qs(body.decode()).items()}
        if form.get("grant_type") != _GRANT or "assertion" not in form:
            return 400, {"error": "unsupported_grant_type", "error_description": "expected a JWT bearer grant"}
        try:
            claims = google.auth.jwt.decode(form["assertion"], certs=self.public_key)
        except ValueError as exc:
            return 400, {"error": "invalid_grant", "error_description": f"Invalid JWT Signature: {exc}"}
        if "cloud-platform" not in str(claims.get("scope", "")):
            return 400, {"error": "invalid_scope", "error_description": "the cloud-platform scope is required"}
        token = f"ya29.mock-{len(self.issued) + 1}"
        self.issued[token] = time.time() + self.lifetime_s
        return 200, {"access_token": token, "expires_in": self.lifetime_s, "token_type": "Bearer"}

    def refusal(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str] | None:
        """(status, message) for a model call Vertex would refuse; None when it is well formed."""
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if self.issued.get(token, 0.0) <= time.time():
            return 401, "Request had invalid authentication credentials. Expected OAuth 2 access token."
        route = path.split("?", 1)[0]
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, "Invalid JSON payload received."
        if _CLAUDE.match(route):
            if payload.get("anthropic_version") != "vertex-2023-10-16":
                return 400, "anthropic_version: vertex-2023-10-16 is required in the body"
            if "model" in payload:
                return 400, "model: Extra inputs are not permitted (the model is in the URL)"
            if not isinstance(payload.get("max_tokens"), int) or not isinstance(payload.get("messages"), list):
                return 400, "max_tokens and messages are required"
            if (payload.get("stream") is True) != route.endswith(":streamRawPredict"):
                return 400, "a stream must be asked for at :streamRawPredict, with stream: true"
            return anthropic.beta_refusal(payload, anthropic.header_betas(headers))
        if _OPENAI.match(route):
            if "/" not in str(payload.get("model", "")):
                return 400, "model must name its publisher, as google/gemini-2.5-flash"
            return None
        return 404, f"The requested URL {route} was not found on this server."

    @staticmethod
    def claude_model(path: str) -> str | None:
        match = _CLAUDE.match(path.split("?", 1)[0])
        return match.group(3) if match else None


def public_key_of(service_account_file: str) -> str:
    """The public half (PEM) of a service-account key file's private key: what the token endpoint trusts."""
    from cryptography.hazmat.primitives import serialization

    with open(service_account_file, encoding="utf-8") as handle:
        private = serialization.load_pem_private_key(json.load(handle)["private_key"].encode(), password=None)
    return private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claude_answer(name: str, model: str, payload: dict[str, Any], number: int, use_tool: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    return anthropic.answer(name, {**payload, "model": model}, number, use_tool)


def claude_events(name: str, model: str, payload: dict[str, Any], number: int, use_tool: tuple[str, dict[str, Any]] | None = None) -> list[bytes]:
    return anthropic.events(name, {**payload, "model": model}, number, use_tool)
