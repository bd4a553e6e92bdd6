"""The protobuf translation layer, driven with real ext_proc messages (no network)."""

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config import parse_config
from extproc.config.store import Live
from extproc.providers import CREDENTIAL_HEADERS
from extproc.server import wire
from extproc.server.answer_phases import FailedAnswer, HoldStream, failed_answer
from extproc.server.router_stream import RouterStream
from extproc.server.upstream_stream import UpstreamStream

CONFIG = parse_config(
    """
listeners: [{type: model, name: llm, port: 0, max_body_bytes: 4KiB}]
model_providers:
  - {name: a, model: openai/gpt-4, base_url: "http://127.0.0.1:1", access_key: key-a}
  - {name: b, model: openai/gpt-4, base_url: "http://127.0.0.1:2/p", access_key: key-b}
""",
    "test.yaml",
    {},
)


def headers_message(headers: dict, end_of_stream=False) -> pb.ProcessingRequest:
    request = pb.ProcessingRequest()
    request.request_headers.end_of_stream = end_of_stream
    request.request_headers.headers.headers.extend(base_pb2.HeaderValue(key=key, raw_value=value.encode()) for key, value in headers.items())
    return request


def body_message(body: bytes) -> wire.RequestBody:
    """A body message as the gRPC server hands it to the streams: decoded by `wire` from Envoy's bytes."""
    request = pb.ProcessingRequest()
    request.request_body.body = body
    request.request_body.end_of_stream = True
    decoded = wire.decode_request(request.SerializeToString())
    assert isinstance(decoded, wire.RequestBody) and bytes(decoded.body) == body and decoded.end_of_stream
    return decoded


def message(response) -> pb.ProcessingResponse:
    """A reply as Envoy reads it (a body-replacing reply is already in wire form)."""
    return pb.ProcessingResponse.FromString(wire.encode_response(response))


def route(client: dict, body: bytes) -> pb.ProcessingResponse:
    stream = RouterStream(Live.of(CONFIG), None, "llm")
    first = stream.handle(headers_message(client))
    assert first.WhichOneof("response") == "request_headers"
    return message(stream.handle(body_message(body)))


def test_envoys_lua_patch_is_told_to_run_only_when_the_bodys_model_changes():
    client = {":method": "POST", ":path": "/v1/chat/completions"}
    patched = route(client, b'{"model": "openai/gpt-4"}').request_body.response.header_mutation.set_headers
    kept = route(client, b'{"model": "gpt-4"}').request_body.response.header_mutation.set_headers
    assert "x-arch-model-patch" in {item.header.key for item in patched}
    assert "x-arch-model-patch" not in {item.header.key for item in kept}, "the provider's name already: no Lua runs"


def test_router_stream_sets_the_route_header_and_carries_the_context():
    client = {":method": "POST", ":path": "/v1/chat/completions", "x-arch-llm-provider": "b", "x-arch-other": "1"}
    response = route(client, b'{"model": "openai/gpt-4"}')
    common = response.request_body.response
    assert common.clear_route_cache
    assert {item.header.key: item.header.raw_value for item in common.header_mutation.set_headers} == {
        "authorization": b"Bearer key-a",
        "x-arch-llm-provider": b"a",
        "x-arch-route": CONFIG.chain_clusters["a"].encode(),
        ":path": b"/v1/chat/completions",
        "x-arch-model-patch": b"1",  # the body's "openai/gpt-4" becomes a's "gpt-4": Envoy's Lua patch runs (and removes this)
    }, "attempt 1 is made right for a here: no upstream-level stream for it"
    assert not common.HasField("body_mutation"), "the body never comes back over gRPC"
    patch = {key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind")) for key, value in response.dynamic_metadata.fields["extproc"].struct_value.fields.items()}
    assert (patch["patch_start"], patch["patch_end"], patch["patch_value"]) == (10, 24, '"gpt-4"'), "Envoy sets the start provider's model"
    assert set(common.header_mutation.remove_headers) == {"x-arch-other", *CREDENTIAL_HEADERS} - {"authorization"}, "every other credential header (x-api-key, api-key, …) is dropped"
    assert "ctx" in response.dynamic_metadata.fields["extproc"].struct_value.fields


def test_router_stream_answers_bad_input_immediately():
    stream = RouterStream(Live.of(CONFIG), None, "llm")
    stream.handle(headers_message({":method": "POST", ":path": "/"}))
    response = message(stream.handle(body_message(b"nope")))
    assert response.immediate_response.status.code == 400
    assert [(item.header.key, item.header.raw_value) for item in response.immediate_response.headers.set_headers] == [("content-type", b"application/json")]


def test_upstream_stream_rewrites_the_attempt_for_the_hosts_provider():
    metadata = route({":method": "POST", ":path": "/v1/chat/completions"}, b'{"model": "openai/gpt-4"}').dynamic_metadata.fields["extproc"].struct_value
    request = headers_message({":path": "/v1/chat/completions", "authorization": "Bearer key-a", "x-arch-llm-provider": "a"})
    request.metadata_context.filter_metadata["extproc"].CopyFrom(metadata)
    request.attributes["envoy.filters.http.ext_proc"].fields["xds.upstream_host_metadata"].string_value = (
        f'filter_metadata {{ key: "extproc" value {{ fields {{ key: "cluster" value {{ string_value: "{CONFIG.providers["b"].cluster}" }} }} '
        'fields { key: "provider" value { string_value: "b" } } } } '
    )
    stream = UpstreamStream(Live.of(CONFIG))
    response = stream.handle(request)
    mutation = response.request_headers.response.header_mutation
    assert {item.header.key: item.header.raw_value for item in mutation.set_headers} == {
        "authorization": b"Bearer key-b",
        ":path": b"/p/v1/chat/completions",
    }
    assert "x-arch-llm-provider" in mutation.remove_headers, "the routing header never reaches a provider"
    assert not response.HasField("mode_override") and stream.done, "b serves gpt-4 like a: no body phase, nothing more to watch"
    patch = response.dynamic_metadata.fields["extproc.attempt"].struct_value.fields
    assert patch["patch_value"].string_value == "", "an explicit 'no patch': an earlier retry's must not apply to this one"


def test_upstream_stream_patches_the_body_for_another_model_name_without_receiving_it():
    config = parse_config(
        """
listeners: [{type: model, name: llm, port: 0}]
model_providers:
  - {name: a, model: openai/gpt-4, base_url: "http://127.0.0.1:1", retry_policy: {fallback_models: [openai/gpt-4o]}}
  - {name: o, model: openai/gpt-4o, base_url: "http://127.0.0.1:2"}
""",
        "test.yaml",
        {},
    )
    routed = RouterStream(Live.of(config), None, "llm")
    routed.handle(headers_message({":method": "POST", ":path": "/v1/chat/completions"}))
    metadata = message(routed.handle(body_message(b'{"model": "openai/gpt-4"}'))).dynamic_metadata.fields["extproc"].struct_value
    request = headers_message({":path": "/v1/chat/completions"})
    request.metadata_context.filter_metadata["extproc"].CopyFrom(metadata)
    request.attributes["envoy.filters.http.ext_proc"].fields["xds.upstream_host_metadata"].string_value = (
        f'filter_metadata {{ key: "extproc" value {{ fields {{ key: "cluster" value {{ string_value: "{config.providers["o"].cluster}" }} }} }} }}'
    )
    stream = UpstreamStream(Live.of(config))
    response = stream.handle(request)
    assert not response.HasField("mode_override") and stream.done, "the body stays in Envoy"
    patch = response.dynamic_metadata.fields["extproc.attempt"].struct_value.fields
    start, end, value = int(patch["patch_start"].number_value), int(patch["patch_end"].number_value), patch["patch_value"].string_value
    body = b'{"model": "gpt-4"}'  # what the router level's patch left in Envoy's buffer
    assert body[:start] + value.encode() + body[end:] == b'{"model": "gpt-4o"}'
    last = headers_message({":path": "/v1/chat/completions", "x-envoy-attempt-count": "2"})
    last.MergeFrom(request)
    retry = UpstreamStream(Live.of(config))
    retry.identify(last)
    assert not retry.handle(last).HasField("mode_override") and retry.done, "a retry's answer is none of its business (a failed one is the failed phase's)"


def failed_headers(status: str, host_metadata: str) -> pb.ProcessingRequest:
    request = pb.ProcessingRequest()
    request.response_headers.headers.headers.extend([base_pb2.HeaderValue(key=":status", raw_value=status.encode()), base_pb2.HeaderValue(key="retry-after", raw_value=b"7")])
    attributes = request.attributes["envoy.filters.http.ext_proc"].fields
    attributes["xds.upstream_host_metadata"].string_value = host_metadata
    return wire.decode_request(request.SerializeToString())


def test_a_failed_answer_names_its_provider_and_its_status():
    host = 'filter_metadata { key: "extproc" value { fields { key: "cluster" value { string_value: "provider.a.1" } } fields { key: "provider" value { string_value: "a" } } } }'
    assert failed_answer(failed_headers("429", host)) == FailedAnswer("a", 429, {":status": "429", "retry-after": "7"})
    assert failed_answer(failed_headers("503", "not metadata {")) is None, "no provider known: nothing to record"
    assert failed_answer(headers_message({":path": "/"})) is None, "only an answer's headers"


def test_an_unexpected_error_is_a_json_500_naming_the_request_and_never_its_text(monkeypatch, caplog):
    import asyncio
    import json

    import grpc

    from extproc.processor import router
    from extproc.runtime import Runtime
    from extproc.server.servicer import ExternalProcessor

    def explode(*args, **kwargs):
        raise RuntimeError("sk-secret-in-an-exception")

    monkeypatch.setattr(router, "on_body", explode)

    class Context:
        def __init__(self, messages):
            self.messages = list(messages)
            self.written = []

        def invocation_metadata(self):
            return (("x-extproc-phase", "router"), ("x-extproc-listener", "llm"))

        async def read(self):
            return self.messages.pop(0) if self.messages else grpc.aio.EOF

        async def write(self, response):
            self.written.append(response)

    servicer = ExternalProcessor(Runtime.create(CONFIG))
    for _ in range(2):
        context = Context([headers_message({":method": "POST", ":path": "/v1/chat/completions", "x-request-id": "req-7"}), body_message(b'{"model": "openai/gpt-4"}')])
        asyncio.run(servicer.Process(None, context))
        answer = context.written[-1].immediate_response
        assert answer.status.code == 500
        error = json.loads(answer.body)["error"]
        assert error["code"] == "gateway_error" and "req-7" in error["message"] and "sk-secret" not in answer.body.decode()
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1, "the traceback is logged once, not per request"
    assert all("req-7" in record.getMessage() for record in caplog.records if record.name == "extproc.server.servicer")


def test_wire_reads_a_body_message_as_a_view_and_everything_else_with_protobuf():
    big = pb.ProcessingRequest()
    big.request_body.body = b"x" * 300_000  # a multi-byte length
    big.request_body.end_of_stream = True
    big.metadata_context.filter_metadata["extproc"].fields["k"].string_value = "v"  # a later field does not hide the body
    decoded = wire.decode_request(big.SerializeToString())
    assert isinstance(decoded, wire.RequestBody) and len(decoded.body) == 300_000 and decoded.end_of_stream
    empty = pb.ProcessingRequest()
    empty.request_body.end_of_stream = True
    assert bytes(wire.decode_request(empty.SerializeToString()).body) == b""
    headers = headers_message({":path": "/"})
    assert wire.decode_request(headers.SerializeToString()) == headers
    assert wire.kind(headers) == "request_headers" and wire.kind(decoded) == "request_body"


def test_wire_replies_parse_as_the_protobuf_reply_they_stand_for():
    response = pb.ProcessingResponse()
    common = response.request_body.response
    common.clear_route_cache = True
    common.header_mutation.set_headers.add().header.key = "x-a"
    body = b"y" * 200_000
    expected = pb.ProcessingResponse()
    expected.CopyFrom(response)
    expected.request_body.response.body_mutation.body = body
    assert pb.ProcessingResponse.FromString(wire.with_body(response, "request_body", memoryview(body))) == expected
    assert wire.encode_response(response) == response.SerializeToString()


def test_router_stream_routes_from_the_headers_message_when_envoy_found_the_model():
    body = b'{"model": "openai/gpt-4"}'
    request = headers_message({":method": "POST", ":path": "/v1/chat/completions", "content-length": str(len(body))})
    found = request.metadata_context.filter_metadata["extproc.body"]
    found.fields["json"].string_value = "valid"
    found.fields["model"].string_value = "openai/gpt-4"
    found.fields["model_start"].number_value = 10
    found.fields["model_end"].number_value = 24
    stream = RouterStream(Live.of(CONFIG), None, "llm")

    response = message(stream.handle(request))

    assert stream.done, "nothing more is needed from this stream: the sidecar closes it"
    common = response.request_headers.response
    assert common.clear_route_cache and not response.HasField("mode_override")
    assert {item.header.key: item.header.raw_value for item in common.header_mutation.set_headers}["x-arch-llm-provider"] == b"a"
    fields = response.dynamic_metadata.fields["extproc"].struct_value.fields
    assert "patch_start" not in fields and "patch_end" not in fields, "the model is patched where Envoy found it (Envoy's Lua reads the place)"
    patched = body[:10] + fields["patch_value"].string_value.encode() + body[24:]
    assert patched == b'{"model": "gpt-4"}'


def test_router_stream_asks_for_the_body_when_envoy_found_no_model():
    stream = RouterStream(Live.of(CONFIG), None, "llm")

    response = message(stream.handle(headers_message({":method": "POST", ":path": "/v1/chat/completions", "content-length": "12"})))

    assert not stream.done
    assert response.mode_override.request_body_mode == ProcessingMode.BUFFERED
    assert response.mode_override.response_header_mode == ProcessingMode.SKIP, "the whole mode is replaced: nothing else is asked for"
    assert not response.request_headers.response.clear_route_cache


def answer_headers(status: str, end_of_stream: bool = False) -> pb.ProcessingRequest:
    request = pb.ProcessingRequest()
    request.response_headers.end_of_stream = end_of_stream
    request.response_headers.headers.headers.extend([base_pb2.HeaderValue(key=":status", raw_value=status.encode()), base_pb2.HeaderValue(key="content-type", raw_value=b"text/event-stream")])
    return wire.decode_request(request.SerializeToString())


def answer_chunk(data: bytes, end_of_stream: bool = False) -> pb.ProcessingRequest:
    request = pb.ProcessingRequest()
    request.response_body.body = data
    request.response_body.end_of_stream = end_of_stream
    return wire.decode_request(request.SerializeToString())


def test_a_hold_stream_answers_nothing_until_the_first_token_then_everything_in_order_unchanged():
    stream = HoldStream()
    opening = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}\n\n'

    assert stream.handle(answer_headers("200")) == [] and stream.handle(answer_chunk(opening)) == [] and not stream.done
    released = [message(response) for response in stream.handle(answer_chunk(b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'))]

    assert [response.WhichOneof("response") for response in released] == ["response_headers", "response_body", "response_body"]
    assert all(not response.response_headers.response.HasField("header_mutation") for response in released[:1])
    assert all(not response.response_body.response.HasField("body_mutation") for response in released[1:]), "the stream goes on as the provider sent it"
    assert stream.done


@pytest.mark.parametrize("headers", [answer_headers("429"), answer_headers("200", end_of_stream=True)])
def test_a_hold_stream_lets_an_error_or_an_empty_answer_go_at_once(headers):
    stream = HoldStream()
    assert [message(response).WhichOneof("response") for response in stream.handle(headers)] == ["response_headers"] and stream.done


@pytest.mark.parametrize("hedge_after_s", [None, 1.5], ids=["a chain that does not hedge", "a chain that hedges"])
def test_a_stream_opening_with_an_error_event_is_released_as_that_failed_answer_or_waits_for_the_hedge(hedge_after_s):
    stream = HoldStream(hedge_after_s=hedge_after_s)
    error = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    stream.handle(answer_headers("200"))
    assert stream.handle(answer_chunk(b'event: message_start\ndata: {"type": "message_start"}\n\n')) == []
    released = [message(response) for response in stream.handle(answer_chunk(b"event: error\ndata: " + error + b"\n\n"))]
    if hedge_after_s is not None:
        assert released == [] and stream.wait_s == 3.0 and not stream.done, "held for twice hedge_after: time for the hedge to win"
        assert stream.handle(answer_chunk(b"", end_of_stream=True)) == [], "what comes meanwhile is held too"
        released = [message(response) for response in stream.release()]  # the wait is over (the servicer's timer)

    headers = {item.header.key: item.header.raw_value for item in released[0].response_headers.response.header_mutation.set_headers}
    bodies = [response.response_body.response.body_mutation.body if response.response_body.response.HasField("body_mutation") else None for response in released[1:]]
    if hedge_after_s is None:
        assert headers == {":status": b"529", "content-type": b"application/json"}, "Envoy's router retries it as Anthropic's 529"
        assert bodies == [error, b""], "the held chunks become the error's JSON, the client's answer if no retry follows"
    else:
        assert headers == {} and bodies == [None, None, None], "as sent: no failed answer while a hedge may be in flight"
    assert stream.done


def test_a_stream_that_ends_without_a_token_is_released_at_its_end():
    stream = HoldStream()
    stream.handle(answer_headers("200"))
    assert len(stream.handle(answer_chunk(b": keep-alive\n\n", end_of_stream=True))) == 2 and stream.done
