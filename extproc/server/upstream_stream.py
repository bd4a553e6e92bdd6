"""The upstream level's stream: one attempt rebuilt for its provider, and its answer translated when the APIs differ."""

from __future__ import annotations

import msgspec
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from .. import translator
from ..config import Provider
from ..config.store import Live
from ..contract import (
    ATTEMPT_NAMESPACE,
    TIMEOUT_RETRY_HEADER,
)
from ..processor import errors, upstream
from ..processor.context import RequestContext
from . import wire
from .messages import (
    ANSWER_BUFFERED,
    ANSWER_STREAMED,
    BODY_ONLY,
    TRANSLATE,
    Request,
    Response,
    apply_headers,
    context_of,
    endpoint,
    headers_of,
    immediate,
    set_headers,
    set_patch,
    status_of,
    unchanged,
    with_body,
)


class UpstreamStream:
    """One attempt at the upstream level: rewrite it for the provider Envoy picked."""

    def __init__(self, live: Live):
        self.live = live
        self.headers: dict[str, str] = {}
        self.attempt: upstream.Attempt | None = None
        self.reply: errors.Reply | None = None
        self.done = False  # the attempt is rebuilt (or refused): Envoy needs nothing more from this stream
        self.request_id = ""
        self.client_path = ""  # the client's path (from the router level's context): which API the client reads
        self.number = 0  # the attempt's number
        #: Started because the attempt before ran past its per-try timeout (Envoy says so where a chain hedges).
        self.timeout_retry = False
        #: A translated attempt: the client's request fields the provider's API had no place for.
        self.dropped: tuple[str, ...] = ()
        #: A translated answer stream: events the last body message held that could not be read (each sent on as an error event).
        self.malformed_events = 0
        self._answer_translation: _AnswerTranslation | None = None

    def identify(self, request: pb.ProcessingRequest) -> None:
        """Read the attempt's headers: which request, which attempt."""
        self.headers = headers_of(request.request_headers)
        attempt = self.headers.get("x-envoy-attempt-count", "")
        self.number = int(attempt) if attempt.isdigit() else 0
        self.request_id = self.headers.get("x-request-id", "")
        self.timeout_retry = self.headers.get(TIMEOUT_RETRY_HEADER) == "true"

    def handle(self, request: Request) -> Response:
        kind = wire.kind(request)
        if kind == "request_headers":
            assert not isinstance(request, wire.RequestBody)  # a body message is the only other shape
            headers = self.headers or headers_of(request.request_headers)
            context = self._context(request)
            if context is not None:
                self.client_path = context.path
            decision = upstream.plan_attempt(self.live, endpoint(request).cluster, context, headers, self.number)
            if isinstance(decision, errors.Reply):
                self.reply = decision = errors.for_client(decision, self.client_path)
                self.done = True
                return immediate(decision)
            self.attempt = decision
            response = pb.ProcessingResponse()
            apply_headers(response.request_headers.response.header_mutation, decision.headers)
            # Every attempt here says which patch its body needs, "none" included (a translated one: none), so
            # nothing an earlier attempt left can apply to it, and the Lua filter sets its content-length.
            set_patch(response.dynamic_metadata.fields[ATTEMPT_NAMESPACE].struct_value, decision.patch)
            if decision.translation is not None:  # the body now; the answer's headers later (and from them, its body) when it is translated
                response.mode_override.CopyFrom(TRANSLATE if decision.translation.translates_answer else BODY_ONLY)
                return response
            self.done = True
            return response
        if kind == "request_body" and self.attempt is not None and self.attempt.translate:
            return self._translate_request(wire.request_body(request))
        if kind == "response_headers":
            assert not isinstance(request, wire.RequestBody)
            if self._answer_translation is not None:
                headers = headers_of(request.response_headers)
                response = self._answer_translation.on_headers(status_of(headers), headers, request.response_headers.end_of_stream)
                self.done = self._answer_translation.finished
                return response
            self.done = True
        if kind == "response_body" and self._answer_translation is not None:
            assert not isinstance(request, wire.RequestBody)
            before = self._answer_translation.malformed
            response = self._answer_translation.on_body(request.response_body.body, request.response_body.end_of_stream)
            self.malformed_events = self._answer_translation.malformed - before
            self.done = self._answer_translation.finished
            return response
        return unchanged(kind)

    @property
    def refused_answer(self) -> int | None:
        """The provider's status, when its answer became the gateway's 502 (`_AnswerTranslation`)."""
        translation = self._answer_translation
        return translation.status if translation is not None and translation.refused is not None else None

    def _translate_request(self, body: bytes | memoryview) -> Response:
        assert self.attempt is not None
        translated = self.attempt.translated(body)
        if isinstance(translated, errors.Reply):
            self.reply = translated = errors.for_client(translated, self.client_path)
            self.done = True
            return immediate(translated)
        self.dropped = translated.dropped
        pair = self.attempt.translation
        assert pair is not None
        if pair.answer is not None:
            self._answer_translation = _AnswerTranslation(pair.answer, self.attempt.provider, translated.include_usage, self.client_path, self.live.current.body_limit)
        else:
            self.done = True  # the answer is in the client's API already
        # msgspec: a request with a few MiB of base64 image is read and written 3x faster than with json (~5 ms for 5 MiB).
        sent = msgspec.json.encode(translated.body)
        signature = self.attempt.signature(translated.path, sent)
        if isinstance(signature, errors.Reply):
            self.reply = errors.for_client(signature, self.client_path)
            self.done = True
            return immediate(self.reply)
        response = pb.ProcessingResponse()
        path = [(":path", translated.path)] if translated.path is not None else []
        set_headers(response.request_body.response.header_mutation.set_headers, [*path, *signature])
        return with_body(response, "request_body", sent)

    @staticmethod
    def _context(request: pb.ProcessingRequest) -> RequestContext | None:
        return context_of(request)


class _AnswerTranslation:
    """A translated attempt's answer, back in the client's API: whole when JSON, event by event when a stream.

    A successful answer the client's API cannot carry (empty, unreadable, no
    choices or content, over the size limit) becomes a 502 in the client's
    shape, never a 200; `refused` says why, so it counts as the provider's failure.
    """

    def __init__(self, answer: translator.Answer, provider: Provider, include_usage: bool, client_path: str, limit: int):
        self.answer = answer
        self.provider = provider.name
        self.model = provider.model_name
        self.client_path = client_path
        self.limit = limit  # Envoy buffers an answer up to this (the listeners' max_body_bytes)
        self.status = 0
        self.stream: translator.AnswerStream | None = None
        self.include_usage = include_usage
        self.finished = False
        self.refused: str | None = None

    def on_headers(self, status: int, headers: dict[str, str], end: bool) -> pb.ProcessingResponse:
        """Ask for the body: chunk by chunk for an event stream (Envoy drops content-length), else whole."""
        self.status = status
        if end and 200 <= status < 300:  # no body: the body phase would never run
            return self._refuse(errors.bad_answer(self.provider, "its answer was empty"))
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:  # refused before a byte is buffered (a reply to a body message could crash Envoy 1.40)
            return self._refuse(errors.answer_too_large(self.provider))
        streamed = status == 200 and headers.get("content-type", "").startswith(self.answer.stream_type)
        if streamed:
            self.stream = self.answer.stream(self.include_usage, self.model)
        response = pb.ProcessingResponse()
        set_headers(response.response_headers.response.header_mutation.set_headers, [("content-type", "text/event-stream" if streamed else "application/json")])
        response.mode_override.CopyFrom(ANSWER_STREAMED if streamed else ANSWER_BUFFERED)
        return response

    @property
    def malformed(self) -> int:
        return self.stream.malformed if self.stream is not None else 0

    def on_body(self, body: bytes, end: bool) -> Response:
        if self.stream is not None:
            self.finished = end
            return wire.with_body(pb.ProcessingResponse(), "response_body", self.stream.feed(body, end))
        self.finished = True
        if self.status >= 400 or self.status < 200:
            answer = self.answer.error(self.status, body, self.provider)
        else:
            try:
                answer = self.answer.response(msgspec.json.decode(body), self.model)
            except translator.BadAnswer as exc:
                return self._refuse(errors.bad_answer(self.provider, str(exc).removeprefix("the provider's answer ")))
            except (ValueError, AttributeError, TypeError, LookupError):  # not JSON, or JSON of another shape
                return self._refuse(errors.bad_answer(self.provider, "its answer was not JSON of its API"))
        return with_body(pb.ProcessingResponse(), "response_body", msgspec.json.encode(answer))

    def _refuse(self, reply: errors.Reply) -> pb.ProcessingResponse:
        self.finished = True
        self.refused = reply.reason
        return immediate(errors.for_client(reply, self.client_path))
