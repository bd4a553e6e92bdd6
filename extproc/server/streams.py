"""Translate ext_proc protobuf messages to the processor's plain data and back.

One object per gRPC stream. A router-level stream sees one request; an
upstream-level stream sees one attempt; a hold stream sees the start of one
attempt's event stream. No decision is made here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple, TypeAlias

import msgspec
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as ext_proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2, text_format
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from .. import translator
from ..config import Provider
from ..config.store import Live
from ..contract import (
    ATTEMPT_NAMESPACE,
    BODY_JSON_KEY,
    BODY_MODEL_END_KEY,
    BODY_MODEL_KEY,
    BODY_MODEL_START_KEY,
    BODY_NAMESPACE,
    CLUSTER_METADATA_KEY,
    EXT_PROC_ATTRIBUTES,
    HOST_METADATA_ATTRIBUTE,
    METADATA_KEY,
    METADATA_NAMESPACE,
    MODEL_METADATA_KEY,
    PATCH_END_KEY,
    PATCH_START_KEY,
    PATCH_VALUE_KEY,
    PATH_METADATA_KEY,
    PROVIDER_METADATA_KEY,
    SIDECAR_REPLY_DETAILS,
    TIMEOUT_RETRY_HEADER,
)
from ..processor import errors, router, upstream
from ..processor.context import RequestContext
from ..processor.cooldown import ProviderHealth
from ..processor.firsttoken import FirstToken
from ..processor.headermutator import HeaderPlan
from ..processor.jsonbody import Patch
from . import wire
from .answers import Answers

#: What a stream reads (a body message arrives as a view of its bytes) and answers (a body-replacing reply in wire form).
Request: TypeAlias = pb.ProcessingRequest | wire.RequestBody
Response: TypeAlias = pb.ProcessingResponse | bytes


def headers_of(message: pb.HttpHeaders) -> dict[str, str]:
    """Header map of an ext_proc message (Envoy sends values as raw bytes); repeated headers joined by commas."""
    entries = message.headers.headers
    result = {header.key: header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value for header in entries}
    if len(result) == len(entries):
        return result
    result = {}
    for header in entries:
        value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        result[header.key] = f"{result[header.key]},{value}" if header.key in result else value
    return result


def set_headers(options: RepeatedCompositeFieldContainer[base_pb2.HeaderValueOption], pairs: Iterable[tuple[str, str]]) -> None:
    """Append a header option per (name, value), built in place (a third of the cost of building each message and extending)."""
    for name, value in pairs:
        header = options.add().header
        header.key = name
        header.raw_value = value.encode()


def apply_headers(mutation: pb.HeaderMutation, plan: HeaderPlan) -> None:
    set_headers(mutation.set_headers, plan.set)
    mutation.remove_headers.extend(plan.remove)


def with_body(response: pb.ProcessingResponse, kind: str, body: bytes | memoryview) -> bytes:
    """`response` replacing the body with `body`, and its content-length (Envoy refuses a new body without it)."""
    set_headers(getattr(response, kind).response.header_mutation.set_headers, [("content-length", str(len(body)))])
    return wire.with_body(response, kind, body)


def set_patch(namespace: struct_pb2.Struct, patch: Patch | None, found: router.Found | None = None) -> None:
    """The model patch Envoy's Lua filter applies to the body (`render.body.model_patch`); no patch is an empty value.

    A patch of the model where Envoy `found` it carries no place: the Lua filter takes Envoy's.
    """
    start, end, value = (patch.start, patch.end, patch.value.decode()) if patch is not None else (0, 0, "")
    if found is None or (start, end) != (found.start, found.end):
        namespace.fields[PATCH_START_KEY].number_value = start
        namespace.fields[PATCH_END_KEY].number_value = end
    namespace.fields[PATCH_VALUE_KEY].string_value = value


def immediate(reply: errors.Reply) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    answer = response.immediate_response
    answer.status.code = reply.status
    answer.body = reply.body
    answer.details = SIDECAR_REPLY_DETAILS
    set_headers(answer.headers.set_headers, reply.headers)
    return response


class RouterStream:
    """One request at the router level: pick its chain before Envoy routes."""

    def __init__(self, live: Live, health: ProviderHealth | None, listener: str, answers: Answers | None = None):
        config = self.config = live.current
        self.health = health
        self.answers = answers
        self.listener = next((item for item in config.listeners if item.name == listener), config.listeners[0])
        self.headers: dict[str, str] = {}
        self.found: router.Found | None = None  # the model Envoy found in the body, and where
        self.reused = False  # answered with the answer kept for the request's shape
        self.reply: errors.Reply | None = None  # set when the sidecar answered the client itself
        self.done = False  # the request is routed (or answered): Envoy needs nothing more from this stream

    def handle(self, request: Request) -> Response:
        kind = wire.kind(request)
        if kind == "request_headers":
            assert not isinstance(request, wire.RequestBody)  # a body message is the only other shape
            headers = self.headers = headers_of(request.request_headers)
            message = request.request_headers
            count = len(message.headers.headers)
            found = self.found = _found(request)
            answers = self.answers
            shape = None
            if found is not None and answers is not None:
                # Everything the decision reads of the request (router.route): the shape its answer is kept by. Not
                # where the model is: the answer says "where Envoy found it" (`set_patch`, `RequestContext.encode`).
                shape = (self.listener.name, found.model, *headers, *(headers.get(name) for name in self.config.owned_headers), headers.get(":method"), headers.get(":path"))
                kept = answers.get(self.config, shape, self.health)
                if kept is not None:
                    # Its method and path passed `router.screen` when it was kept; the rest of the screen differs by request.
                    refused = router.limits(self.listener, headers, count)
                    if refused is not None:
                        return self._respond("request_headers", refused)
                    self.done = self.reused = True
                    return kept
            refused = router.screen(self.config, self.listener, headers, count)
            if refused is not None:
                return self._respond("request_headers", refused)
            decision = router.route(self.config, self.listener, headers, message.end_of_stream, self.health, found)
            response = self._respond("request_headers", decision)
            if shape is not None and answers is not None and isinstance(decision, router.Forward) and decision.reusable:
                answer = response.SerializeToString()
                answers.put(self.config, shape, decision.provider, decision.passed_over, answer)
                return answer
            return response
        if kind == "request_body":
            decision = router.on_body(self.config, self.listener, self.headers, wire.request_body(request), self.health)
            return self._respond("request_body", decision)
        return unchanged(kind)

    @property
    def client_path(self) -> str:
        return self.headers.get(":path", "")

    def _respond(self, kind: str, decision: errors.Reply | router.Forward | None) -> pb.ProcessingResponse:
        if isinstance(decision, errors.Reply):
            self.reply = decision = errors.for_client(decision, self.client_path)
            self.done = True
            response = immediate(decision)
            self._log_path(response)
            return response
        response = pb.ProcessingResponse()
        common = getattr(response, kind).response
        common.SetInParent()
        if decision is None:  # the body decides: the small lane sends it only when asked; the others (no overrides allowed) send it anyway
            response.mode_override.CopyFrom(_BODY_ONLY)
            return response
        self.done = True
        apply_headers(common.header_mutation, decision.headers)
        common.clear_route_cache = True
        namespace = self._log_path(response)
        found = self.found
        namespace.fields[METADATA_KEY].string_value = decision.context.encode(found.start if found is not None else None)
        namespace.fields[MODEL_METADATA_KEY].string_value = decision.model
        if decision.patch is not None:
            set_patch(namespace, decision.patch, found)
        return response

    def _log_path(self, response: pb.ProcessingResponse) -> struct_pb2.Struct:
        """The client's path, for the access log (by then `:path` is the provider's); returns the metadata namespace."""
        namespace = response.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value
        namespace.fields[PATH_METADATA_KEY].string_value = self.client_path
        return namespace


def _found(request: pb.ProcessingRequest) -> router.Found | None:
    """The model Envoy found in the body (`render.body.find_model`), if it found one."""
    namespace = request.metadata_context.filter_metadata.get(BODY_NAMESPACE)
    if namespace is None:
        return None
    fields = namespace.fields
    if BODY_MODEL_KEY not in fields or fields[BODY_JSON_KEY].string_value != "valid":
        return None
    return router.Found(fields[BODY_MODEL_KEY].string_value, int(fields[BODY_MODEL_START_KEY].number_value), int(fields[BODY_MODEL_END_KEY].number_value))


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
            decision = upstream.plan_attempt(self.live, _endpoint(request).cluster, context, headers, self.number)
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
                response.mode_override.CopyFrom(_TRANSLATE if decision.translation.translates_answer else _BODY_ONLY)
                return response
            self.done = True
            return response
        if kind == "request_body" and self.attempt is not None and self.attempt.translate:
            return self._translate_request(wire.request_body(request))
        if kind == "response_headers":
            assert not isinstance(request, wire.RequestBody)
            if self._answer_translation is not None:
                headers = headers_of(request.response_headers)
                response = self._answer_translation.on_headers(_status(headers), headers, request.response_headers.end_of_stream)
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
        namespace = request.metadata_context.filter_metadata.get(METADATA_NAMESPACE)
        if namespace is None or METADATA_KEY not in namespace.fields:
            return None
        found = _found(request)
        return RequestContext.decode(namespace.fields[METADATA_KEY].string_value, found.start if found is not None else None)


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
    provider = _endpoint(request).provider
    if not provider:
        return None
    headers = headers_of(request.response_headers)
    return FailedAnswer(provider, _status(headers), headers)


def _status(headers: dict[str, str]) -> int:
    status = headers.get(":status", "")
    return int(status) if status.isdigit() else 0


class _Endpoint(NamedTuple):
    cluster: str | None = None
    provider: str = ""


def _endpoint(request: pb.ProcessingRequest) -> _Endpoint:
    """The picked endpoint's cluster and provider, from its metadata (Envoy sends `xds.upstream_host_metadata` as text-format proto)."""
    attributes = request.attributes.get(EXT_PROC_ATTRIBUTES)
    if attributes is None or HOST_METADATA_ATTRIBUTE not in attributes.fields:
        return _Endpoint()
    return _endpoint_of(attributes.fields[HOST_METADATA_ATTRIBUTE].string_value)


@functools.lru_cache(maxsize=4096)  # the texts are few: one per endpoint
def _endpoint_of(host_metadata: str) -> _Endpoint:
    """The `extproc` keys of a host's metadata, parsed by protobuf's own text-format parser."""
    try:
        metadata = text_format.Parse(host_metadata, base_pb2.Metadata())
    except text_format.ParseError:
        return _Endpoint()
    namespace = metadata.filter_metadata.get(METADATA_NAMESPACE)
    if namespace is None:
        return _Endpoint()
    fields = namespace.fields
    cluster = fields[CLUSTER_METADATA_KEY].string_value if CLUSTER_METADATA_KEY in fields else None
    provider = fields[PROVIDER_METADATA_KEY].string_value if PROVIDER_METADATA_KEY in fields else ""
    return _Endpoint(cluster, provider)


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
        response.mode_override.CopyFrom(_ANSWER_STREAMED if streamed else _ANSWER_BUFFERED)
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


_Mode = ext_proc_pb2.ProcessingMode


def _mode(request_body: int, response_headers: int = _Mode.SEND, response_body: int = _Mode.NONE) -> ext_proc_pb2.ProcessingMode:
    """A whole processing mode for the rest of a stream: request headers sent, trailers skipped.

    Envoy replaces the mode wholesale: a field left at DEFAULT would mean SEND.
    """
    return _Mode(
        request_header_mode=_Mode.SEND,
        response_header_mode=response_headers,
        request_body_mode=request_body,
        response_body_mode=response_body,
        request_trailer_mode=_Mode.SKIP,
        response_trailer_mode=_Mode.SKIP,
    )


#: The request body and nothing of the answer: the router level once it asks for the body, and an attempt
#: whose body its provider's kind rewrites (Claude on Vertex) and whose answer needs nothing.
_BODY_ONLY = _mode(_Mode.BUFFERED, response_headers=_Mode.SKIP)
#: A translated attempt: its body to translate, then the answer's headers, then (by the headers' kind) its body.
_TRANSLATE = _mode(_Mode.BUFFERED)
_ANSWER_BUFFERED = _mode(_Mode.BUFFERED, response_body=_Mode.BUFFERED)
_ANSWER_STREAMED = _mode(_Mode.BUFFERED, response_body=_Mode.STREAMED)


def unchanged(kind: str | None) -> pb.ProcessingResponse:
    """An empty answer of the right kind: let the message through unchanged."""
    response = pb.ProcessingResponse()
    if kind in ("request_headers", "response_headers", "request_body", "response_body"):
        getattr(response, kind).response.SetInParent()
    elif kind in ("request_trailers", "response_trailers"):
        getattr(response, kind).SetInParent()
    return response
