"""A mock provider, OpenAI-compatible or Anthropic's Messages API (`api`), for demos, tests and benchmarks.

In its default mode it answers a chat.completion that echoes what it received
(path, headers with credentials masked, model), or an SSE stream when the
request asks for `stream: true`. With another status it answers an
OpenAI-style error (429 with Retry-After, say). With `api="anthropic"` it
speaks the Messages API instead (see `anthropic`). The latest `history`
requests are recorded so a test can assert exactly what a provider saw, and a
long-running demo (`make run`, compose) does not grow without bound.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..apis import ANTHROPIC_MESSAGES
from ..config import Provider
from ..providers import CREDENTIAL_HEADERS, kind_of
from . import anthropic, bedrock, openai, vertex

_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 529: "Overloaded",
}  # fmt: skip
_ERROR_TYPES = {429: "rate_limit_error", 401: "authentication_error", 404: "not_found_error"}
_MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # names lowercased, in arrival order
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class MockProvider:
    name: str = "mock"
    status: int = 200
    retry_after: str | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0  # before answering
    #: An error answer's headers go out at once and its body this long after (chunked): the attempt lasts until it ends.
    error_body_delay_s: float = 0.0
    #: A streamed answer: its headers and an opening event (OpenAI: a role, no content; Anthropic: `message_start`) at once,
    #: then this long before its first token.
    first_token_delay_s: float = 0.0
    #: Requests whose connection was closed while they waited (a delay, or a first token) or streamed: abandoned by the gateway.
    cancelled: int = 0
    chunks: int = 5  # SSE chunks in a streamed answer (at least one per word of the reply)
    #: A streamed answer stops after this many content chunks and sends nothing more until the gateway goes away.
    stall_after_chunks: int | None = None
    chunk_interval_s: float = 0.05
    #: A streamed answer sends this many content chunks, then an in-band error of `stream_error_type` (Anthropic's
    #: `event: error`, an OpenAI chunk of `error`, Bedrock's exception frame: `throttlingException`), and ends: 0 is an error before any content.
    stream_error_after: int | None = None
    stream_error_type: str = "overloaded_error"
    #: A streamed answer's connection closes after this many content chunks, its stream unended (a cut mid-answer).
    cut_after_chunks: int | None = None
    received: list[ReceivedRequest] = field(default_factory=list)  # the latest `history` requests, oldest first
    history: int = 1000
    served: int = 0  # requests received in all
    port: int = 0
    tls: ssl.SSLContext | None = None  # serve https with this context
    api: str = "openai"  # or "anthropic": the Messages API
    #: How SSE lines end ("\n", "\r\n" or "\r"); with a CR, each event goes out in pieces split just after every CR,
    #: so a read can end between CR and LF (as on a real network).
    sse_line_end: str = "\n"
    #: Bytes of filler in each JSON answer (a large answer: embeddings batches, b64 images), a field the gateway passes over.
    padding: int = 0
    #: An event sent as it is after the first one (a provider's malformed event, say).
    sse_odd_event: bytes | None = None
    #: A successful JSON answer's body as it is (a provider's malformed answer; b"" for an empty one).
    answer_body: bytes | None = None
    #: With `status`: the error answer's body as it is (a context-length or content-policy 400, as each API writes it).
    error_answer: bytes | None = None
    #: Refuse what OpenAI's chat.completions refuses (`openai.refusal`), not only its 404s.
    strict: bool = False
    #: `api="vertex"`: the token endpoint's trusted key and the tokens issued (`vertex.VertexState`).
    vertex: vertex.VertexState | None = None
    #: `api="bedrock"`: the credentials its signature check accepts (`bedrock.BedrockState`).
    bedrock: bedrock.BedrockState | None = None
    #: The tool it calls (name, arguments) when that tool is offered; otherwise the first one offered, with `{"echo": …}`.
    use_tool: tuple[str, dict] | None = None
    _server: asyncio.AbstractServer | None = None
    _connections: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                self.served += 1
                self.received.append(request)
                if len(self.received) > self.history:
                    del self.received[: len(self.received) - self.history]
                if self.delay_s and not await self._wait(reader, self.delay_s):
                    break
                await self._answer(request, reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, chunks: Iterable[bytes], end: bool = True) -> None:
        """Each chunk of a streamed answer, `chunk_interval_s` apart; at `end`, the answer's last (empty) chunk."""
        for chunk in chunks:
            _write_chunk(writer, chunk)
            await writer.drain()
            await asyncio.sleep(self.chunk_interval_s)
        if end:
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def _broken(self, writer: asyncio.StreamWriter, opening: list[bytes], content: list[bytes], error: bytes) -> bool:
        """A stream that fails (`stream_error_after`) or is cut (`cut_after_chunks`) after some content; True when this one was."""
        if self.stream_error_after is not None:
            await self._send(writer, [*opening, *content[: self.stream_error_after], error])
            return True
        if self.cut_after_chunks is not None:
            await self._send(writer, [*opening, *content[: self.cut_after_chunks]], end=False)
            raise ConnectionResetError("the mock cut this stream")
        return False

    async def _wait(self, reader: asyncio.StreamReader, seconds: float) -> bool:
        """Wait `seconds`; False (and the request counted as cancelled) if the peer closed the connection meanwhile."""
        try:
            closed = await asyncio.wait_for(reader.read(1), seconds) == b""
        except TimeoutError:
            return True
        if closed:
            self.cancelled += 1
        return not closed

    async def _answer(self, request: ReceivedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = [("x-mock-provider", self.name), *self.extra_headers]
        if self.api == "anthropic":
            await self._answer_anthropic(request, headers, reader, writer)
            return
        if self.api == "vertex":
            await self._answer_vertex(request, headers, reader, writer)
            return
        if self.api == "bedrock":
            await self._answer_bedrock(request, headers, writer)
            return
        refused = openai.refusal(request.path, dict(request.headers), request.body) if self.strict else openai.not_found(request.path)
        if await self._refused(refused, headers, writer, _openai_error):
            return
        try:
            payload = json.loads(request.body) if request.body else {}
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if payload.get("stream") is True:
            await self._stream(payload, headers, reader, writer)
            return
        _write_response(writer, 200, headers, json.dumps(self._completion(request, payload)).encode() if self.answer_body is None else self.answer_body)
        await writer.drain()

    async def _refused(self, refused: tuple[int, str] | None, headers: list[tuple[str, str]], writer: asyncio.StreamWriter, error_body) -> bool:
        """Answer an error in the mock's API when the request is refused, or when the mock is set to fail (its status); True when it did."""
        if self.status == 200 and refused is None:
            return False
        status, message = refused or (self.status, f"{self.name}: mock status {self.status}")
        if self.retry_after is not None and refused is None:
            headers.append(("retry-after", self.retry_after))
        if self.error_answer is not None and refused is None:
            _write_response(writer, status, headers, self.error_answer)
            await writer.drain()
            return True
        if self.error_body_delay_s:
            _write_head(writer, headers, content_type="application/json", status=status)
            await writer.drain()
            await asyncio.sleep(self.error_body_delay_s)
            await self._send(writer, [error_body(status, message)])
            return True
        _write_response(writer, status, headers, error_body(status, message))
        await writer.drain()
        return True

    async def _answer_anthropic(self, request: ReceivedRequest, headers: list[tuple[str, str]], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await self._refused(anthropic.refusal(request.path, dict(request.headers), request.body), headers, writer, anthropic.error_body):
            return
        payload = json.loads(request.body)
        if request.path.split("?", 1)[0].endswith(anthropic.COUNT_TOKENS):
            _write_response(writer, 200, headers, json.dumps(anthropic.count_tokens(payload)).encode())
            await writer.drain()
            return
        if payload.get("stream") is True:
            _write_head(writer, headers)
            events = anthropic.events(self.name, payload, self.served, self.use_tool)
            if self.sse_odd_event is not None:
                events.insert(1, self.sse_odd_event)
            line_end = self.sse_line_end.encode()
            if await self._broken(writer, events[:2], events[3:], anthropic.stream_error(self.stream_error_type, self.name)):
                return
            await self._send(writer, _pieces(events[0], line_end), end=False)
            if self.first_token_delay_s and not await self._wait(reader, self.first_token_delay_s):  # after message_start
                raise ConnectionResetError("the gateway left this stream before its first token")
            await self._send(writer, [piece for event in events[1:] for piece in _pieces(event, line_end)])
            return
        whole = anthropic.answer(self.name, payload, self.served, self.use_tool)
        if self.padding:
            whole["padding"] = "x" * self.padding
        _write_response(writer, 200, headers, json.dumps(whole).encode() if self.answer_body is None else self.answer_body)
        await writer.drain()

    async def _answer_vertex(self, request: ReceivedRequest, headers: list[tuple[str, str]], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.vertex is not None, "a vertex mock needs its VertexState"
        if request.path == vertex.TOKEN_PATH:
            self.served -= 1  # the token endpoint is not a model call
            self.received.pop()
            status, grant = self.vertex.grant(request.body)
            _write_response(writer, status, headers, json.dumps(grant).encode())
            await writer.drain()
            return
        if await self._refused(self.vertex.refusal(request.path, dict(request.headers), request.body), headers, writer, vertex.error_body):
            return
        payload = json.loads(request.body)
        model = self.vertex.claude_model(request.path)
        if model is None:  # the OpenAI-compatible endpoint
            if payload.get("stream") is True:
                await self._stream(payload, headers, reader, writer)
                return
            _write_response(writer, 200, headers, json.dumps(self._completion(request, payload)).encode())
        elif payload.get("stream") is True:
            _write_head(writer, headers)
            await self._send(writer, vertex.claude_events(self.name, model, payload, self.served, self.use_tool))
            return
        else:
            _write_response(writer, 200, headers, json.dumps(vertex.claude_answer(self.name, model, payload, self.served, self.use_tool)).encode())
        await writer.drain()

    async def _answer_bedrock(self, request: ReceivedRequest, headers: list[tuple[str, str]], writer: asyncio.StreamWriter) -> None:
        state = self.bedrock or bedrock.BedrockState()
        refused = state.refusal(request.method, request.path, dict(request.headers), request.body)
        if self.status != 200 or refused is not None:
            status, message, kind = refused or (self.status, f"{self.name}: mock status {self.status}", None)
            body, error_type = bedrock.error(status, message, kind)
            _write_response(writer, status, [*headers, error_type], body)
            await writer.drain()
            return
        payload = json.loads(request.body)
        model_id, operation = bedrock.operation(request.path)
        if operation in ("converse", "invoke"):
            whole = bedrock.answer(self.name, payload, self.served) if operation == "converse" else bedrock.invoke_answer(self.name, model_id, payload, self.served, self.use_tool)
            _write_response(writer, 200, headers, json.dumps(whole).encode())
            await writer.drain()
            return
        _write_head(writer, headers, content_type=bedrock.EVENT_STREAM)
        frames = bedrock.frames(self.name, payload, self.served) if operation == "converse-stream" else bedrock.invoke_frames(self.name, model_id, payload, self.served, self.use_tool)
        exception = bedrock.frame(self.stream_error_type, {"message": f"{self.name}: mock in-band {self.stream_error_type}"}, exception=True)
        if not await self._broken(writer, frames[:1], frames[1:], exception):
            await self._send(writer, frames)

    def _completion(self, request: ReceivedRequest, payload: dict) -> dict:
        calls = openai.tool_calls(self.name, payload, self.served, self.use_tool)
        message = {"role": "assistant", "content": None, "tool_calls": calls} if calls else {"role": "assistant", "content": _reply_text(self.name, payload)}
        return {
            "id": f"chatcmpl-{self.name}-{self.served}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model", "unknown"),
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": _usage(payload, _reply_text(self.name, payload)),
            **({"padding": "x" * self.padding} if self.padding else {}),
            "echo": {
                "provider": self.name,
                "method": request.method,
                "path": request.path,
                "headers": {key: _mask(key, value) for key, value in request.headers},
            },
        }

    async def _stream(self, payload: dict, headers: list[tuple[str, str]], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _write_head(writer, headers)

        def event(choices: list[dict], **extra) -> bytes:
            chunk = {"id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk", "created": int(time.time()), "model": payload.get("model", "unknown"), "choices": choices, **extra}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        if self.first_token_delay_s:
            _write_chunk(writer, event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
            await writer.drain()
            if not await self._wait(reader, self.first_token_delay_s):
                raise ConnectionResetError("the gateway left this stream before its first token")
        words = _reply_text(self.name, payload).split(" ")
        calls = openai.tool_calls(self.name, payload, self.served, self.use_tool)
        if calls:  # the call's name first, then its arguments in two pieces
            arguments = calls[0]["function"]["arguments"]
            first = {"index": 0, "id": calls[0]["id"], "type": "function", "function": {"name": calls[0]["function"]["name"], "arguments": ""}}
            rest = [{"index": 0, "function": {"arguments": piece}} for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :])]
            deltas = [{"role": "assistant", "tool_calls": [first]}, *({"tool_calls": [call]} for call in rest)]
        else:
            deltas = [{"content": f"{words[index % len(words)]} "} for index in range(max(self.chunks, len(words)))]
        finish = "tool_calls" if calls else "stop"
        opening = event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        content = [event([{"index": 0, "delta": delta, "finish_reason": None}]) for delta in deltas]
        error = {"error": {"message": f"{self.name}: mock in-band {self.stream_error_type}", "type": self.stream_error_type, "param": None, "code": self.stream_error_type}}
        if await self._broken(writer, [opening], content, f"data: {json.dumps(error)}\n\n".encode()):
            return
        if self.stall_after_chunks is not None:
            await self._send(writer, (event([{"index": 0, "delta": delta, "finish_reason": None}]) for delta in deltas[: self.stall_after_chunks]), end=False)
            await self._wait(reader, 3600)
            raise ConnectionResetError("the gateway left this stalled stream")
        await self._send(writer, (event([{"index": 0, "delta": delta, "finish_reason": finish if number == len(deltas) - 1 else None}]) for number, delta in enumerate(deltas)), end=False)
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:  # OpenAI: one last chunk with the usage, no choices
            _write_chunk(writer, event([], usage=_usage(payload, " ".join(words))))
        _write_chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _openai_error(status: int, message: str) -> bytes:
    error_type = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": error_type}}).encode()


def _reply_text(name: str, payload: dict) -> str:
    messages = payload.get("messages")
    last = messages[-1].get("content") if isinstance(messages, list) and messages and isinstance(messages[-1], dict) else None
    return f"[{name}] you said: {last}" if isinstance(last, str) else f"[{name}] hello"


def _usage(payload: dict, reply: str) -> dict:
    """Token counts a test can predict: words in the messages' text contents, words in the reply."""
    messages = payload.get("messages")
    contents = [message.get("content") for message in messages if isinstance(message, dict)] if isinstance(messages, list) else []
    prompt = sum(len(content.split()) for content in contents if isinstance(content, str))
    completion = len(reply.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _mask(name: str, value: str) -> str:
    """Echo credentials recognisably but not whole."""
    if name in CREDENTIAL_HEADERS and len(value) > 12:
        return value[:12] + "..."
    return value


async def _read_request(reader: asyncio.StreamReader) -> ReceivedRequest | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers = []
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        key, _, value = raw.decode("latin-1").partition(":")
        headers.append((key.strip().lower(), value.strip()))
    names = dict(headers)
    if names.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
    else:
        length = int(names.get("content-length", "0"))
        if length > _MAX_BODY:
            raise ValueError("body too large")
        body = await reader.readexactly(length) if length else b""
    return ReceivedRequest(method, path, tuple(headers), body)


def _write_response(writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n", "content-type: application/json\r\n", f"content-length: {len(body)}\r\n"]
    head += [f"{key}: {value}\r\n" for key, value in headers]
    writer.write(("".join(head) + "\r\n").encode() + body)


def _write_head(writer: asyncio.StreamWriter, headers: list[tuple[str, str]], content_type: str = "text/event-stream", status: int = 200) -> None:
    """The head of a chunked answer: a 200 event stream, unless told otherwise."""
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n", f"content-type: {content_type}\r\n", "transfer-encoding: chunked\r\n", "cache-control: no-cache\r\n"]
    head += [f"{key}: {value}\r\n" for key, value in headers]
    writer.write(("".join(head) + "\r\n").encode())


def _pieces(event: bytes, line_end: bytes) -> list[bytes]:
    """An event framed with `line_end`, cut just after every CR."""
    framed = event.replace(b"\n", line_end)
    if b"\r" not in line_end:
        return [framed]
    return [piece for piece in re.split(rb"(?<=\r)", framed) if piece]


def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def for_provider(provider: Provider, status: int = 200, retry_after: str | None = None) -> MockProvider:
    """A mock speaking `provider`'s API and trusting its credentials (a Vertex key file's public half, Bedrock's keys)."""
    kind = kind_of(provider).name
    if kind == "bedrock":
        keys = {"access_key_id": provider.aws_access_key_id, "secret_access_key": provider.aws_secret_access_key, "region": provider.aws_region_name}
        signing = bedrock.BedrockState(**{name: value for name, value in keys.items() if value}, api_key=provider.access_key)
        return MockProvider(name=provider.name, status=status, retry_after=retry_after, api="bedrock", bedrock=signing)
    if kind == "vertex_ai" and provider.vertex_credentials:
        tokens = vertex.VertexState(public_key=vertex.public_key_of(provider.vertex_credentials))
        return MockProvider(name=provider.name, status=status, retry_after=retry_after, api="vertex", vertex=tokens)
    api = "anthropic" if kind_of(provider).api_for(provider) == ANTHROPIC_MESSAGES else "openai"
    return MockProvider(name=provider.name, status=status, retry_after=retry_after, api=api)


async def serve_forever(mock: MockProvider, host: str, port: int) -> None:
    await mock.start(host, port)
    print(f"mock provider {mock.name!r} answering {mock.status} on http://{host}:{mock.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await mock.stop()
