"""What the mock provider's OpenAI API refuses, and the tool calls it makes.

With `strict` (the mock's option) it refuses what OpenAI's chat.completions
refuses (and a request with neither OpenAI's Bearer key nor Azure's `api-key`), so a test through the gateway proves a translation, not just the
plumbing: no `Authorization: Bearer`, a field OpenAI does not know (Anthropic's
`system`, `stop_sequences`, `top_k`…), a role or content part it has no place
for, a tool result that answers no call. Anthropic's path is a 404, as on OpenAI.
"""

from __future__ import annotations

import json
from typing import Any

#: Top-level chat.completions request fields OpenAI knows; anything else is refused.
KNOWN_FIELDS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user", "seed", "tools", "tool_choice",
    "parallel_tool_calls", "response_format", "service_tier", "store", "reasoning_effort", "modalities", "audio", "prediction",
    "metadata", "functions", "function_call", "web_search_options", "verbosity", "prompt_cache_key", "safety_identifier",
})  # fmt: skip
_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file"})


def not_found(path: str) -> tuple[int, str] | None:
    if path.split("?", 1)[0].endswith("/messages"):
        return 404, f"Invalid URL (POST {path})"
    return None


def refusal(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str] | None:
    """(status, message) for a request OpenAI would refuse (its chat.completions body checked); None when it is well formed."""
    missing = not_found(path)
    if missing is not None:
        return missing
    if not headers.get("authorization", "").startswith("Bearer ") and not headers.get("api-key"):  # api-key: Azure's
        return 401, "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth."
    if not path.split("?", 1)[0].endswith("/chat/completions"):
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return 400, "We could not parse the JSON body of your request."
    unknown = sorted(set(payload) - KNOWN_FIELDS) if isinstance(payload, dict) else []
    if unknown:
        return 400, f"Unrecognized request argument supplied: {unknown[0]}"
    messages = payload.get("messages") if isinstance(payload, dict) else None
    if not isinstance(messages, list) or not messages:
        return 400, "Missing required parameter: 'messages'."
    calls: set[object] = set()
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "developer", "user", "assistant", "tool"):
            return 400, f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
        content = message.get("content")
        if isinstance(content, list) and any(not isinstance(part, dict) or part.get("type") not in _PART_TYPES for part in content):
            return 400, f"Invalid content part type in messages[{index}].content."
        if role == "assistant":
            calls = {call.get("id") for call in message.get("tool_calls") or () if isinstance(call, dict)}
        elif role == "tool" and message.get("tool_call_id") not in calls:
            return 400, "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'."
    return None


def tool_calls(name: str, payload: dict[str, Any], number: int, use_tool: tuple[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A call of `use_tool` (name, arguments) when offered, else of the first function tool, unless tool results follow the last assistant turn (or tool_choice is "none")."""
    tools = payload.get("tools")
    messages = payload.get("messages")
    first = tools[0] if isinstance(tools, list) and tools and isinstance(tools[0], dict) else {}
    function = first.get("function")
    function = function if isinstance(function, dict) else {}
    if not isinstance(function.get("name"), str) or payload.get("tool_choice") == "none":
        return []
    roles = [message.get("role") for message in messages if isinstance(message, dict)] if isinstance(messages, list) else []
    last_assistant = max((index for index, role in enumerate(roles) if role == "assistant"), default=-1)
    if "tool" in roles[last_assistant + 1 :]:
        return []
    offered = [tool["function"].get("name") for tool in tools if isinstance(tool, dict) and isinstance(tool.get("function"), dict)] if isinstance(tools, list) else []
    if use_tool and use_tool[0] in offered:
        return [{"id": f"call_{name}_{number}", "type": "function", "function": {"name": use_tool[0], "arguments": json.dumps(use_tool[1])}}]
    said = messages[-1].get("content") if isinstance(messages, list) and messages and isinstance(messages[-1], dict) else None
    arguments = json.dumps({"echo": said if isinstance(said, str) else ""})
    return [{"id": f"call_{name}_{number}", "type": "function", "function": {"name": function["name"], "arguments": arguments}}]
