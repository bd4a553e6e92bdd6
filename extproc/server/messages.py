"""ext_proc messages read and written: headers, mutations, immediate answers, processing modes, the attempt's endpoint."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple, TypeAlias

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as ext_proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2, text_format
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from ..contract import (
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
    PATCH_END_KEY,
    PATCH_START_KEY,
    PATCH_VALUE_KEY,
    PROVIDER_METADATA_KEY,
    SIDECAR_REPLY_DETAILS,
)
from ..processor import errors, router
from ..processor.context import RequestContext
from ..processor.headermutator import HeaderPlan
from ..processor.jsonbody import Patch
from . import wire

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


def unchanged(kind: str | None) -> pb.ProcessingResponse:
    """An empty answer of the right kind: let the message through unchanged."""
    response = pb.ProcessingResponse()
    if kind in ("request_headers", "response_headers", "request_body", "response_body"):
        getattr(response, kind).response.SetInParent()
    elif kind in ("request_trailers", "response_trailers"):
        getattr(response, kind).SetInParent()
    return response


def found_in(request: pb.ProcessingRequest) -> router.Found | None:
    """The model Envoy found in the body (`render.body.find_model`), if it found one."""
    namespace = request.metadata_context.filter_metadata.get(BODY_NAMESPACE)
    if namespace is None:
        return None
    fields = namespace.fields
    if BODY_MODEL_KEY not in fields or fields[BODY_JSON_KEY].string_value != "valid":
        return None
    return router.Found(fields[BODY_MODEL_KEY].string_value, int(fields[BODY_MODEL_START_KEY].number_value), int(fields[BODY_MODEL_END_KEY].number_value))


def context_of(request: pb.ProcessingRequest) -> RequestContext | None:
    """What the router level handed this request's attempts (`RequestContext`), when Envoy forwarded it."""
    namespace = request.metadata_context.filter_metadata.get(METADATA_NAMESPACE)
    if namespace is None or METADATA_KEY not in namespace.fields:
        return None
    found = found_in(request)
    return RequestContext.decode(namespace.fields[METADATA_KEY].string_value, found.start if found is not None else None)


def status_of(headers: dict[str, str]) -> int:
    status = headers.get(":status", "")
    return int(status) if status.isdigit() else 0


class Endpoint(NamedTuple):
    cluster: str | None = None
    provider: str = ""


def endpoint(request: pb.ProcessingRequest) -> Endpoint:
    """The picked endpoint's cluster and provider, from its metadata (Envoy sends `xds.upstream_host_metadata` as text-format proto)."""
    attributes = request.attributes.get(EXT_PROC_ATTRIBUTES)
    if attributes is None or HOST_METADATA_ATTRIBUTE not in attributes.fields:
        return Endpoint()
    return endpoint_of(attributes.fields[HOST_METADATA_ATTRIBUTE].string_value)


@functools.lru_cache(maxsize=4096)  # the texts are few: one per endpoint
def endpoint_of(host_metadata: str) -> Endpoint:
    """The `extproc` keys of a host's metadata, parsed by protobuf's own text-format parser."""
    try:
        metadata = text_format.Parse(host_metadata, base_pb2.Metadata())
    except text_format.ParseError:
        return Endpoint()
    namespace = metadata.filter_metadata.get(METADATA_NAMESPACE)
    if namespace is None:
        return Endpoint()
    fields = namespace.fields
    cluster = fields[CLUSTER_METADATA_KEY].string_value if CLUSTER_METADATA_KEY in fields else None
    provider = fields[PROVIDER_METADATA_KEY].string_value if PROVIDER_METADATA_KEY in fields else ""
    return Endpoint(cluster, provider)


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
BODY_ONLY = _mode(_Mode.BUFFERED, response_headers=_Mode.SKIP)


#: A translated attempt: its body to translate, then the answer's headers, then (by the headers' kind) its body.
TRANSLATE = _mode(_Mode.BUFFERED)


ANSWER_BUFFERED = _mode(_Mode.BUFFERED, response_body=_Mode.BUFFERED)


ANSWER_STREAMED = _mode(_Mode.BUFFERED, response_body=_Mode.STREAMED)
