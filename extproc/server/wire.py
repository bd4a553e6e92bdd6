"""ext_proc messages that carry a request body, read and written without passing the body through protobuf.

Decoding a 10 MiB `request_body` message with protobuf and reading the body
back out held the sidecar's event loop for 16-25 ms (two copies into fresh
memory); here the body is a view of the gRPC message's own bytes, and a reply
that replaces it is one join. Every other message is plain protobuf.

Both rest on the protobuf wire format: a message is its fields as
(tag, value) pairs, and two serialized messages concatenated parse as one
message with both merged. So a reply is its protobuf part, serialized, followed
by the few bytes that nest a `body_mutation.body` under it, followed by the body.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5
#: Field numbers, from external_processor.proto.
_REQUEST_BODY = 4  # ProcessingRequest.request_body (HttpBody)
_HTTP_BODY_BODY, _HTTP_BODY_END = 1, 2  # HttpBody.body, HttpBody.end_of_stream
_RESPONSE_FIELDS = {"request_headers": 1, "request_body": 3, "response_body": 4}  # ProcessingResponse.<kind> (HeadersResponse / BodyResponse)
_COMMON_RESPONSE = 1  # HeadersResponse.response / BodyResponse.response (CommonResponse)
_BODY_MUTATION = 3  # CommonResponse.body_mutation (BodyMutation)
_MUTATION_BODY = 1  # BodyMutation.body
_BODY_FIRST = bytes([_REQUEST_BODY << 3 | _LEN])


@dataclass(frozen=True)
class RequestBody:
    """A `request_body` message: its body as a view of the received bytes (no copy)."""

    body: memoryview
    end_of_stream: bool


def decode_request(data: bytes) -> pb.ProcessingRequest | RequestBody:
    """The gRPC request deserializer: a body message as `RequestBody`, anything else as protobuf."""
    if data[:1] != _BODY_FIRST:  # Envoy writes fields in number order: a body message starts with its body field
        return pb.ProcessingRequest.FromString(data)
    view = memoryview(data)
    fields = _fields(view)
    phase = fields.get(_REQUEST_BODY) if fields is not None else None
    if isinstance(phase, memoryview):
        inner = _fields(phase)
        if inner is not None:
            body = inner.get(_HTTP_BODY_BODY, view[0:0])
            return RequestBody(body if isinstance(body, memoryview) else view[0:0], bool(inner.get(_HTTP_BODY_END, 0)))
    return pb.ProcessingRequest.FromString(data)


def encode_response(message: pb.ProcessingResponse | bytes) -> bytes:
    """The gRPC response serializer: a reply already in wire form passes as it is."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def kind(request: pb.ProcessingRequest | RequestBody) -> str | None:
    """Which phase a message is (`request_headers`, `request_body`, …)."""
    return "request_body" if isinstance(request, RequestBody) else request.WhichOneof("request")


def request_body(request: pb.ProcessingRequest | RequestBody) -> bytes | memoryview:
    return request.body if isinstance(request, RequestBody) else request.request_body.body


def with_body(response: pb.ProcessingResponse, kind: str, body: bytes | memoryview) -> bytes:
    """`response` (for `kind`) whose common response also replaces the body with `body`, in one copy of it."""
    mutation = _tag(_MUTATION_BODY, _LEN) + _varint(len(body))
    common = _tag(_BODY_MUTATION, _LEN) + _varint(len(mutation) + len(body)) + mutation
    phase = _tag(_COMMON_RESPONSE, _LEN) + _varint(len(common) + len(body)) + common
    outer = _tag(_RESPONSE_FIELDS[kind], _LEN) + _varint(len(phase) + len(body)) + phase
    return b"".join((response.SerializeToString(), outer, body))


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(view: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(view) or shift > 63:
            raise ValueError("truncated varint")
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _fields(view: memoryview) -> dict[int, memoryview | int] | None:
    """A message's top-level fields: length-delimited ones as views, varints as ints; None if it is not well formed.

    (The last occurrence wins, as in protobuf; a body message has a handful of fields.)
    """
    fields: dict[int, memoryview | int] = {}
    position = 0
    try:
        while position < len(view):
            key, position = _read_varint(view, position)
            number, wire_type = key >> 3, key & 7
            if wire_type == _VARINT:
                fields[number], position = _read_varint(view, position)
            elif wire_type == _LEN:
                length, position = _read_varint(view, position)
                if position + length > len(view):
                    return None
                fields[number] = view[position : position + length]
                position += length
            elif wire_type in (_I64, _I32):
                position += 8 if wire_type == _I64 else 4
            else:
                return None
    except ValueError:
        return None
    return fields if position == len(view) else None
