"""OpenAI chat.completions (the client's API) to AWS Bedrock's Converse API (the provider's), and back.

The request goes through Anthropic's Messages shape first (`openai_anthropic`:
the same roles, content blocks, tools and checks), then block by block into
Converse's; the answer comes straight back to a chat.completion. A stream
arrives as AWS event-stream frames (binary, CRC-checked by botocore's
parser) and leaves as `chat.completion.chunk` events, frame by frame.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from . import openai_anthropic, sse
from .base import BadAnswer, Request, TranslationError, body_field, expect_answer
from .eventstream import FrameReader

#: Converse's `stopReason` -> OpenAI's `finish_reason`.
_FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter", "content_filtered": "content_filter",
}  # fmt: skip
#: Bedrock's error types (the `x-amzn-errortype` header, or an exception frame) by status.
_ERROR_TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def request(payload: Any, model: str, default_max_tokens: int) -> Request:
    """chat.completions request -> Converse request (the model goes in the path, not the body)."""
    messages = openai_anthropic.request(payload, model, default_max_tokens)
    dropped = set(messages.dropped)
    if "metadata" in messages.body:
        dropped.add("user")  # Converse has no end-user field
    return Request(body=converse(messages.body), dropped=tuple(sorted(dropped)), stream=messages.stream, include_usage=messages.include_usage)


def converse(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages request body -> a Converse request body."""
    result: dict[str, Any] = {"messages": [{"role": turn["role"], "content": [_block(block) for block in turn["content"]]} for turn in body["messages"]]}
    if body.get("system"):
        result["system"] = [{"text": body["system"]}]
    config = {name: body[key] for key, name in (("max_tokens", "maxTokens"), ("temperature", "temperature"), ("top_p", "topP"), ("stop_sequences", "stopSequences")) if key in body}
    if config:
        result["inferenceConfig"] = config
    if body.get("tools"):
        tools = [{"toolSpec": {"name": tool["name"], "inputSchema": {"json": tool["input_schema"]}, **({"description": tool["description"]} if "description" in tool else {})}} for tool in body["tools"]]
        result["toolConfig"] = {"tools": tools}
        choice = body.get("tool_choice")
        if choice is not None:
            result["toolConfig"]["toolChoice"] = {"tool": {"name": choice["name"]}} if choice["type"] == "tool" else {choice["type"]: {}}
    if body.get("stream"):
        result["stream"] = True  # not Converse's: the provider's kind moves it into the path (`converse-stream`)
    return result


def _block(block: dict[str, Any]) -> dict[str, Any]:
    kind = block["type"]
    if kind == "text":
        return {"text": block["text"]}
    if kind == "image":
        source = block["source"]
        if source["type"] != "base64":
            raise TranslationError("an image must be a base64 data URL for Bedrock (Converse takes image bytes, not URLs)")
        return {"image": {"format": source["media_type"].split("/")[-1], "source": {"bytes": source["data"]}}}
    if kind == "tool_use":
        return {"toolUse": {"toolUseId": block["id"], "name": block["name"], "input": block["input"]}}
    if kind == "tool_result":
        content = block["content"]
        texts = [content] if isinstance(content, str) else [part["text"] for part in content]
        return {"toolResult": {"toolUseId": block["tool_use_id"], "content": [{"text": text} for text in texts]}}
    raise TranslationError(f"a {kind!r} block has no Converse equivalent")


def response(payload: Any, model: str = "", created: int | None = None) -> dict[str, Any]:
    """A Converse response -> a chat.completion (Bedrock's answer does not name its model: `model` is the provider's id)."""
    expect_answer(isinstance(payload, dict), "no JSON object")
    output = payload.get("output")
    said = output.get("message") if isinstance(output, dict) else None
    if not isinstance(said, dict):
        raise BadAnswer("the provider's answer had no message")
    content = said.get("content")
    if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
        raise BadAnswer("the provider's answer had no content")
    expect_answer(not content or any({"text", "toolUse", "reasoningContent"} & block.keys() for block in content), "no content of a known type")
    text = "".join(str(block.get("text", "")) for block in content if "text" in block)
    calls = [
        {"id": block["toolUse"].get("toolUseId", ""), "type": "function", "function": {"name": block["toolUse"].get("name", ""), "arguments": json.dumps(block["toolUse"].get("input", {}))}}
        for block in content
        if "toolUse" in block
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-bedrock-{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": _FINISH_REASONS.get(payload.get("stopReason") or "", "stop")}],
        "usage": usage(payload.get("usage") or {}),
    }


def usage(counts: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = int(counts.get("inputTokens") or 0), int(counts.get("outputTokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def error(status: int, body: bytes, provider: str) -> dict[str, Any]:
    """A Bedrock error answer (`{"message": …}`) -> an OpenAI-style error, for the same status."""
    message = body_field(body, "message")
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": str(message or f"Provider {provider!r} answered status {status}."), "type": kind, "code": "bedrock_error"}}


@dataclass
class StreamTranslator:
    """Bedrock's event-stream frames -> chat.completion.chunk events, one input chunk at a time.

    A frame that cannot be read (a bad CRC), an exception frame, or a stream
    that ends before `messageStop` becomes an error event for the client,
    never silence; `malformed` counts the unreadable frames.
    """

    include_usage: bool = False
    model: str = ""  # Bedrock's frames do not name it: the provider's model id
    malformed: int = 0
    _reader: FrameReader = field(default_factory=FrameReader)
    _chunks: sse.Chunks = field(init=False)
    _tools: dict[int, int] = field(default_factory=dict)  # content block index -> tool call index
    _stopped: bool = False
    _done: bool = False

    def __post_init__(self) -> None:
        self._chunks = sse.Chunks(id=f"chatcmpl-bedrock-{int(time.time() * 1000)}", model=self.model)

    def feed(self, data: bytes, end: bool = False) -> bytes:
        frames, corrupt = self._reader.feed(data)
        out = [translated for frame in frames if not self._done for translated in self._frame(frame.headers, frame.payload)]
        if corrupt:
            self.malformed += 1
            out.append(sse.openai_error("the provider sent an event-stream frame the gateway could not read", "malformed_event"))
        if end and not self._done:
            # a stream that ends in an error has no [DONE]: a clean end
            out.append(sse.DONE if self._stopped else sse.openai_error("the provider's event stream ended before its messageStop event", "incomplete_stream"))
            self._done = True
        return b"".join(out)

    def _frame(self, headers: dict[str, Any], payload: bytes) -> list[bytes]:
        if headers.get(":message-type") == "exception":
            kind = str(headers.get(":exception-type", "exception"))
            self._done = True
            return [sse.openai_error(str(body_field(payload, "message") or ""), kind, "rate_limit_error" if kind == "throttlingException" else "server_error")]
        try:
            event = json.loads(payload)
            return self._event(str(headers.get(":event-type", "")), event)
        except (ValueError, AttributeError, TypeError, KeyError):
            self.malformed += 1
            return [sse.openai_error("the provider sent an event the gateway could not read", "malformed_event")]

    def _event(self, kind: str, event: dict[str, Any]) -> list[bytes]:
        if kind == "messageStart":
            return [self._chunks.delta({"role": "assistant", "content": ""})]
        if kind == "contentBlockStart":
            start = (event.get("start") or {}).get("toolUse")
            if start:
                number = self._tools[event.get("contentBlockIndex", 0)] = len(self._tools)
                return [self._chunks.delta({"tool_calls": [{"index": number, "id": start.get("toolUseId", ""), "type": "function", "function": {"name": start.get("name", ""), "arguments": ""}}]})]
            return []
        if kind == "contentBlockDelta":
            delta = event.get("delta") or {}
            if "text" in delta:
                return [self._chunks.delta({"content": delta["text"]})]
            if "toolUse" in delta and event.get("contentBlockIndex", 0) in self._tools:
                call = {"index": self._tools[event.get("contentBlockIndex", 0)], "function": {"arguments": delta["toolUse"].get("input", "")}}
                return [self._chunks.delta({"tool_calls": [call]})]
            return []
        if kind == "messageStop":
            self._stopped = True
            return [self._chunks.delta({}, _FINISH_REASONS.get(event.get("stopReason") or "", "stop"))]
        if kind == "metadata" and self.include_usage:
            return [self._chunks.usage(usage(event.get("usage") or {}))]
        return []  # contentBlockStop, metadata without usage asked for
