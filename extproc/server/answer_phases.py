"""Streams that start at an attempt's answer: an event stream held until its first token, a failed answer noted."""

from __future__ import annotations

from typing import NamedTuple

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ..processor.firsttoken import FirstToken
from . import wire
from .messages import Request, Response, endpoint, headers_of, status_of, unchanged


class HoldStream:
    """One event stream's start (the hold phase): its response headers wait here until its first token.

    Envoy sends the headers and, without waiting for their answer, the first
    chunks; none is answered until one holds a token (`FirstToken`), then all
    are, unchanged and in order, and the stream ends so the rest flows past.
    Anything but a 200 goes on at once: a 429 must reach Envoy's retry now.
    """

    def __init__(self) -> None:
        self.first = FirstToken()
        self.held: list[str] = []  # the kinds of the messages not answered yet, in order
        self.done = False

    def handle(self, request: Request) -> list[Response]:
        kind = wire.kind(request)
        assert not isinstance(request, wire.RequestBody)  # this phase never sees the request
        if kind == "response_headers":
            self.held.append(kind)
            message = request.response_headers
            if headers_of(message).get(":status") != "200" or message.end_of_stream:
                return self.release()
            return []
        if kind == "response_body":
            self.held.append(kind)
            body = request.response_body
            return self.release() if self.first.feed(body.body, body.end_of_stream) else []
        return [unchanged(kind)]

    def release(self) -> list[Response]:
        """Answer everything held, unchanged: the stream goes on to the client."""
        self.done = True
        held, self.held = self.held, []
        return [unchanged(kind) for kind in held]


class FailedAnswer(NamedTuple):
    """An attempt's answer that moves its provider's state (phase "failed"), as Envoy shows it before acting on it."""

    provider: str
    status: int
    headers: dict[str, str]


def failed_answer(request: pb.ProcessingRequest) -> FailedAnswer | None:
    """The failed answer a "failed"-phase message carries; None for any other message, or one whose provider is not known."""
    if wire.kind(request) != "response_headers":
        return None
    provider = endpoint(request).provider
    if not provider:
        return None
    headers = headers_of(request.response_headers)
    return FailedAnswer(provider, status_of(headers), headers)
