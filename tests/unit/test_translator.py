"""OpenAI chat.completions <-> Anthropic Messages, as pure functions, on the payload shapes each API documents."""

import json
import types

import pytest

from extproc.translator import openai_anthropic as t

# A Messages response as Anthropic documents it (text, then a tool call; cache counters present).
MESSAGE = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [
        {"type": "text", "text": "I'll check the weather."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100, "output_tokens": 89},
}

# Anthropic's documented event stream for a text answer, then a tool call with its input in pieces.
STREAM = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", let's check."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"San Francisco, CA\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""


def test_a_chat_request_becomes_a_messages_request():
    payload = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": '{"at": "image"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
            {"role": "user", "content": "And this? https://example.com/cat.jpg"},
        ],
        "max_completion_tokens": 300,
        "temperature": 1.7,
        "top_p": 0.9,
        "stop": "END",
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u-1",
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object", "properties": {"at": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
        "parallel_tool_calls": False,
        "n": 1,
        "logit_bias": {"1": 2},
        "x_vendor_extension": True,
    }

    translated = t.request(payload, "claude-sonnet-4", 4096)

    assert translated.body == {
        "model": "claude-sonnet-4",
        "system": "Be brief.\n\nUse metric units.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "call_1", "name": "look", "input": {"at": "image"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "a cat"}, {"type": "text", "text": "And this? https://example.com/cat.jpg"}]},
        ],
        "max_tokens": 300,
        "temperature": 1.0,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "u-1"},
        "tools": [{"name": "look", "input_schema": {"type": "object", "properties": {"at": {"type": "string"}}}}],
        "tool_choice": {"type": "tool", "name": "look", "disable_parallel_tool_use": True},
    }
    assert translated.dropped == ("logit_bias", "n", "other"), "an unknown field is dropped too, counted as other"
    assert (translated.stream, translated.include_usage) == (True, True)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"}), (None, None)],
)
def test_tool_choice(choice, expected):
    payload = {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}]}
    if choice is not None:
        payload["tool_choice"] = choice
    assert t.request(payload, "m", 10).body.get("tool_choice") == expected


def test_tool_choice_none_sends_no_tools_and_max_tokens_defaults():
    body = t.request({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}, "m", 1234).body
    assert "tools" not in body and "tool_choice" not in body
    assert body["max_tokens"] == 1234


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({"messages": "hi"}, "'messages' list"),
        ({"messages": [{"role": "function", "content": "x"}]}, "role 'function'"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "'input_audio' content part"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{nope"}}]}]}, "not JSON"),
    ],
)
def test_what_has_no_translation_is_refused_with_why(payload, says):
    with pytest.raises(t.TranslationError, match=says):
        t.request(payload, "m", 10)


def test_a_messages_response_becomes_a_chat_completion():
    completion = t.response(MESSAGE, created=1700000000)
    assert completion == {
        "id": "msg_01Aq9w938a90dw8q",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-sonnet-4-20250514",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "I'll check the weather.",
                    "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "San Francisco, CA"}'}}],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 572, "completion_tokens": 89, "total_tokens": 661, "prompt_tokens_details": {"cached_tokens": 100}},
    }


@pytest.mark.parametrize(("stop_reason", "finish_reason"), [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")])
def test_stop_reasons(stop_reason, finish_reason):
    assert t.response({**MESSAGE, "stop_reason": stop_reason})["choices"][0]["finish_reason"] == finish_reason


def test_errors_keep_their_kind_and_message():
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).encode()
    assert t.error(529, body, "claude") == {"error": {"message": "Overloaded", "type": "server_error", "code": "overloaded_error"}}
    assert t.error(502, b"<html>bad gateway</html>", "claude") == {"error": {"message": "Provider 'claude' answered status 502.", "type": "server_error", "code": "upstream_error"}}


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """`created` is stamped from the clock: streams translated a second apart must still compare equal."""
    monkeypatch.setattr(t, "time", types.SimpleNamespace(time=lambda: 1_700_000_000.0))


def _events(data: bytes) -> list:
    return [line[6:] for line in data.decode().split("\n") if line.startswith("data: ")]


def test_a_stream_is_translated_event_by_event_whatever_the_chunking():
    """Split anywhere (mid-event, mid-line, CRLF), the events come out the same, each as soon as it is complete."""
    whole = t.StreamTranslator(include_usage=True).feed(STREAM, end=True)
    for size in (1, 7, 100):
        translator = t.StreamTranslator(include_usage=True)
        pieces = [translator.feed(STREAM[i : i + size]) for i in range(0, len(STREAM), size)] + [translator.feed(b"", end=True)]
        assert _events(b"".join(pieces)) == _events(whole), size
    assert _events(t.StreamTranslator(include_usage=True).feed(STREAM.replace(b"\n", b"\r\n"), end=True)) == _events(whole)

    events = _events(whole)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(delta.get("content", "") for delta in deltas) == "Okay, let's check."
    calls = [call for delta in deltas for call in delta.get("tool_calls", ())]
    assert calls[0] == {"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    assert json.loads("".join(call["function"]["arguments"] for call in calls)) == {"location": "San Francisco, CA"}
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]][-1] == "tool_calls"
    assert chunks[-1] == {"id": "msg_014p7gG3wDgGV9EUtLvnow3U", "object": "chat.completion.chunk", "created": chunks[0]["created"], "model": "claude-sonnet-4-20250514", "choices": [], "usage": {"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561}}


@pytest.mark.parametrize("line_end", [b"\r\n", b"\r", b"\n"], ids=["crlf", "cr", "lf"])
def test_any_line_end_split_at_every_byte_gives_the_same_events(line_end):
    """A read may end between CR and LF: that CR waits for the next chunk instead of ending an empty line."""
    whole = _events(t.StreamTranslator(include_usage=True).feed(STREAM, end=True))
    framed = STREAM.replace(b"\n", line_end)
    translator = t.StreamTranslator(include_usage=True)
    pieces = [translator.feed(framed[i : i + 1]) for i in range(len(framed))] + [translator.feed(b"", end=True)]
    assert _events(b"".join(pieces)) == whole
    translator = t.StreamTranslator(include_usage=True)
    at_each_cr = [piece + b"\r" for piece in framed.split(b"\r")[:-1]] + [framed.split(b"\r")[-1]]
    assert _events(b"".join(translator.feed(piece) for piece in at_each_cr) + translator.feed(b"", end=True)) == whole
    assert translator.malformed == 0


@pytest.mark.parametrize("data", [b"[1,2,3]", b"not json", b'{"type": "message_start", "message": "a string"}', b'{"type": "content_block_delta", "delta": [1]}'])
def test_an_unreadable_event_becomes_an_error_event_and_is_counted(data):
    events = STREAM.split(b"\n\n")
    stream = b"\n\n".join([*events[:3], b"event: odd\ndata: " + data, *events[3:]])
    translator = t.StreamTranslator()
    out = _events(translator.feed(stream, end=True))
    errors = [json.loads(event)["error"] for event in out[:-1] if "error" in json.loads(event)]
    assert [error["code"] for error in errors] == ["malformed_event"]
    assert translator.malformed == 1
    assert out[-1] == "[DONE]" and out.count("[DONE]") == 1
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in out[:-1] if json.loads(e).get("choices")) == "Okay, let's check."


def test_a_stream_cut_before_message_stop_says_so():
    cut = STREAM.split(b"event: message_delta")[0]
    out = _events(t.StreamTranslator().feed(cut, end=True))
    assert json.loads(out[-1])["error"]["code"] == "incomplete_stream"
    assert "[DONE]" not in out, "a stream that ends in an error has no clean end"


def test_a_partial_event_is_held_back_until_complete():
    translator = t.StreamTranslator()
    start = STREAM.split(b"\n\n")[0] + b"\n\n"
    assert translator.feed(start[:40]) == b""
    assert _events(translator.feed(start[40:]))  # the role chunk, as soon as its event is whole


def test_without_include_usage_no_usage_chunk_and_a_stream_error_becomes_an_openai_error():
    events = _events(t.StreamTranslator().feed(STREAM, end=True))
    assert all("usage" not in json.loads(event) for event in events[:-1])
    error = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    events = _events(t.StreamTranslator().feed(STREAM.split(b"event: content_block_stop")[0] + error, end=True))
    assert json.loads(events[-1]) == {"error": {"message": "Overloaded", "type": "server_error", "code": "overloaded_error"}}
    assert "[DONE]" not in events, "a stream that ends in an error has no clean end"


GOOD = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


@pytest.mark.parametrize(
    ("headers", "payload", "status", "says"),
    [
        ({**AUTH, "authorization": "Bearer k"}, GOOD, 401, "x-api-key"),
        ({"anthropic-version": "2023-06-01"}, GOOD, 401, "x-api-key"),
        ({"x-api-key": "k"}, GOOD, 400, "anthropic-version"),
        (AUTH, {k: v for k, v in GOOD.items() if k != "max_tokens"}, 400, "max_tokens"),
        (AUTH, {**GOOD, "messages": [{"role": "system", "content": "x"}]}, 400, "top-level `system`"),
        (AUTH, {**GOOD, "seed": 1}, 400, "seed: Extra inputs"),
    ],
)
def test_the_anthropic_mock_refuses_what_anthropic_refuses(headers, payload, status, says):
    """The end-to-end tests lean on this mock: it must fail a request Anthropic would fail."""
    from extproc.mock import anthropic as mock_anthropic

    assert mock_anthropic.refusal("/v1/messages", AUTH, json.dumps(GOOD).encode()) is None
    refused = mock_anthropic.refusal("/v1/messages", headers, json.dumps(payload).encode())
    assert refused is not None and refused[0] == status and says in refused[1]
    assert mock_anthropic.refusal("/v1/chat/completions", AUTH, json.dumps(GOOD).encode())[0] == 404


def test_an_anthropic_stream_without_any_content_is_an_error_for_an_openai_client_not_an_empty_success():
    empty = (
        b'event: message_start\ndata: {"type": "message_start", "message": {"id": "m", "model": "claude", "usage": {}}}\n\n'
        b'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}}\n\n'
        b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    )
    events = _events(t.StreamTranslator().feed(empty, end=True))
    assert "[DONE]" not in events and json.loads(events[-1])["error"]["code"] == "bad_provider_answer"
