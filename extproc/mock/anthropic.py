"""The mock provider's Anthropic Messages API (`extproc mock --api anthropic`).

It refuses what Anthropic refuses, so a test through the gateway proves the
translation, not just the plumbing: the wrong auth header, no
`anthropic-version`, no `max_tokens`, a `system` role inside `messages`, a
field the Messages API does not know, a beta's field or turn without that
beta in `anthropic-beta` (Claude Code sends several). It answers text, or a
`tool_use` (of the first tool offered, or the one it is told to use) when the
last turn is not a tool result; as JSON, or as Anthropic's event stream when
`stream: true`.
"""

from __future__ import annotations

import json
from typing import Any

from ..providers.anthropic import COUNT_TOKENS
from ..translator.tables import anthropic_error

#: Top-level request fields of the Messages API; anything else is refused (as Anthropic does).
KNOWN_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences", "stream",
    "metadata", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers", "output_config",
    "context_management",
})  # fmt: skip
#: What the Messages API takes only under a beta, by the beta's name: a request field, or a turn of role `system`.
BETAS = {"context_management": "context-management-2025-06-27", "system turn": "mid-conversation-system-2026-04-07"}


def error_body(status: int, message: str) -> bytes:
    return json.dumps(anthropic_error(status, message)).encode()


def refusal(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str] | None:
    """(status, message) for a request Anthropic would refuse; None when it is well formed."""
    route = path.split("?", 1)[0]
    if not route.endswith(("/v1/messages", COUNT_TOKENS)):
        return 404, f"Not found: {path} (the Messages API is POST /v1/messages)"
    if "authorization" in headers or not headers.get("x-api-key"):
        return 401, "x-api-key header is required (Authorization: Bearer is not accepted)"
    if not headers.get("anthropic-version"):
        return 400, "anthropic-version: header is required"
    try:
        payload = json.loads(body)
    except ValueError:
        return 400, "The request body is not valid JSON."
    if not isinstance(payload, dict):
        return 400, "The request body must be a JSON object."
    unknown = sorted(set(payload) - KNOWN_FIELDS)
    if unknown:
        return 400, f"{unknown[0]}: Extra inputs are not permitted"
    if not isinstance(payload.get("max_tokens"), int) and not route.endswith(COUNT_TOKENS):
        return 400, "max_tokens: Field required"
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return 400, "messages: Field required"
    return beta_refusal(payload, header_betas(headers))


def header_betas(headers: dict[str, str]) -> list[str]:
    """The betas an `anthropic-beta` header names (Anthropic's API, Claude on Vertex)."""
    return headers.get("anthropic-beta", "").replace(" ", "").split(",")


def beta_refusal(payload: dict[str, Any], betas: list[str]) -> tuple[int, str] | None:
    """A beta's field or turn in a request whose `betas` do not name that beta (Anthropic: the header; Bedrock: the body)."""
    if "context_management" in payload and BETAS["context_management"] not in betas:
        return 400, "context_management: Extra inputs are not permitted"
    system_turns = BETAS["system turn"] in betas
    for index, message in enumerate(payload["messages"]):
        if system_turns and isinstance(message, dict) and message.get("role") == "system":
            continue
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            role = message.get("role") if isinstance(message, dict) else None
            return 400, f'messages.{index}.role: Unexpected role "{role}". The Messages API accepts a top-level `system` parameter, not "system" as an input message role.'
    return None


def count_tokens(payload: dict[str, Any]) -> dict[str, Any]:
    """What `/v1/messages/count_tokens` answers: the words of the prompt, as the mock counts tokens."""
    return {"input_tokens": _prompt_words(payload)}


def answer(name: str, payload: dict[str, Any], number: int, use_tool: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Messages response to a well-formed request; a call of `use_tool` (name, input) when it is offered, else of the first tool."""
    blocks = _reply_blocks(name, payload, number, use_tool)
    stop_reason = "tool_use" if any(block["type"] == "tool_use" for block in blocks) else "end_turn"
    return {
        "id": f"msg_{name}_{number}",
        "type": "message",
        "role": "assistant",
        "model": payload.get("model", "unknown"),
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": _prompt_words(payload), "output_tokens": _output_words(blocks)},
    }


def events(name: str, payload: dict[str, Any], number: int, use_tool: tuple[str, dict[str, Any]] | None = None) -> list[bytes]:
    """The same answer as Anthropic's event stream, one event per item (text word by word, tool input in pieces)."""
    message = answer(name, payload, number, use_tool)
    start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1}}
    out = [_event("message_start", {"type": "message_start", "message": start}), _event("ping", {"type": "ping"})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            out.append(_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}))
            words = block["text"].split(" ")
            out += [_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": word if i == 0 else f" {word}"}}) for i, word in enumerate(words)]
        else:
            out.append(_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}}))
            text = json.dumps(block["input"])
            middle = len(text) // 2
            out += [_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": part}}) for part in (text[:middle], text[middle:])]
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None}, "usage": {"output_tokens": message["usage"]["output_tokens"]}}
    out += [_event("message_delta", delta), _event("message_stop", {"type": "message_stop"})]
    return out


def stream_error(error_type: str, name: str) -> bytes:
    """Anthropic's in-band error event (`overloaded_error` when it is overloaded mid-request)."""
    return _event("error", {"type": "error", "error": {"type": error_type, "message": f"{name}: mock in-band {error_type}"}})


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    texts = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            texts += _texts(block.get("content"))
    return texts


def _reply_blocks(name: str, payload: dict[str, Any], number: int, use_tool: tuple[str, dict[str, Any]] | None) -> list[dict[str, Any]]:
    last = payload["messages"][-1]
    content = last.get("content")
    said = " ".join(_texts(content))
    tool_results = isinstance(content, list) and any(isinstance(block, dict) and block.get("type") == "tool_result" for block in content)
    tools = payload.get("tools")
    if isinstance(tools, list) and tools and not tool_results and payload.get("tool_choice", {}).get("type") != "none":
        tool, arguments = use_tool if use_tool and any(offered.get("name") == use_tool[0] for offered in tools) else (tools[0].get("name", "tool"), {"echo": said})
        return [{"type": "tool_use", "id": f"toolu_{name}_{number}", "name": tool, "input": arguments}]
    return [{"type": "text", "text": f"[{name}] you said: {said}"}]


def _prompt_words(payload: dict[str, Any]) -> int:
    system = payload.get("system")
    words = len(system.split()) if isinstance(system, str) else 0
    return words + sum(len(text.split()) for message in payload["messages"] for text in _texts(message.get("content")))


def _output_words(blocks: list[dict[str, Any]]) -> int:
    return sum(len(block["text"].split()) if block["type"] == "text" else 1 for block in blocks)
