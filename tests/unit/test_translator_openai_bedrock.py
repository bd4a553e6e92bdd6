"""OpenAI chat.completions <-> Bedrock Converse, as pure functions, on the shapes each API documents."""

import json

from extproc.mock.bedrock import frame
from extproc.translator import openai_bedrock as t


def test_a_chat_request_becomes_a_converse_request():
    payload = {
        "model": "bedrock/x", "user": "u1", "seed": 3, "max_tokens": 10, "top_p": 0.5,
        "messages": [
            {"role": "system", "content": "Rules."},
            {"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        ],
    }  # fmt: skip

    request = t.request(payload, "x", 4096)

    assert request.body == {
        "messages": [{"role": "user", "content": [{"text": "see"}, {"image": {"format": "png", "source": {"bytes": "AAAA"}}}]}],
        "system": [{"text": "Rules."}],
        "inferenceConfig": {"maxTokens": 10, "topP": 0.5},
    }
    assert request.dropped == ("seed", "user")


def test_a_converse_answer_becomes_a_chat_completion():
    answer = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Checking."}, {"toolUse": {"toolUseId": "t1", "name": "f", "input": {"a": 1}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 7, "outputTokens": 3, "totalTokens": 10},
    }
    result = t.response(answer, "anthropic.claude-v1:0", created=5)
    assert result["model"] == "anthropic.claude-v1:0" and result["created"] == 5
    assert result["choices"] == [{
        "index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
    }]  # fmt: skip
    assert result["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_event_stream_frames_become_chunks_even_cut_mid_frame():
    frames = b"".join([
        frame("messageStart", {"role": "assistant"}),
        frame("contentBlockDelta", {"delta": {"text": "Hel"}, "contentBlockIndex": 0}),
        frame("contentBlockDelta", {"delta": {"text": "lo"}, "contentBlockIndex": 0}),
        frame("contentBlockStop", {"contentBlockIndex": 0}),
        frame("messageStop", {"stopReason": "max_tokens"}),
        frame("metadata", {"usage": {"inputTokens": 2, "outputTokens": 2, "totalTokens": 4}}),
    ])  # fmt: skip
    stream = t.StreamTranslator(include_usage=True, model="m")
    out = b"".join(stream.feed(frames[index : index + 9]) for index in range(0, len(frames), 9)) + stream.feed(b"", end=True)

    events = [line[6:] for line in out.decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert [chunk["choices"][0]["delta"] for chunk in chunks[:3]] == [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}]
    assert chunks[3]["choices"][0]["finish_reason"] == "length"
    assert chunks[4]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4} and chunks[4]["model"] == "m"
    assert stream.malformed == 0


def test_a_corrupt_frame_or_a_cut_stream_is_an_error_event_never_silence():
    good = frame("messageStart", {"role": "assistant"})
    corrupt = bytearray(frame("contentBlockDelta", {"delta": {"text": "x"}, "contentBlockIndex": 0}))
    corrupt[-1] ^= 0xFF  # the message CRC no longer matches
    stream = t.StreamTranslator()
    out = (stream.feed(good + bytes(corrupt)) + stream.feed(b"", end=True)).decode()

    codes = [json.loads(line[6:])["error"]["code"] for line in out.split("\n\n") if line.startswith("data: {\"error\"")]
    assert codes == ["malformed_event", "incomplete_stream"]
    assert "[DONE]" not in out and stream.malformed == 1, "a stream that ends in an error has no clean end"


def test_an_exception_frame_mid_stream_ends_it_as_an_openai_error_event():
    stream = t.StreamTranslator()
    frames = frame("messageStart", {"role": "assistant"}) + frame("throttlingException", {"message": "Too many tokens"}, exception=True)
    out = stream.feed(frames) + stream.feed(frame("contentBlockDelta", {"delta": {"text": "late"}, "contentBlockIndex": 0}), end=True)

    events = [line[6:] for line in out.decode().split("\n\n") if line]
    assert "[DONE]" not in events and len(events) == 2, "the error ends it: no clean end"
    assert json.loads(events[1]) == {"error": {"message": "Too many tokens", "type": "rate_limit_error", "code": "throttlingException"}}
    assert "late" not in out.decode(), "nothing after the exception"
