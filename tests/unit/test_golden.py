"""The translators against answers real providers gave (tests/golden, each file's source in its SOURCES.md), read back by the official SDKs.

Our mocks answer as we understood each API; these were recorded from OpenAI's, Anthropic's and Bedrock's
own servers, with the fields we never wrote (`obfuscation`, `annotations`, `caller`, `stop_details`,
Bedrock's `p` padding and invocation metrics). Each translated answer must parse with the client's SDK
(its pydantic types and its stream accumulator), and say what the provider said.
"""

import base64
import json
from pathlib import Path

import anthropic.types
import openai
import openai.types.chat
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from botocore.eventstream import EventStreamBuffer
from openai.lib.streaming.chat import ChatCompletionStreamState

from extproc.mock.bedrock import frame
from extproc.translator import anthropic_bedrock, anthropic_openai, openai_anthropic, sse

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ANTHROPIC_EVENT = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def events_of(stream: bytes) -> list[dict]:
    """The JSON data of each server-sent event (an SSE parser's view: `[DONE]` and comments left out)."""
    return [json.loads(event.data) for event in sse.EventReader().feed(stream, end=True) if event.data != b"[DONE]"]


def in_pieces(translator, stream: bytes, size: int = 7) -> bytes:
    """A stream fed as the network delivers it: in small pieces, cut anywhere (inside a UTF-8 character too)."""
    return b"".join(translator.feed(stream[index : index + size]) for index in range(0, len(stream), size)) + translator.feed(b"", end=True)


def anthropic_message(stream: bytes) -> anthropic.types.Message:
    """The Anthropic SDK's own accumulation of an event stream (what `messages.stream(...).get_final_message()` does)."""
    snapshot = None
    json_buffers: dict = {}
    for event in events_of(stream):
        snapshot = accumulate_event(event=ANTHROPIC_EVENT.validate_python(event), current_snapshot=snapshot, json_bufs=json_buffers)
    assert snapshot is not None, "no event"
    return snapshot


def openai_completion(stream: bytes) -> openai.types.chat.ChatCompletion:
    """The OpenAI SDK's own accumulation of chunks (what `chat.completions.stream(...).get_final_completion()` does)."""
    state = ChatCompletionStreamState()
    for chunk in events_of(stream):
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion()


@pytest.mark.parametrize("name", ["chat-basic", "chat-reasoning"])
def test_openais_recorded_answers_reach_anthropic_clients_whole(name):
    recorded = json.loads(golden(f"openai/{name}.json"))

    message = anthropic.types.Message.model_validate(anthropic_openai.response(recorded))

    assert [block.type for block in message.content] == ["text"] and message.content[0].text == recorded["choices"][0]["message"]["content"]
    assert message.stop_reason == "end_turn" and message.id == recorded["id"]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (recorded["usage"]["prompt_tokens"], recorded["usage"]["completion_tokens"])


@pytest.mark.parametrize("name", ["chat-tools", "chat-parallel-tools"])
def test_openais_recorded_tool_calls_become_tool_use_blocks(name):
    recorded = json.loads(golden(f"openai/{name}.json"))

    message = anthropic.types.Message.model_validate(anthropic_openai.response(recorded))

    calls = recorded["choices"][0]["message"]["tool_calls"]
    assert [(block.type, block.id, block.name, block.input) for block in message.content] == [
        ("tool_use", call["id"], call["function"]["name"], json.loads(call["function"]["arguments"])) for call in calls
    ]
    assert message.stop_reason == "tool_use"


def test_openais_recorded_stream_reaches_anthropic_clients_event_by_event():
    recorded = golden("openai/chat-streaming.sse")
    said = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in events_of(recorded) if chunk["choices"])

    message = anthropic_message(in_pieces(anthropic_openai.StreamTranslator(include_usage=True), recorded))

    assert [block.type for block in message.content] == ["text"] and message.content[0].text == said and len(said) > 100
    assert message.stop_reason == "end_turn"


def test_openais_recorded_stream_that_spent_every_token_reasoning_is_an_empty_max_tokens_message():
    """Recorded: `finish_reason: length` with no content at all (100 reasoning tokens), then the usage chunk."""
    translated = in_pieces(anthropic_openai.StreamTranslator(include_usage=True), golden("openai/chat-streaming-detailed-usage.sse"))

    assert not [event for event in events_of(translated) if event["type"] == "error"], translated.decode()
    message = anthropic_message(translated)
    assert message.content == [] and message.stop_reason == "max_tokens" and message.usage.output_tokens == 100


def test_anthropics_recorded_answer_reaches_openai_clients_whole():
    recorded = json.loads(golden("anthropic/message.json"))

    completion = openai.types.chat.ChatCompletion.model_validate(openai_anthropic.response(recorded))

    assert completion.choices[0].message.content == recorded["content"][0]["text"] and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == recorded["usage"]["input_tokens"]
    assert completion.usage.completion_tokens == recorded["usage"]["output_tokens"]


def test_anthropics_recorded_streams_reach_openai_clients_chunk_by_chunk():
    basic = openai_completion(in_pieces(openai_anthropic.StreamTranslator(include_usage=True), golden("anthropic/basic.sse")))
    assert basic.choices[0].message.content == "Hello there!" and basic.choices[0].finish_reason == "stop"

    tool = openai_completion(in_pieces(openai_anthropic.StreamTranslator(include_usage=True), golden("anthropic/tool-use.sse")))
    [call] = tool.choices[0].message.tool_calls or []
    assert call.id == "toolu_01NRLabsLyVHZPKxbKvkfSMn" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}
    assert tool.choices[0].message.content == "I'll check the current weather in Paris for you." and tool.choices[0].finish_reason == "tool_calls"


def test_an_anthropic_refusal_reaches_openai_clients_as_a_content_filter_finish():
    """The OpenAI SDK's stream helper raises its own exception for a content-filter finish: the refusal is not a clean answer."""
    with pytest.raises(openai.ContentFilterFinishReasonError):
        openai_completion(in_pieces(openai_anthropic.StreamTranslator(include_usage=True), golden("anthropic/refusal.sse")))


def test_bedrocks_recorded_invoke_stream_frames_reach_anthropic_clients():
    payloads = [line.encode() for line in golden("bedrock/invoke-stream.jsonl").decode().splitlines()]
    frames = b"".join(frame("chunk", json.loads(payload)) for payload in payloads)
    parser = EventStreamBuffer()  # AWS's own parser reads our framing of the recorded payloads back
    parser.add_data(frames)
    assert [message.payload for message in parser] == [json.dumps(json.loads(payload)).encode() for payload in payloads]
    sent = [json.loads(base64.b64decode(json.loads(payload)["bytes"])) for payload in payloads]

    translated = in_pieces(anthropic_bedrock.StreamTranslator(include_usage=True), frames, size=13)

    assert [event["type"] for event in events_of(translated)] == [event["type"] for event in sent]
    message = anthropic_message(translated)
    assert message.content[0].type == "text" and message.content[0].text == "Hi! 👋 How are you doing today?"
    assert message.stop_reason == "end_turn" and message.id == "msg_bdrk_012GBPzpcoMCLP1b2pcJsSHk"
