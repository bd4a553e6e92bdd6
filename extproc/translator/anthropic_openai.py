"""Anthropic Messages (the client's API) to OpenAI chat.completions (the provider's), and back.

The mirror of `openai_anthropic`, sharing its tables (`tables`): pure
functions over parsed JSON, plus `StreamTranslator`, which turns
`chat.completion.chunk` events into Anthropic's event stream as each arrives.

A request field with no chat.completions equivalent is dropped and reported
(never sent raw); see `DROPPED` and docs/translation.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import sse, tables
from .base import InvalidField, Request, TranslationError, body_field, expect, expect_answer, is_number

#: The chat.completions path, under the provider's base_url path.
PATH = "/v1/chat/completions"
#: What a translated attempt sets beyond its credentials: an uncompressed answer (the sidecar reads it), and no Anthropic headers.
REQUEST_HEADERS: dict[str, str | None] = {"accept-encoding": "identity", "anthropic-version": None, "anthropic-beta": None}

#: The Messages request fields translated.
MAPPED = frozenset({
    "model", "messages", "system", "max_tokens", "temperature", "top_p", "stop_sequences", "stream", "metadata", "tools", "tool_choice",
})  # fmt: skip
#: Messages request fields with no chat.completions equivalent, reported by name when dropped; any other is "other".
DROPPED = frozenset({"top_k", "thinking", "service_tier", "container", "mcp_servers", "context_management"})
#: Content blocks a past assistant turn may hold that only Anthropic's models can read back: left out, reported as "thinking".
_THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def _check_fields(payload: dict[str, Any]) -> None:
    """The typed fields a translation reads, checked as Anthropic checks them: a wrong type is the client's 400, never our 500."""
    value = payload.get("max_tokens")
    if value is not None:
        expect(isinstance(value, int) and not isinstance(value, bool), "max_tokens", "an integer", value)
        if value < 1:
            raise InvalidField("max_tokens", f"max_tokens: Input should be greater than or equal to 1, got {value}.")
    for name in ("temperature", "top_p"):
        if payload.get(name) is not None:
            expect(is_number(payload[name]), name, "a number", payload[name])
            if not 0 <= payload[name] <= 1:
                raise InvalidField(name, f"{name}: Input should be between 0 and 1, got {payload[name]}.")
    stops = payload.get("stop_sequences")
    if stops is not None:
        expect(isinstance(stops, list) and all(isinstance(item, str) for item in stops), "stop_sequences", "an array of strings", stops)
    system = payload.get("system")
    if system is not None:
        expect(isinstance(system, (str, list)), "system", "a string or an array of text blocks", system)
    for name, kind, expected in (("stream", bool, "a boolean"), ("metadata", dict, "an object"), ("tools", list, "an array"), ("tool_choice", dict, "an object")):
        if payload.get(name) is not None:
            expect(isinstance(payload[name], kind), name, expected, payload[name])


def request(payload: Any, model: str, max_tokens_field: str = "max_tokens") -> Request:
    """Messages request -> chat.completions request, for `model` (the provider's name for it).

    `max_tokens_field`: OpenAI's own API wants `max_completion_tokens` (its
    reasoning models refuse `max_tokens`); most OpenAI-compatible servers read `max_tokens`.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
        raise TranslationError("a Messages request needs a 'messages' list")
    _check_fields(payload)
    dropped = {key if key in DROPPED else "other" for key in payload if key not in MAPPED}
    messages: list[dict[str, Any]] = []
    system = _system(payload.get("system"), "system")
    if system:
        messages.append({"role": "system", "content": system})
    for index, turn in enumerate(payload["messages"]):
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant", "system"):
            raise TranslationError(f"messages[{index}] must be an object with role 'user', 'assistant' or 'system'")
        if turn["role"] == "system":  # a mid-conversation system turn (a beta of Anthropic's; Claude Code sends them)
            messages.append({"role": "system", "content": _system(turn.get("content"), f"messages[{index}].content")})
            continue
        blocks = _blocks(turn.get("content"), index)
        if any(block.get("type") in _THINKING_BLOCKS for block in blocks):
            dropped.add("thinking")
        messages += _user(blocks, index) if turn["role"] == "user" else [_assistant(blocks, index)]
    body: dict[str, Any] = {"model": model, "messages": messages}
    if payload.get("max_tokens") is not None:
        body[max_tokens_field] = payload["max_tokens"]
    for name in ("temperature", "top_p"):
        if payload.get(name) is not None:
            body[name] = payload[name]
    if payload.get("stop_sequences"):
        body["stop"] = payload["stop_sequences"]
    user = (payload.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        body["user"] = user
    tools = payload.get("tools")
    if tools:
        body["tools"] = [_tool(tool, index) for index, tool in enumerate(tools)]
    choice = payload.get("tool_choice")
    if choice is not None and "tools" in body:
        body.update(_tool_choice(choice))
    stream = payload.get("stream") is True
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # Anthropic's clients expect usage in the stream
    return Request(body=body, dropped=tuple(sorted(dropped)), stream=stream, include_usage=stream)


def _system(system: Any, where: str) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise TranslationError(f"{where} must be a string or an array of text blocks")
    texts = []
    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise TranslationError(f"{where}[{index}] is not a text block")
        texts.append(block["text"])
    return "\n\n".join(texts)


def _blocks(content: Any, index: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(block, dict) and isinstance(block.get("type"), str) for block in content):
        raise TranslationError(f"messages[{index}].content must be a string or an array of content blocks, each with a type")
    return content


def _user(blocks: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """A user turn: its tool results first (OpenAI wants them right after the assistant's calls), then its own parts."""
    results = [
        {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": _result_text(block, index)}
        for block in blocks
        if block.get("type") == "tool_result"
    ]
    parts = [_part(block, index) for block in blocks if block.get("type") != "tool_result"]
    if not parts:
        return results
    content: str | list[dict[str, Any]] = parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts
    return [*results, {"role": "user", "content": content}]


def _part(block: dict[str, Any], index: int) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    if kind == "image":
        source = block.get("source")
        source = source if isinstance(source, dict) else {}
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            return {"type": "image_url", "image_url": {"url": f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"}}
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return {"type": "image_url", "image_url": {"url": source["url"]}}
        raise TranslationError(f"messages[{index}] has an image block whose source is neither base64 data nor a url")
    raise TranslationError(f"messages[{index}] has a {kind!r} content block, which is not translated to chat.completions")


def _result_text(block: dict[str, Any], index: int) -> str:
    content = block.get("content")
    if isinstance(content, list):
        texts = [str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"]
        if len(texts) != len(content):
            raise TranslationError(f"messages[{index}] has a tool_result with non-text content, which chat.completions cannot carry")
        content = "\n".join(texts)
    text = content if isinstance(content, str) else ""
    return f"Error: {text}" if block.get("is_error") is True else text


def _assistant(blocks: list[dict[str, Any]], index: int) -> dict[str, Any]:
    texts, calls = [], []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            if not isinstance(block.get("name"), str):
                raise TranslationError(f"messages[{index}] has a tool_use block without a name")
            arguments = json.dumps(block.get("input", {}), separators=(",", ":"))
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": {"name": block["name"], "arguments": arguments}})
        elif kind not in _THINKING_BLOCKS:
            raise TranslationError(f"messages[{index}] has a {kind!r} content block, which is not translated to chat.completions")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool(tool: Any, index: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or tool.get("type", "custom") != "custom":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise TranslationError(f"tools[{index}] is not a custom tool with a name ({kind!r}: Anthropic's server tools run only on Anthropic)")
    function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise InvalidField("tool_choice", "tool_choice: a choice of type 'tool' needs a 'name'.")
        result: dict[str, Any] = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    elif kind in ("auto", "any", "none"):
        result = {"tool_choice": {"auto": "auto", "any": "required", "none": "none"}[kind]}
    else:
        raise InvalidField("tool_choice", f"tool_choice: unknown type {kind!r} (expected 'auto', 'any', 'tool' or 'none').")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        result["parallel_tool_calls"] = False
    return result


def response(payload: Any) -> dict[str, Any]:
    """A chat.completion -> a Messages response (the model is the provider's)."""
    expect_answer(isinstance(payload, dict), "no JSON object")
    choices = payload.get("choices")
    expect_answer(isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict), "no choices")
    choice = choices[0]
    message = choice.get("message")
    expect_answer(isinstance(message, dict), "no message")
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": str(message["content"])})
    refusal = message.get("refusal")
    if refusal:  # the model declined: its words, and Anthropic's reason for that
        content.append({"type": "text", "text": str(refusal)})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""), "input": _arguments(function.get("arguments"))})
    return {
        "id": payload.get("id", ""),
        "type": "message",
        "role": "assistant",
        "model": payload.get("model", ""),
        "content": content,
        "stop_reason": "refusal" if refusal else tables.STOP_REASONS.get(choice.get("finish_reason") or "", "end_turn"),
        "stop_sequence": None,
        "usage": usage(payload.get("usage") or {}),
    }


def _arguments(text: Any) -> dict[str, Any]:
    """A tool call's arguments (JSON text) as Anthropic's `input` object; what is not an object is kept under "value"."""
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {"value": text}
    return value if isinstance(value, dict) else {"value": value}


def usage(counts: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage -> Messages usage: Anthropic's input_tokens leave out what was read from the cache."""
    cached = int((counts.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    result: dict[str, Any] = {"input_tokens": max(int(counts.get("prompt_tokens") or 0) - cached, 0), "output_tokens": int(counts.get("completion_tokens") or 0)}
    if cached:
        result["cache_read_input_tokens"] = cached
    return result


def error(status: int, body: bytes, provider: str) -> dict[str, Any]:
    """An OpenAI-style error answer -> Anthropic's error shape, for the same status."""
    detail = body_field(body, "error")
    message = str(detail.get("message", "")) if isinstance(detail, dict) else ""
    return tables.anthropic_error(status, message or f"Provider {provider!r} answered status {status}.")


@dataclass
class StreamTranslator:
    """`chat.completion.chunk` events -> Anthropic's event stream, one input chunk at a time.

    Content blocks open as their first delta arrives (text, then each tool
    call) and close when another starts or the choice finishes; the usage
    OpenAI sends in its last chunk goes into `message_delta`. A tool call's
    arguments are sent whole when its block closes, read as a JSON answer's
    are (`_arguments`: what is not a JSON object is kept under "value"), so a
    client's parser never meets arguments it cannot read. An unreadable
    event, a stream that ends before `[DONE]`, or one where no choice came
    (no content, no finish reason), becomes an `error` event for the client, never silence or an empty
    success; `malformed` counts the unreadable events.
    """

    include_usage: bool = True  # Anthropic's stream always carries usage
    malformed: int = 0
    _reader: sse.EventReader = field(default_factory=sse.EventReader)
    _started: bool = False
    _block: int = -1  # index of the open content block; -1: none
    _block_kind: str = ""
    _tools: dict[int, int] = field(default_factory=dict)  # OpenAI tool call index -> content block index
    _arguments: list[str] = field(default_factory=list)  # the open tool call's arguments so far
    _stop_reason: str | None = None
    _refused: bool = False  # a refusal came (`delta.refusal`): the stop reason is Anthropic's `refusal`
    _usage: dict[str, Any] = field(default_factory=dict)
    _done: bool = False

    def feed(self, data: bytes, end: bool = False) -> bytes:
        out: list[bytes] = []
        for event in self._reader.feed(data, end):
            if not self._done:
                self._event(event.data, out)
        if end and not self._done:
            out.append(sse.anthropic_error("the provider's event stream ended before its [DONE] event"))
            self._done = True
        return b"".join(out)

    def _event(self, data: bytes, out: list[bytes]) -> None:
        if data.strip() == b"[DONE]":
            self._finish(out)
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if isinstance(chunk, dict):
            try:
                self._chunk(chunk, out)
                return
            except (AttributeError, TypeError, ValueError, LookupError):  # a field of an unexpected type
                pass
        self.malformed += 1
        out.append(sse.anthropic_error("the provider sent an event the gateway could not read"))

    def _chunk(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        if isinstance(chunk.get("error"), dict):
            out.append(sse.anthropic_error(str(chunk["error"].get("message", "")), "api_error"))
            self._done = True
            return
        if not self._started:
            self._started = True
            message = {
                "id": chunk.get("id", ""), "type": "message", "role": "assistant", "model": chunk.get("model", ""), "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0},
            }  # fmt: skip
            out.append(sse.named_event("message_start", {"type": "message_start", "message": message}))
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            for text in (delta.get("content"), delta.get("refusal")):
                if text:
                    if self._block_kind != "text":
                        self._open({"type": "text", "text": ""}, out)
                    out.append(self._delta({"type": "text_delta", "text": str(text)}))
            if delta.get("refusal"):
                self._refused = True
            for call in delta.get("tool_calls") or ():
                number = call.get("index", 0)
                function = call.get("function") or {}
                if number not in self._tools:
                    self._open({"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""), "input": {}}, out)
                    self._tools[number] = self._block
                if function.get("arguments") and self._tools[number] == self._block:
                    self._arguments.append(str(function["arguments"]))
            if choice.get("finish_reason"):
                self._close(out)
                self._stop_reason = "refusal" if self._refused else tables.STOP_REASONS.get(choice["finish_reason"], "end_turn")

    def _open(self, block: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self._block += 1
        self._block_kind = block["type"]
        out.append(sse.named_event("content_block_start", {"type": "content_block_start", "index": self._block, "content_block": block}))

    def _close(self, out: list[bytes]) -> None:
        if self._block_kind == "tool_use" and self._arguments:
            out.append(self._delta({"type": "input_json_delta", "partial_json": json.dumps(_arguments("".join(self._arguments)))}))
            self._arguments.clear()
        if self._block_kind:
            out.append(sse.named_event("content_block_stop", {"type": "content_block_stop", "index": self._block}))
            self._block_kind = ""

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse.named_event("content_block_delta", {"type": "content_block_delta", "index": self._block, "delta": delta})

    def _finish(self, out: list[bytes]) -> None:
        if not self._started or (self._block < 0 and self._stop_reason is None):  # no content is an answer only when a choice finished
            out.append(sse.anthropic_error("the provider's event stream ended before any message" if not self._started else "the provider's answer had no choices"))
            self._done = True
            return
        self._close(out)
        delta = {"type": "message_delta", "delta": {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}, "usage": usage(self._usage)}
        out.append(sse.named_event("message_delta", delta))
        out.append(sse.named_event("message_stop", {"type": "message_stop"}))
        self._done = True
