"""The mock provider's AWS Bedrock Converse API (`api="bedrock"`).

It checks what Bedrock checks, so a test proves the gateway's signing and
translation, not just its plumbing: a SigV4 signature (service `bedrock`)
recomputed over the exact bytes received with the secret key it knows (one
byte changed and it refuses), or a Bedrock API key; Converse's own fields
only; a model id in the path. It answers as Converse does: JSON, or AWS
event-stream frames (with their CRC32s) for `converse-stream`; errors are
`{"message"}` with an `x-amzn-errortype` header.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from . import anthropic

_PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream|invoke|invoke-with-response-stream)$")
_AUTHORIZATION = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$")
KNOWN_FIELDS = frozenset({
    "messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig", "additionalModelRequestFields",
    "additionalModelResponseFieldPaths", "promptVariables", "requestMetadata", "performanceConfig",
})  # fmt: skip
#: The betas InvokeModel takes for Claude (in the body's `anthropic_beta`), per AWS's Claude Messages API page; others are refused.
INVOKE_BETAS = frozenset({
    "computer-use-2024-10-22", "computer-use-2025-01-24", "token-efficient-tools-2025-02-19", "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19", "dev-full-thinking-2025-05-14", "context-1m-2025-08-07", "context-management-2025-06-27",
    "effort-2025-11-24", "tool-search-tool-2025-10-19", "tool-examples-2025-10-29",
})  # fmt: skip
_ERROR_TYPES = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException", 429: "ThrottlingException", 503: "ServiceUnavailableException"}
EVENT_STREAM = "application/vnd.amazon.eventstream"


def error(status: int, message: str, kind: str | None = None) -> tuple[bytes, tuple[str, str]]:
    """A Bedrock error body and its `x-amzn-errortype` header."""
    return json.dumps({"message": message}).encode(), ("x-amzn-errortype", f"{kind or _ERROR_TYPES.get(status, 'InternalServerException')}:http://internal.amazon.com/coral/com.amazon.bedrock/")


@dataclass
class BedrockState:
    """The credentials the mock accepts: an access key pair (SigV4), or a Bedrock API key."""

    access_key_id: str = "AKIAMOCKMOCKMOCK0001"
    secret_access_key: str = "mock-secret-access-key"
    region: str = "us-east-1"
    api_key: str | None = None

    def refusal(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, str] | None:
        """(status, message, error type) for a request Bedrock would refuse; None when it is well formed and signed."""
        bad = self._credentials(method, path, headers, body)
        if bad is not None:
            return bad
        match = _PATH.match(path.split("?", 1)[0])
        if not match:
            return 404, f"Unknown operation {path}", "UnknownOperationException"
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, "Malformed input request, please reformat your input and try again.", "ValidationException"
        if match.group(2).startswith("invoke"):
            return _invoke_refusal(unquote(match.group(1)), payload)
        unknown = sorted(set(payload) - KNOWN_FIELDS) if isinstance(payload, dict) else ["(not an object)"]
        if unknown:
            return 400, f"Malformed input request: extraneous key [{unknown[0]}] is not permitted", "ValidationException"
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages or any(not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant") for turn in messages):
            return 400, "A conversation must start with a user message and alternate user and assistant roles.", "ValidationException"
        for turn in messages:
            for block in turn.get("content") or ():
                if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in ("text", "image", "toolUse", "toolResult", "document"):
                    return 400, f"Malformed input request: invalid content block {json.dumps(block)[:80]}", "ValidationException"
        return None

    def _credentials(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, str] | None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        authorization = headers.get("authorization", "")
        if self.api_key is not None and authorization == f"Bearer {self.api_key}":
            return None
        match = _AUTHORIZATION.match(authorization)
        if match is None:
            return 403, "Missing Authentication Token", "MissingAuthenticationTokenException"
        key_id, _date, region, service, signed_headers, signature = match.groups()
        if key_id != self.access_key_id:
            return 403, "The security token included in the request is invalid.", "UnrecognizedClientException"
        if (region, service) != (self.region, "bedrock"):
            return 403, f"Credential should be scoped to a valid region and service 'bedrock' in '{self.region}'.", "InvalidSignatureException"
        names = signed_headers.split(";")
        if "host" not in names or "x-amz-date" not in names:
            return 403, "The signature must cover host and x-amz-date.", "InvalidSignatureException"
        request = AWSRequest(method=method, url=f"http://{headers.get('host', '')}{path}", data=body, headers={name: headers.get(name, "") for name in names if name != "host"})
        auth = SigV4Auth(Credentials(self.access_key_id, self.secret_access_key), "bedrock", self.region)
        request.context["timestamp"] = headers.get("x-amz-date", "")
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        if expected != signature:
            return 403, "The request signature we calculated does not match the signature you provided.", "InvalidSignatureException"
        return None


def _invoke_refusal(model_id: str, payload: Any) -> tuple[int, str, str] | None:
    """InvokeModel with Claude: Anthropic's body, its version for Bedrock, no `model` (the path has it)."""
    if "anthropic.claude" not in model_id:
        return 400, f"The mock serves InvokeModel for Claude only, not {model_id}", "ValidationException"
    if not isinstance(payload, dict) or payload.get("anthropic_version") != "bedrock-2023-05-31":
        return 400, "Malformed input request: anthropic_version bedrock-2023-05-31 is required", "ValidationException"
    unknown = sorted(set(payload) - anthropic.KNOWN_FIELDS - {"anthropic_version", "anthropic_beta"} | ({"model", "stream"} & set(payload)))
    if unknown:
        return 400, f"Malformed input request: extraneous key [{unknown[0]}] is not permitted", "ValidationException"
    if not isinstance(payload.get("max_tokens"), int) or not isinstance(payload.get("messages"), list):
        return 400, "Malformed input request: max_tokens and messages are required", "ValidationException"
    betas = payload.get("anthropic_beta", [])
    if not isinstance(betas, list) or any(beta not in INVOKE_BETAS for beta in betas):
        return 400, "The model returned the following errors: invalid beta flag", "ValidationException"
    refused = anthropic.beta_refusal(payload, betas)
    return None if refused is None else (refused[0], f"The model returned the following errors: {refused[1]}", "ValidationException")


def operation(path: str) -> tuple[str, str]:
    """(model id, operation) of a model call's path."""
    match = _PATH.match(path.split("?", 1)[0])
    assert match is not None
    return unquote(match.group(1)), match.group(2)


def invoke_answer(name: str, model_id: str, payload: dict[str, Any], number: int, use_tool: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    return anthropic.answer(name, {**payload, "model": model_id}, number, use_tool)


def invoke_frames(name: str, model_id: str, payload: dict[str, Any], number: int, use_tool: tuple[str, dict[str, Any]] | None = None) -> list[bytes]:
    """Anthropic's events for the same answer, each in a `chunk` frame (base64 in `bytes`), as invoke-with-response-stream sends them."""
    events = anthropic.events(name, {**payload, "model": model_id}, number, use_tool)
    data = [line[len(b"data: ") :] for event in events for line in event.split(b"\n") if line.startswith(b"data: ")]
    return [frame("chunk", {"bytes": base64.b64encode(item).decode()}) for item in data]


def _said(payload: dict[str, Any]) -> tuple[str, bool]:
    """The text of the last user turn, and whether it carries tool results."""
    last = payload["messages"][-1].get("content") or []
    texts = [block["text"] for block in last if "text" in block]
    texts += [part.get("text", "") for block in last if "toolResult" in block for part in block["toolResult"].get("content", [])]
    return " ".join(texts), any("toolResult" in block for block in last)


def answer(name: str, payload: dict[str, Any], number: int) -> dict[str, Any]:
    said, results = _said(payload)
    tools = (payload.get("toolConfig") or {}).get("tools") or []
    if tools and not results:
        block: dict[str, Any] = {"toolUse": {"toolUseId": f"tooluse_{name}_{number}", "name": tools[0]["toolSpec"]["name"], "input": {"echo": said}}}
        stop = "tool_use"
    else:
        block, stop = {"text": f"[{name}] you said: {said}"}, "end_turn"
    words = sum(len(part["text"].split()) for turn in payload["messages"] for part in turn["content"] if "text" in part)
    output = len(block["text"].split()) if "text" in block else 1
    return {
        "output": {"message": {"role": "assistant", "content": [block]}},
        "stopReason": stop,
        "usage": {"inputTokens": words, "outputTokens": output, "totalTokens": words + output},
        "metrics": {"latencyMs": 1},
    }


def frames(name: str, payload: dict[str, Any], number: int) -> list[bytes]:
    """The same answer as event-stream frames: text word by word, a tool's input in two pieces."""
    whole = answer(name, payload, number)
    block = whole["output"]["message"]["content"][0]
    out = [frame("messageStart", {"role": "assistant"})]
    if "text" in block:
        words = block["text"].split(" ")
        out += [frame("contentBlockDelta", {"delta": {"text": word if index == 0 else f" {word}"}, "contentBlockIndex": 0}) for index, word in enumerate(words)]
    else:
        use = block["toolUse"]
        out.append(frame("contentBlockStart", {"start": {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}, "contentBlockIndex": 0}))
        text = json.dumps(use["input"])
        out += [frame("contentBlockDelta", {"delta": {"toolUse": {"input": piece}}, "contentBlockIndex": 0}) for piece in (text[: len(text) // 2], text[len(text) // 2 :])]
    out += [frame("contentBlockStop", {"contentBlockIndex": 0}), frame("messageStop", {"stopReason": whole["stopReason"]}), frame("metadata", {"usage": whole["usage"], "metrics": {"latencyMs": 1}})]
    return out


def frame(event_type: str, payload: dict[str, Any], exception: bool = False) -> bytes:
    """One AWS event-stream message: prelude (lengths, CRC), string headers, JSON payload, CRC of it all (an exception's: `event_type` names it)."""
    kind = (b":exception-type", b"exception") if exception else (b":event-type", b"event")
    fields = ((kind[0], event_type.encode()), (b":content-type", b"application/json"), (b":message-type", kind[1]))
    headers = b"".join(len(key).to_bytes(1, "big") + key + b"\x07" + len(value).to_bytes(2, "big") + value for key, value in fields)
    body = json.dumps(payload).encode()
    prelude = (12 + len(headers) + len(body) + 4).to_bytes(4, "big") + len(headers).to_bytes(4, "big")
    message = prelude + zlib.crc32(prelude).to_bytes(4, "big") + headers + body
    return message + zlib.crc32(message).to_bytes(4, "big")
