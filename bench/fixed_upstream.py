"""The lightest provider we could make for benchmarks: a fixed HTTP/1.1 answer per request.

A raw asyncio protocol on uvloop (no HTTP framework, no per-request objects
beyond the bytes): it reads a request's head and body and writes one fixed
response, keep-alive (or, with `--close`, closing the connection after each
answer, as Python's `http.server` and some real providers do after a 429).
Run it in its own process:

    python bench/fixed_upstream.py PORT STATUS [BODY_FILE] [--close]

It is lighter than an Envoy `direct_response` listener, which on this 2-core
machine held "Envoy alone" back (the baseline must not be limited by its
upstream).
"""

from __future__ import annotations

import asyncio
import sys

_REASONS = {200: "OK", 429: "Too Many Requests"}


class FixedAnswer(asyncio.Protocol):
    def __init__(self, answer: bytes, close: bool = False):
        self.answer = answer
        self.close = close
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            marker = head.find(b"content-length:")
            length = int(head[marker + 15 : head.find(b"\r\n", marker) if head.find(b"\r\n", marker) > 0 else len(head)]) if marker >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            self.transport.write(self.answer)
            if self.close:
                self.transport.close()
                return


def answer(status: int, body: bytes, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    if close:
        head += "connection: close\r\n"
    if status == 429:
        head += "retry-after: 1\r\n"
    else:  # what every OpenAI answer carries: plenty left, so no cooldown, but the gateway reads them
        head += "x-ratelimit-remaining-requests: 9999\r\nx-ratelimit-reset-requests: 6ms\r\nx-ratelimit-remaining-tokens: 1999000\r\nx-ratelimit-reset-tokens: 30ms\r\n"
    return (head + "\r\n").encode() + body


async def serve(port: int, status: int, body: bytes, close: bool = False) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FixedAnswer(answer(status, body, close), close), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    close = "--close" in sys.argv
    arguments = [argument for argument in sys.argv[1:] if argument != "--close"]
    port, status = int(arguments[0]), int(arguments[1])
    body = open(arguments[2], "rb").read() if len(arguments) > 2 else b'{"error":{"message":"rate limited","type":"rate_limit_error","code":"rate_limit_error"}}'
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port, status, body, close))
    else:
        uvloop.run(serve(port, status, body, close))
