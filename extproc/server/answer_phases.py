"""Streams that start at an attempt's answer: an event stream held until its first token, a failed answer noted."""

from __future__ import annotations

from typing import NamedTuple

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ..config.store import Live
from ..processor import refusals
from ..processor.context import RequestContext
from ..processor.firsttoken import FirstToken, StreamError
from ..processor.refusals import Redirects
from . import wire
from .messages import Request, Response, context_of, endpoint, headers_of, set_headers, status_of, unchanged

#: The authority of a refusal's redirect: never a host, only a name the second pass's logs show.
REDIRECT_AUTHORITY = "extproc.redirect"


class HoldStream:
    """One event stream's start (the hold phase): its response headers wait here until its first token.

    Envoy sends the headers and, without waiting for their answer, the first
    chunks; none is answered until one holds a token (`FirstToken`), then all
    are, unchanged and in order, and the stream ends so the rest flows past.
    Anything but a 200 goes on at once: a 429 must reach Envoy's retry now.

    A stream that opens with an error event goes on as the failed answer it
    is: its status becomes the error's (an overloaded provider's 529), which
    Envoy's router retries on the next provider (or the failed-answer watch
    cools), and its held chunks become the error's JSON body, what the client
    gets when no retry follows. Not on a chain that hedges (`hedge_after_s`
    given): Envoy 1.40 crashes when an upstream filter releases a failed answer
    while another attempt is in flight (docs/envoy-behaviour.md). There the
    stream stays held for twice `hedge_after` (`wait_s`), time for the hedge
    to start and win (Envoy then resets this attempt); after that it goes on
    as sent, a success status that crashes nothing.
    """

    def __init__(self, hedge_after_s: float | None = None) -> None:
        self.first = FirstToken()
        self.hedge_after_s = hedge_after_s
        self.held: list[str] = []  # the kinds of the messages not answered yet, in order
        self.done = False
        #: Set while a hedged stream that opened with an error waits for its hedge: release it (as sent) after this long.
        self.wait_s: float | None = None

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
            if self.wait_s is not None or not self.first.feed(body.body, body.end_of_stream):
                return []
            if self.first.error is not None and self.hedge_after_s is not None:
                self.wait_s = 2 * self.hedge_after_s
                return []
            return self.release()
        return [unchanged(kind)]

    def release(self) -> list[Response]:
        """Answer everything held: unchanged (the stream goes on to the client), or as the error it opened with."""
        self.done = True
        held, self.held = self.held, []
        error = self.first.error if self.hedge_after_s is None else None
        if error is None:
            return [unchanged(kind) for kind in held]
        first_body = held.index("response_body")  # an error is only ever found in a chunk
        return [_as_error(kind, error, first=index == first_body) for index, kind in enumerate(held)]


def _as_error(kind: str, error: StreamError, first: bool) -> Response:
    """A held message of a stream that opened with `error`: the headers take its status, the first chunk its body, the others nothing."""
    response = unchanged(kind)
    if kind == "response_headers":
        set_headers(response.response_headers.response.header_mutation.set_headers, [(":status", str(error.status)), ("content-type", "application/json")])
    elif kind == "response_body":
        mutation = response.response_body.response.body_mutation
        mutation.body = error.body if first else b""
    return response


class RefusalStream:
    """An attempt's 400, read whole (the "refused" phase): a refusal another model may answer becomes an internal redirect.

    Its headers are let through (Envoy then sends the whole body and holds the
    headers); a body that says the prompt is too long, or refuses on content
    policy, for a model with fallbacks for that reason, is answered with a 307
    to a location Envoy follows at once (the route's `internal_redirect_policy`),
    naming a `Redirect` the router level takes up on the request's second pass.
    Anything else goes on as the provider sent it.
    """

    #: Never waits (the servicer's loop serves this stream and `HoldStream` alike).
    wait_s: float | None = None

    def __init__(self, live: Live, redirects: Redirects) -> None:
        self.live = live
        self.redirects = redirects
        self.done = False
        self._context: RequestContext | None = None
        self._provider = ""
        self._kind: str | None = None  # the message in hand

    def handle(self, request: Request) -> list[Response]:
        kind = self._kind = wire.kind(request)
        assert not isinstance(request, wire.RequestBody)  # this phase never sees the request
        if kind == "response_headers":
            self._context = context_of(request)
            self._provider = endpoint(request).provider
            self.done = request.response_headers.end_of_stream
            return [unchanged(kind)]
        if kind != "response_body":
            return [unchanged(kind)]
        self.done = True
        return [self._redirect(request.response_body.body) or unchanged(kind)]

    def release(self) -> list[Response]:
        """Let the message in hand go on as sent (after an unexpected error: a refusal is never worth breaking an answer for)."""
        self.done = True
        return [unchanged(self._kind)]

    def _redirect(self, body: bytes) -> Response | None:
        """The 307 that sends a refusal another model may answer to that model; None for any other 400."""
        context, why = self._context, refusals.reason(body)
        if context is None or context.model is None or why is None:
            return None
        target = refusals.fallback(self.live.current, context.model, why)
        if target is None:
            return None
        token = self.redirects.start(target, context.model, why, self._provider, context.path, context.originals)
        separator = "&" if "?" in context.path else "?"
        location = f"http://{REDIRECT_AUTHORITY}{context.path}{separator}{refusals.REDIRECT_PARAMETER}={token}"
        response = unchanged("response_body")
        set_headers(response.response_body.response.header_mutation.set_headers, [(":status", "307"), ("location", location)])
        return response


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
