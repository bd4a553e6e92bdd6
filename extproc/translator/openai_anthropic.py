"""OpenAI chat.completions (the client's API) to Anthropic Messages (the provider's), and back.

Pure functions over parsed JSON, plus `StreamTranslator`, which turns
Anthropic's server-sent events into `chat.completion.chunk` events as each
arrives. Nothing here knows about Envoy or gRPC.

A request field with no Messages equivalent is dropped and reported (never
sent raw); see `DROPPED` and docs/translation.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..providers.anthropic import API_VERSION, VERSION_HEADER
from . import sse, tables
from .base import InvalidField, Request, TranslationError, anthropic_blocks, body_field, expect, is_number

#: The Messages API path, under the provider's base_url path.
PATH = "/v1/messages"
#: What a translated attempt sets beyond its credentials: the API version, and an uncompressed answer (the sidecar reads it).
#: The config owns these names when an Anthropic provider exists, so other attempts get the client's values back.
REQUEST_HEADERS = {VERSION_HEADER: API_VERSION, "accept-encoding": "identity"}

#: The OpenAI request fields translated (or, `stream_options`, read).
MAPPED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream", "stream_options",
    "user", "tools", "tool_choice", "parallel_tool_calls",
})  # fmt: skip
#: OpenAI request fields with no Messages equivalent, reported by name when dropped; any other unmapped field is "other"
#: (a client's field names never become metric labels of their own).
DROPPED = frozenset({
    "n", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "seed", "response_format",
    "service_tier", "store", "reasoning_effort", "modalities", "audio", "prediction", "metadata", "functions",
    "function_call", "web_search_options", "verbosity", "prompt_cache_key", "safety_identifier",
})  # fmt: skip

_FINISH_REASONS = tables.FINISH_REASONS
_ERROR_TYPES = tables.OPENAI_ERROR_TYPES


def _check_fields(payload: dict[str, Any]) -> None:
    """The typed fields a translation reads, checked as OpenAI checks them: a wrong type is the client's 400, never our 500."""
    for name in ("max_tokens", "max_completion_tokens"):
        if payload.get(name) is not None:
            value = payload[name]
            expect(isinstance(value, int) and not isinstance(value, bool), name, "an integer", value)
            if value < 1:
                raise InvalidField(name, f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead.")
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        if payload.get(name) is not None:
            expect(is_number(payload[name]), name, "a number", payload[name])
            if not low <= payload[name] <= high:
                raise InvalidField(name, f"Invalid '{name}': expected a value between {low} and {high}, but got {payload[name]} instead.")
    stop = payload.get("stop")
    if stop is not None:
        expect(isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(item, str) for item in stop)), "stop", "a string or an array of strings", stop)
    for name, kind, expected in (("user", str, "a string"), ("stream", bool, "a boolean"), ("parallel_tool_calls", bool, "a boolean"), ("stream_options", dict, "an object"), ("tools", list, "an array")):
        if payload.get(name) is not None:
            expect(isinstance(payload[name], kind), name, expected, payload[name])
    choice = payload.get("tool_choice")
    if choice is not None:
        named = isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict) and isinstance(choice["function"].get("name"), str)
        expect(choice in ("none", "auto", "required") or named, "tool_choice", "'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}", choice)
    for index, message in enumerate(payload["messages"]):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls is None:
            continue
        expect(isinstance(calls, list), f"messages[{index}].tool_calls", "an array", calls)
        for number, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if arguments is not None:
                expect(isinstance(arguments, str), f"messages[{index}].tool_calls[{number}].function.arguments", "a string (JSON text)", arguments)


def request(payload: Any, model: str, default_max_tokens: int) -> Request:
    """chat.completions request -> Messages request, for `model` (the provider's name for it)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
        raise TranslationError("a chat completion request needs a 'messages' list")
    _check_fields(payload)
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    dropped = sorted({key if key in DROPPED else "other" for key in payload if key not in MAPPED})
    for index, message in enumerate(payload["messages"]):
        if not isinstance(message, dict):
            raise TranslationError(f"messages[{index}] is not an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(block["text"] for block in _content(message.get("content"), index) if block["type"] == "text")
        elif role == "user":
            _append(turns, "user", _content(message.get("content"), index))
        elif role == "assistant":
            blocks = _content(message.get("content"), index) if message.get("content") is not None else []
            blocks += [_tool_use(call, index) for call in message.get("tool_calls") or ()]
            _append(turns, "assistant", blocks)
        elif role == "tool":
            result = {"type": "tool_result", "tool_use_id": str(message.get("tool_call_id", "")), "content": _tool_result_content(message.get("content"), index)}
            _append(turns, "user", [result])
        else:
            raise TranslationError(f"messages[{index}] has role {role!r}, which the Messages API has no place for")
    body: dict[str, Any] = {"model": model, "messages": turns}
    if system:
        body["system"] = "\n\n".join(system)
    maximum = payload.get("max_completion_tokens", payload.get("max_tokens"))
    body["max_tokens"] = maximum if maximum is not None else default_max_tokens
    if payload.get("temperature") is not None:
        body["temperature"] = min(float(payload["temperature"]), 1.0)  # OpenAI allows 0-2, Anthropic 0-1
    if payload.get("top_p") is not None:
        body["top_p"] = payload["top_p"]
    stop = payload.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if payload.get("user") is not None:
        body["metadata"] = {"user_id": payload["user"]}
    tools = payload.get("tools")
    if isinstance(tools, list) and tools:
        body["tools"] = [_tool(tool, index) for index, tool in enumerate(tools)]
    choice = _tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
    if choice is not None and choice.get("type") == "none":
        body.pop("tools", None)  # Anthropic's "none" still wants tools listed; without them the model cannot call any
        choice = None
    if choice is not None and "tools" in body:
        body["tool_choice"] = choice
    stream = payload.get("stream") is True
    if stream:
        body["stream"] = True
    options = payload.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return Request(body=body, dropped=tuple(dropped), stream=stream, include_usage=include_usage)


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Consecutive turns of one role become one (tool results after each other, say): Messages alternates roles."""
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _content(content: Any, index: int) -> list[dict[str, Any]]:
    """A message's content (a string or a list of parts) as Messages content blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list):
        raise TranslationError(f"messages[{index}].content must be a string or a list of parts")
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), index))
        else:
            raise TranslationError(f"messages[{index}] has a {kind!r} content part, which is not translated to the Messages API")
    return blocks


def _image(image: Any, index: int) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise TranslationError(f"messages[{index}] has an image_url part without a url")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[len("data:") :].split(";")[0]
        if ";base64" not in header or not media_type:
            raise TranslationError(f"messages[{index}]: an image data URL must be base64 with a media type")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_use(call: Any, index: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise TranslationError(f"messages[{index}].tool_calls holds a call without a function name")
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        raise TranslationError(f"messages[{index}].tool_calls: the arguments of {function['name']!r} are not JSON") from None
    return {"type": "tool_use", "id": str(call.get("id", "")), "name": function["name"], "input": arguments if isinstance(arguments, dict) else {"value": arguments}}


def _tool_result_content(content: Any, index: int) -> str | list[dict[str, Any]]:
    return content if isinstance(content, str) else [block for block in _content(content, index) if block["type"] == "text"]


def _tool(tool: Any, index: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise TranslationError(f"tools[{index}] is not a function tool with a name")
    result = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if isinstance(function.get("description"), str):
        result["description"] = function["description"]
    return result


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is not False:
        return None
    if isinstance(choice, dict):  # checked: {"type": "function", "function": {"name": ...}}
        result: dict[str, Any] = {"type": "tool", "name": choice["function"]["name"]}
    else:
        result = {"type": {"required": "any", "none": "none"}.get(choice, "auto")}
    if parallel is False and result["type"] != "none":
        result["disable_parallel_tool_use"] = True
    return result


def response(payload: Any, created: int | None = None) -> dict[str, Any]:
    """A Messages response -> a chat.completion (the model is the provider's)."""
    blocks = anthropic_blocks(payload)
    text = "".join(str(block.get("text", "")) for block in blocks if block.get("type") == "text")
    calls = [
        {"id": block.get("id", ""), "type": "function", "function": {"name": block.get("name", ""), "arguments": json.dumps(block.get("input", {}))}}
        for block in blocks
        if block.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": payload.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": payload.get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": _FINISH_REASONS.get(payload.get("stop_reason") or "", "stop")}],
        "usage": usage(payload.get("usage") or {}),
    }


def usage(counts: dict[str, Any]) -> dict[str, Any]:
    """Messages usage -> OpenAI usage: the prompt counts cached input too (OpenAI's prompt_tokens include it)."""
    cached = int(counts.get("cache_read_input_tokens") or 0)
    prompt = int(counts.get("input_tokens") or 0) + int(counts.get("cache_creation_input_tokens") or 0) + cached
    completion = int(counts.get("output_tokens") or 0)
    result: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached:
        result["prompt_tokens_details"] = {"cached_tokens": cached}
    return result


def error(status: int, body: bytes, provider: str) -> dict[str, Any]:
    """A Messages error answer -> an OpenAI-style error, for the same status."""
    detail = body_field(body, "error")
    if not isinstance(detail, dict):
        return {"error": {"message": f"Provider {provider!r} answered status {status}.", "type": "server_error" if status >= 500 else "invalid_request_error", "code": "upstream_error"}}
    kind = str(detail.get("type", "api_error"))
    return {"error": {"message": str(detail.get("message", "")), "type": _ERROR_TYPES.get(kind, kind), "code": kind}}


@dataclass
class StreamTranslator:
    """Anthropic's event stream -> chat.completion.chunk events, one input chunk at a time (nothing held back but a partial line).

    An event that cannot be read, or a stream that ends before `message_stop`,
    becomes an error event for the client, never silence; a stream that ends
    in an error has no `[DONE]` (a clean end). `malformed` counts the unreadable events.
    """

    include_usage: bool = False
    malformed: int = 0
    _reader: sse.EventReader = field(default_factory=sse.EventReader)
    _chunks: sse.Chunks = field(default_factory=sse.Chunks)
    _usage: dict[str, Any] = field(default_factory=dict)
    _tools: dict[int, int] = field(default_factory=dict)  # content block index -> tool call index
    _blocks: int = 0  # content blocks started: a stream with none had no content for the client (an error, not an empty success)
    _done: bool = False

    def feed(self, data: bytes, end: bool = False) -> bytes:
        """The OpenAI events for what `data` completes; at `end`, the stream's close (`[DONE]`)."""
        out = [translated for event in self._reader.feed(data, end) for translated in self._event(event.data)]
        if end and not self._done:
            out.append(sse.openai_error("the provider's event stream ended before its message_stop event", "incomplete_stream"))
            self._done = True
        return b"".join(out)

    def _event(self, data: bytes) -> Iterable[bytes]:
        if self._done:
            return ()
        try:
            event = json.loads(data)
        except ValueError:
            event = None
        if isinstance(event, dict):
            try:
                return self._translate(event)
            except (AttributeError, TypeError, ValueError):  # a field of an unexpected type
                pass
        self.malformed += 1
        return (sse.openai_error("the provider sent an event the gateway could not read", "malformed_event"),)

    def _translate(self, event: dict[str, Any]) -> tuple[bytes, ...]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._chunks.id, self._chunks.model = message.get("id", ""), message.get("model", "")
            self._usage.update(message.get("usage") or {})
            return (self._chunks.delta({"role": "assistant", "content": ""}),)
        if kind == "content_block_start":
            self._blocks += 1
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                number = self._tools[event.get("index", 0)] = len(self._tools)
                call = {"index": number, "id": block.get("id", ""), "type": "function", "function": {"name": block.get("name", ""), "arguments": ""}}
                return (self._chunks.delta({"tool_calls": [call]}),)
            return ()
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return (self._chunks.delta({"content": delta.get("text", "")}),)
            if delta.get("type") == "input_json_delta" and event.get("index", 0) in self._tools:
                call = {"index": self._tools[event.get("index", 0)], "function": {"arguments": delta.get("partial_json", "")}}
                return (self._chunks.delta({"tool_calls": [call]}),)
            return ()
        if kind == "message_delta":
            self._usage.update(event.get("usage") or {})
            reason = (event.get("delta") or {}).get("stop_reason")
            return (self._chunks.delta({}, _FINISH_REASONS.get(reason or "", "stop")),) if reason else ()
        if kind == "message_stop":
            self._done = True
            if not self._blocks:
                return (sse.openai_error("the provider's answer had no content", "bad_provider_answer"),)
            usage_chunk = (self._chunks.usage(usage(self._usage)),) if self.include_usage else ()
            return (*usage_chunk, sse.DONE)
        if kind == "error":
            detail = event.get("error") or {}
            kind = str(detail.get("type", "api_error"))
            self._done = True
            return (sse.openai_error(str(detail.get("message", "")), kind, _ERROR_TYPES.get(kind, kind)),)
        return ()  # ping, content_block_stop, and events this translation does not know
