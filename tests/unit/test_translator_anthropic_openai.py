"""Anthropic Messages (the client's) <-> OpenAI chat.completions (the provider's), as pure functions, on the shapes each API documents."""

import json
import types

import pytest

from extproc import translator
from extproc.translator import anthropic_openai as t

# A chat.completion as OpenAI documents it: text and a tool call, cached prompt tokens.
COMPLETION = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [{
        "index": 0,
        "message": {
            "role": "assistant", "content": "Checking.",
            "tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}],
        },
        "finish_reason": "tool_calls",
    }],
    "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163, "prompt_tokens_details": {"cached_tokens": 1000}},
}  # fmt: skip

# OpenAI's documented stream: role, text in pieces, the finish, the usage chunk (stream_options.include_usage), [DONE].
STREAM = b"".join(
    b"data: " + json.dumps(chunk).encode() + b"\n\n"
    for chunk in [
        {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}},
    ]
) + b"data: [DONE]\n\n"


def events(raw: bytes) -> list[dict]:
    """The `data:` of each Anthropic event, checked against its `event:` name."""
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            payload = json.loads(data.removeprefix("data: "))
            assert name == f"event: {payload['type']}"
            out.append(payload)
    return out


def test_a_messages_request_becomes_chat_completions():
    payload = {
        "model": "anthropic/claude", "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop_sequences": ["END"],
        "metadata": {"user_id": "u1"}, "thinking": {"type": "enabled", "budget_tokens": 1024}, "mystery": 1,
        "system": [{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True}]},
        ],
    }  # fmt: skip

    request = t.request(payload, "gpt-4o", "max_completion_tokens")

    assert request.body == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Rule one.\n\nRule two."},
            {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"},
        ],
        "max_completion_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": ["END"], "user": "u1",
    }  # fmt: skip
    assert request.dropped == ("other", "thinking", "top_k")
    assert not request.stream


def test_tools_and_every_tool_choice():
    tools = [{"name": "f", "description": "does f", "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}}}]
    base = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": tools}

    body = t.request({**base, "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True}}, "m").body

    assert body["tools"] == [{"type": "function", "function": {"name": "f", "parameters": tools[0]["input_schema"], "description": "does f"}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}} and body["parallel_tool_calls"] is False
    assert body["max_tokens"] == 5, "an OpenAI-compatible server reads max_tokens"
    for choice, expected in (("auto", "auto"), ("any", "required"), ("none", "none")):
        assert t.request({**base, "tool_choice": {"type": choice}}, "m").body["tool_choice"] == expected
    with pytest.raises(translator.TranslationError, match="server tools"):
        t.request({**base, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "m")


@pytest.mark.parametrize(
    ("change", "param"),
    [({"max_tokens": "5"}, "max_tokens"), ({"max_tokens": 0}, "max_tokens"), ({"temperature": 1.5}, "temperature"), ({"stop_sequences": "END"}, "stop_sequences"),
     ({"tool_choice": {"type": "sometimes"}, "tools": [{"name": "f"}]}, "tool_choice")],
)  # fmt: skip
def test_a_field_of_the_wrong_type_is_the_clients_error_naming_it(change, param):
    with pytest.raises(translator.InvalidField) as raised:
        t.request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **change}, "m")
    assert raised.value.param == param


@pytest.mark.parametrize("block", [{"type": "document", "source": {}}, {"type": "image", "source": {"type": "file", "file_id": "f"}}])
def test_a_block_chat_completions_cannot_carry_is_refused_not_sent_raw(block):
    with pytest.raises(translator.TranslationError):
        t.request({"model": "m", "messages": [{"role": "user", "content": [block]}]}, "m")


def test_a_mid_conversation_system_turn_stays_a_system_message_in_its_place():
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "Tools: Read."}, {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "now in French"},
    ]
    body = t.request({"model": "m", "system": "You are terse.", "messages": turns}, "m").body
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("system", "You are terse."), ("user", "hi"), ("system", "Tools: Read.\n\nBe brief."), ("assistant", "hello"), ("system", "now in French"),
    ]  # fmt: skip
    with pytest.raises(translator.TranslationError, match=r"messages\[0\]\.content\[0\] is not a text block"):
        t.request({"model": "m", "messages": [{"role": "system", "content": [{"type": "image", "source": {}}]}]}, "m")


def test_a_stream_asks_for_usage():
    request = t.request({"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]}, "m")
    assert request.stream and request.body["stream"] is True and request.body["stream_options"] == {"include_usage": True}


def test_a_chat_completion_becomes_a_message():
    assert t.response(COMPLETION) == {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "type": "message",
        "role": "assistant",
        "model": "gpt-4o-2024-08-06",
        "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"location": "Paris"}}],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 117, "output_tokens": 46, "cache_read_input_tokens": 1000},
    }


@pytest.mark.parametrize(("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal"), (None, "end_turn")])
def test_finish_reasons_become_stop_reasons(finish, stop):
    assert t.response({"choices": [{"message": {"content": "x"}, "finish_reason": finish}]})["stop_reason"] == stop


def test_an_openai_error_becomes_anthropics_error_for_the_same_status():
    body = json.dumps({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}).encode()
    assert t.error(429, body, "openai") == {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}}
    assert t.error(502, b"<html>", "openai") == {"type": "error", "error": {"type": "api_error", "message": "Provider 'openai' answered status 502."}}


def test_a_stream_becomes_anthropics_events_as_each_chunk_arrives():
    stream = t.StreamTranslator()
    first = events(stream.feed(STREAM[:200]))
    assert [event["type"] for event in first] == ["message_start"], "the first chunk is passed on at once"
    out = first + events(stream.feed(STREAM[200:], end=True))

    assert [event["type"] for event in out] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert out[0]["message"]["model"] == "gpt-4o" and out[0]["message"]["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert [event["delta"]["text"] for event in out if event["type"] == "content_block_delta"] == ["Hel", "lo"]
    assert out[-2] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"input_tokens": 9, "output_tokens": 2}}
    assert stream.malformed == 0


def test_tool_calls_stream_as_tool_use_blocks_after_the_text():
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "Let me look."}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    raw = b"".join(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n" for chunk in chunks) + b"data: [DONE]\r\n\r\n"
    stream = t.StreamTranslator()
    out = events(b"".join(stream.feed(raw[index : index + 7]) for index in range(0, len(raw), 7)) + stream.feed(b"", end=True))

    starts = [event for event in out if event["type"] == "content_block_start"]
    assert [start["content_block"] for start in starts] == [{"type": "text", "text": ""}, {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}]
    assert [(event["index"], event["delta"]) for event in out if event["type"] == "content_block_delta"] == [
        (0, {"type": "text_delta", "text": "Let me look."}),
        (1, {"type": "input_json_delta", "partial_json": '{"a": 1}'}),
    ], "the arguments whole, when the call's block closes"
    assert [event["index"] for event in out if event["type"] == "content_block_stop"] == [0, 1]
    assert out[-2]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize("arguments, expected", [("not json", {"value": "not json"}), ("[1, 2]", {"value": [1, 2]}), ('{"a": 1}', {"a": 1})])
def test_tool_arguments_read_the_same_in_a_json_answer_and_in_a_stream(arguments, expected):
    answer = t.response({"choices": [{"message": {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": arguments}}]}}]})
    chunks = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": arguments[:3]}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": arguments[3:]}}]}, "finish_reason": "tool_calls"}]},
    ]
    stream = t.StreamTranslator()
    out = events(stream.feed(b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n", end=True))
    streamed = "".join(event["delta"]["partial_json"] for event in out if event["type"] == "content_block_delta")
    assert answer["content"][0]["input"] == json.loads(streamed) == expected


def test_a_stream_without_any_choice_is_an_error_event_not_an_empty_success():
    stream = t.StreamTranslator()
    out = events(stream.feed(b'data: {"id": "x", "object": "chat.completion.chunk"}\n\ndata: [DONE]\n\n', end=True))
    assert out[-1]["type"] == "error" and "no choices" in out[-1]["error"]["message"]
    assert not any(event["type"] == "message_stop" for event in out)


def test_a_stream_cut_short_or_unreadable_ends_with_an_error_event_never_silence():
    stream = t.StreamTranslator()
    out = events(stream.feed(STREAM[:300] + b"data: [1,2,3]\n\n", end=True))
    errors = [event for event in out if event["type"] == "error"]
    assert [error["error"]["message"] for error in errors] == [
        "the provider sent an event the gateway could not read", "the provider's event stream ended before its [DONE] event",
    ]  # fmt: skip
    assert stream.malformed == 1


def test_an_error_chunk_mid_stream_ends_it_as_anthropics_error_event():
    stream = t.StreamTranslator()
    cut = STREAM.index(b"\n\n", 300) + 2  # after an event
    raw = STREAM[:cut] + b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n' + STREAM[cut:]
    out = events(stream.feed(raw, end=True))
    assert out[-1] == {"type": "error", "error": {"type": "api_error", "message": "overloaded"}}
    assert "message_stop" not in [event["type"] for event in out], "nothing after the error"


def _provider(kind: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(kind=kind, model_name="m", default_max_tokens=1024)


@pytest.mark.parametrize(
    ("path", "kind", "pair"),
    [("/v1/chat/completions", "anthropic", "openai_chat->anthropic_messages"), ("/v1/messages?beta=true", "openai", "anthropic_messages->openai_chat"),
     ("/v1/messages", "groq", "anthropic_messages->openai_chat"), ("/v1/messages", "anthropic", None), ("/v1/chat/completions", "openai", None),
     ("/v1/messages/count_tokens", "openai", None), ("/v1/embeddings", "anthropic", None)],
)  # fmt: skip
def test_the_registry_picks_a_pair_by_client_api_and_provider_api(path, kind, pair):
    found = translator.for_attempt(path, _provider(kind))
    assert (found.label if found else None) == pair


def test_openais_own_api_gets_max_completion_tokens_and_compatible_servers_max_tokens():
    payload = {"model": "m", "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}]}
    assert translator.ANTHROPIC_TO_OPENAI.translate(payload, _provider("openai"), {}).body["max_completion_tokens"] == 7
    assert translator.ANTHROPIC_TO_OPENAI.translate(payload, _provider("groq"), {}).body["max_tokens"] == 7


def test_a_block_whose_type_is_not_a_string_is_the_clients_error_not_a_crash():
    """Found by fuzzing the translator with random JSON: a list as a block's type reached a set look-up."""
    with pytest.raises(translator.TranslationError, match="each with a type"):
        t.request({"model": "m", "messages": [{"role": "assistant", "content": [{"type": ["tool", "text"]}]}]}, "m")


#: Answers a client's API cannot carry, from an OpenAI provider (to an Anthropic client) and from an Anthropic one (to an OpenAI client).
UNREADABLE = {
    "openai: not JSON": ("openai", b"<html>bad gateway</html>"),
    "openai: a top-level array": ("openai", b"[1, 2]"),
    "openai: a top-level string": ("openai", b'"x"'),
    "openai: choices a string": ("openai", b'{"choices": "x"}'),
    "openai: choices an object": ("openai", b'{"choices": {"0": {}}}'),
    "openai: no choices": ("openai", b'{"id": "x"}'),
    "openai: choices null": ("openai", b'{"choices": null}'),
    "openai: choices empty": ("openai", b'{"choices": []}'),
    "openai: message null": ("openai", b'{"choices": [{"message": null}]}'),
    "anthropic: not JSON": ("anthropic", b"oops"),
    "anthropic: no content": ("anthropic", b'{"type": "message"}'),
    "anthropic: content null": ("anthropic", b'{"type": "message", "content": null}'),
    "anthropic: only unknown blocks": ("anthropic", b'{"type": "message", "content": [{"type": "mystery"}]}'),
}


def answer_translation(provider_api: str):
    from extproc.config import parse_config
    from extproc.server.upstream_stream import _AnswerTranslation

    model = "openai/gpt-4o" if provider_api == "openai" else "anthropic/claude-sonnet-4"
    provider = next(iter(parse_config(f"listeners: [{{type: model, port: 0}}]\nmodel_providers: [{{model: {model}}}]", "t.yaml", {}).providers.values()))
    pair, path = (translator.ANTHROPIC_TO_OPENAI, "/v1/messages") if provider_api == "openai" else (translator.OPENAI_TO_ANTHROPIC, "/v1/chat/completions")
    return _AnswerTranslation(pair.answer, provider, False, path, 1000)


@pytest.mark.parametrize("provider_api, body", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_an_answer_the_clients_api_cannot_carry_is_a_502_in_the_clients_shape_never_a_200(provider_api, body):
    answer = answer_translation(provider_api)
    answer.on_headers(200, {"content-type": "application/json"}, False)

    reply = answer.on_body(body, True).immediate_response

    assert reply.status.code == 502 and answer.refused == "bad_provider_answer" and answer.finished
    error = json.loads(reply.body)
    if provider_api == "openai":  # an Anthropic client
        assert error["type"] == "error" and error["error"]["type"] == "api_error" and "could not translate" in error["error"]["message"]
    else:
        assert error["error"]["code"] == "bad_provider_answer" and error["error"]["message"].startswith("Provider '")


def test_an_empty_success_and_one_past_the_size_limit_are_502s_too():
    empty = answer_translation("openai")
    assert empty.on_headers(200, {"content-type": "application/json"}, True).immediate_response.status.code == 502
    assert b"empty" in empty.on_headers(200, {}, True).immediate_response.body
    large = answer_translation("anthropic")
    reply = large.on_headers(200, {"content-type": "application/json", "content-length": "1001"}, False).immediate_response
    assert reply.status.code == 502 and json.loads(reply.body)["error"]["code"] == "response_too_large" and large.refused == "response_too_large"


def body_of(reply: bytes) -> dict:
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    return json.loads(pb.ProcessingResponse.FromString(reply).response_body.response.body_mutation.body)


def test_a_readable_answer_and_an_error_answer_are_translated_as_before():
    answer = answer_translation("openai")
    answer.on_headers(200, {"content-type": "application/json"}, False)
    body = body_of(answer.on_body(b'{"id": "c", "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}', True))
    assert body["content"] == [{"type": "text", "text": "hi"}] and answer.refused is None
    error = answer_translation("openai")
    error.on_headers(429, {"content-type": "application/json"}, False)
    assert body_of(error.on_body(b'{"error": {"message": "slow down"}}', True))["error"]["type"] == "rate_limit_error"

def test_an_openai_refusal_reaches_an_anthropic_client_as_its_words_and_stop_reason_refusal():
    answer = t.response({"choices": [{"message": {"role": "assistant", "content": None, "refusal": "I can't help with that."}, "finish_reason": "stop"}]})
    assert answer["content"] == [{"type": "text", "text": "I can't help with that."}] and answer["stop_reason"] == "refusal"
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "refusal": ""}}]},
        {"choices": [{"index": 0, "delta": {"refusal": "I can't "}}]},
        {"choices": [{"index": 0, "delta": {"refusal": "help with that."}, "finish_reason": "stop"}]},
    ]
    stream = t.StreamTranslator()
    out = events(stream.feed(b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n", end=True))
    assert "".join(event["delta"]["text"] for event in out if event["type"] == "content_block_delta") == "I can't help with that."
    assert next(event for event in out if event["type"] == "message_delta")["delta"]["stop_reason"] == "refusal"
