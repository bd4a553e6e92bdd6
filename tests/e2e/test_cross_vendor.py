"""OpenAI-format clients served by Anthropic providers, through real Envoy and the real sidecar.

The Anthropic mock refuses what Anthropic refuses (Bearer auth, no
anthropic-version, no max_tokens, a system role in messages, unknown fields),
so a 200 here means the provider got a real Messages request.
"""

import base64
import json

import pytest

from .harness import chat, gateway_config, http_stream, openai_and_claude, provider, wait_for

GPT4O = "openai/gpt-4o"
CLAUDE = "anthropic/claude-sonnet-4"
ASK = {
    "model": GPT4O,
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}],
    "temperature": 0.5,
    "seed": 7,
    "user": "u-42",
}


def cross_vendor(mocks, gateway, first_fails: bool = True, claude_first: bool = False, **claude_behaviour):
    """gpt-4o falls back to Claude (or the reverse); the first of the chain answers 429 when `first_fails`."""
    openai = {"status": 429, "retry_after": "1"} if first_fails and not claude_first else {}
    claude = {**({"status": 429} if first_fails and claude_first else {}), **claude_behaviour}
    return openai_and_claude(mocks, gateway, claude_first, openai, claude)


#: Claude answering as a retry (after OpenAI's 429: attempt 2) or first (attempt 1, which the router level marks for translation).
ORDERS = ["after_openai_429", "claude_first"]


def claude_answers(mocks, gateway, order: str, **claude_behaviour):
    """(claude mock, gateway, the model to ask for, the attempt Claude answers) for one chain order."""
    if order == "claude_first":
        _openai, claude, gw = cross_vendor(mocks, gateway, first_fails=False, claude_first=True, **claude_behaviour)
        return claude, gw, CLAUDE, "1"
    _openai, claude, gw = cross_vendor(mocks, gateway, **claude_behaviour)
    return claude, gw, GPT4O, "2"


def test_an_openai_429_fails_over_to_claude_with_a_translated_request_and_answer(mocks, gateway):
    openai, claude, gw = cross_vendor(mocks, gateway)

    answer = chat(gw.port, ASK, headers={"authorization": "Bearer client-key", "accept-encoding": "gzip"})

    assert answer.status == 200, answer.body
    assert answer.headers["x-arch-llm-provider"] == "claude"
    body = answer.json()
    assert body["object"] == "chat.completion" and body["model"] == "claude-sonnet-4"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "[claude] you said: hi there"}, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(answer.body)
    # What each provider received, in order: OpenAI's request as sent, then a Messages request with only Claude's key.
    [first], [second] = openai.received, claude.received
    assert first.path == "/v1/chat/completions" and first.header("authorization") == "Bearer sk-openai-0001"
    assert second.path == "/v1/messages"
    assert second.header("x-api-key") == "sk-ant-0002" and second.header("authorization") is None
    assert second.header("anthropic-version") == "2023-06-01"
    assert (first.header("accept-encoding"), second.header("accept-encoding")) == ("gzip", "identity"), "the sidecar must read Claude's answer"
    assert second.header("x-envoy-attempt-count") == "2"
    assert second.json() == {
        "model": "claude-sonnet-4",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
        "max_tokens": 4096,
        "temperature": 0.5,
        "metadata": {"user_id": "u-42"},
    }, "seed has no Messages equivalent: dropped, never sent raw"
    assert gw.metric("extproc_translation_dropped_fields_total", provider="claude", field="seed") == 1
    # Envoy reads the translated answer's usage: tokens are counted for Claude like for any provider.
    wait_for(lambda: gw.metric("extproc_requests_total", model=GPT4O) == 1)
    assert gw.metric("extproc_tokens_total", provider="claude", model=CLAUDE, type="input") == 4
    assert gw.metric("extproc_tokens_total", provider="claude", model=CLAUDE, type="output") == 5
    assert gw.metric("extproc_translated_attempts_total", provider="claude", api="openai_chat->anthropic_messages") == 1


def test_claude_first_is_translated_on_attempt_one_and_falls_back_to_openai_untranslated(mocks, gateway):
    openai, claude, gw = cross_vendor(mocks, gateway, claude_first=True, retry_after="1")

    answer = chat(gw.port, {**ASK, "model": CLAUDE, "max_tokens": 50}, headers={"accept-encoding": "gzip"})

    assert answer.status == 200, answer.body
    assert answer.headers["x-arch-llm-provider"] == "openai"
    assert answer.json()["choices"][0]["message"]["content"] == "[openai] you said: hi there"
    [first], [second] = claude.received, openai.received
    assert first.path == "/v1/messages" and first.header("x-envoy-attempt-count") == "1"
    assert first.json()["max_tokens"] == 50 and first.header("x-api-key") == "sk-ant-0002"
    # The retry to OpenAI carries the client's own body and headers, none of Claude's.
    assert second.path == "/v1/chat/completions"
    assert second.header("authorization") == "Bearer sk-openai-0001"
    assert second.header("x-api-key") is None and second.header("anthropic-version") is None
    assert second.header("accept-encoding") == "gzip", "the client's own, restored after Claude's attempt"
    assert second.header("x-arch-translate") is None
    assert second.json()["messages"] == ASK["messages"] and second.json()["model"] == "gpt-4o"


def test_claude_alone_answers_an_openai_client_on_attempt_one(mocks, gateway):
    openai, claude, gw = cross_vendor(mocks, gateway, first_fails=False, claude_first=True)

    answer = chat(gw.port, {**ASK, "model": CLAUDE})

    assert answer.status == 200, answer.body
    assert answer.json()["choices"][0]["message"]["content"] == "[claude] you said: hi there"
    assert not openai.received
    assert claude.received[0].header("x-arch-translate") is None, "the internal marker never reaches a provider"


@pytest.mark.parametrize("order", ORDERS)
def test_a_streamed_answer_is_translated_chunk_by_chunk_and_ends_with_done(mocks, gateway, order):
    claude, gw, model, attempt = claude_answers(mocks, gateway, order, chunk_interval_s=0.1)

    status, headers, events = http_stream(gw.port, {**ASK, "model": model, "stream": True, "stream_options": {"include_usage": True}})

    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["model"] == "claude-sonnet-4" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])
    assert text == "[claude] you said: hi there"
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    assert claude.received[0].json()["stream"] is True and "stream_options" not in claude.received[0].json()
    assert claude.received[0].header("x-envoy-attempt-count") == attempt
    # Each event was passed on as the provider sent it (0.1 s apart), not held until the end.
    times = [moment for moment, _ in events]
    assert times[-1] - times[1] >= 0.5, "the chunks arrived all at once: the answer was buffered"


@pytest.mark.parametrize("line_end", ["\r\n", "\r"], ids=["crlf", "cr"])
def test_a_stream_framed_with_cr_and_cut_at_every_cr_loses_no_text(mocks, gateway, line_end):
    """SSE allows CRLF and CR line ends; a network read may end between CR and LF."""
    _claude, gw, _model, _ = claude_answers(mocks, gateway, "after_openai_429", chunk_interval_s=0.01, sse_line_end=line_end)
    words = " ".join(f"w{index}" for index in range(10))

    status, _, events = http_stream(gw.port, {**ASK, "messages": [{"role": "user", "content": words}], "stream": True})

    assert status == 200
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert not [chunk for chunk in chunks if "error" in chunk], chunks
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == f"[claude] you said: {words}"
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks][-1] == "stop"
    assert events[-1][1] == "[DONE]"
    assert gw.metric("extproc_translation_malformed_events_total", provider="claude") is None, "nothing was unreadable"


def test_an_unreadable_event_reaches_the_client_as_an_error_event_and_is_counted(mocks, gateway):
    _claude, gw, _model, _ = claude_answers(mocks, gateway, "after_openai_429", chunk_interval_s=0.01, sse_odd_event=b"event: x\ndata: [1,2,3]\n\n")

    status, _, events = http_stream(gw.port, {**ASK, "stream": True})

    assert status == 200
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert [chunk["error"]["code"] for chunk in chunks if "error" in chunk] == ["malformed_event"]
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if "choices" in chunk) == "[claude] you said: hi there"
    assert events[-1][1] == "[DONE]"
    wait_for(lambda: gw.metric("extproc_translation_malformed_events_total", provider="claude") == 1)


@pytest.mark.parametrize("order", ORDERS)
def test_tool_calls_round_trip_through_claude(mocks, gateway, order):
    claude, gw, model, attempt = claude_answers(mocks, gateway, order)
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Look it up", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]

    answer = chat(gw.port, {"model": model, "messages": [{"role": "user", "content": "find cats"}], "tools": tools, "tool_choice": "required"})

    assert answer.status == 200, answer.body
    choice = answer.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "lookup" and json.loads(call["function"]["arguments"]) == {"echo": "find cats"}
    sent = claude.received[0].json()
    assert sent["tools"] == [{"name": "lookup", "description": "Look it up", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    assert sent["tool_choice"] == {"type": "any"}
    assert claude.received[0].header("x-envoy-attempt-count") == attempt

    follow_up = [
        {"role": "user", "content": "find cats"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "3 cats"},
    ]
    answer = chat(gw.port, {"model": model, "messages": follow_up, "tools": tools})

    assert answer.status == 200, answer.body
    assert answer.json()["choices"][0]["message"]["content"] == "[claude] you said: 3 cats"
    assert claude.received[1].json()["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": call["id"], "name": "lookup", "input": {"echo": "find cats"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "3 cats"}]},
    ]


@pytest.mark.parametrize(("order", "status"), [("after_openai_429", 400), ("after_openai_429", 529), ("claude_first", 400)])
def test_an_anthropic_error_reaches_the_client_as_openai_json_with_its_status(mocks, gateway, order, status):
    """(Claude first with a 529 fails over to OpenAI instead: see the next test.)"""
    claude, gw, model, attempt = claude_answers(mocks, gateway, order, status=status)

    answer = chat(gw.port, {**ASK, "model": model})

    assert answer.status == status
    error = answer.json()["error"]
    assert error["code"] == {400: "invalid_request_error", 529: "overloaded_error"}[status]
    assert error["message"] == f"claude: mock status {status}" and "type" in error
    assert answer.headers["content-type"] == "application/json" and answer.headers["x-arch-llm-provider"] == "claude"
    assert claude.received[0].header("x-envoy-attempt-count") == attempt


def test_a_529_fails_over_like_a_429_and_cools_claude_down(mocks, gateway):
    _openai, claude, gw = cross_vendor(mocks, gateway, first_fails=False, claude_first=True, status=529, retry_after="30")

    first = chat(gw.port, {**ASK, "model": CLAUDE})
    second = chat(gw.port, {**ASK, "model": CLAUDE})

    assert (first.status, second.status) == (200, 200)
    assert first.headers["x-arch-llm-provider"] == second.headers["x-arch-llm-provider"] == "openai"
    assert len(claude.received) == 1, "a 529 cools its provider down like a 429"


def test_what_cannot_be_translated_is_a_clear_400_and_reaches_no_provider(mocks, gateway):
    openai, claude, gw = cross_vendor(mocks, gateway, first_fails=False, claude_first=True)

    answer = chat(gw.port, {"model": CLAUDE, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]})

    assert answer.status == 400
    assert answer.json()["error"]["code"] == "untranslatable_request"
    assert "input_audio" in answer.json()["error"]["message"]
    assert not claude.received and not openai.received


ODD_FIELDS = [
    ({"stop": 5}, "stop"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"tool_choice": {"type": "function", "function": "x"}}, "tool_choice"),
    ({"messages": [{"role": "assistant", "tool_calls": 5}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]}]}, "messages[0].tool_calls[0].function.arguments"),
]


def test_a_field_of_the_wrong_type_is_the_clients_400_naming_it(mocks, gateway):
    """As OpenAI's own API answers: never a 500 (counted against the provider), never silently replaced."""
    openai, claude, gw = cross_vendor(mocks, gateway, first_fails=False, claude_first=True)
    for fields, param in ODD_FIELDS:
        answer = chat(gw.port, {"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}], **fields})
        assert answer.status == 400, (fields, answer.body)
        error = answer.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_type", param), fields
        assert param.split(".")[-1].split("[")[0] in error["message"]
    assert not claude.received and not openai.received
    assert gw.metric("extproc_rejected_requests_total", reason="invalid_type") == len(ODD_FIELDS)


def test_a_large_image_request_is_translated_through_the_bulk_lane(mocks, gateway):
    """Over 1 MB: the router level runs on the bulk lane (model patched by Envoy), then the attempt is translated."""
    _openai, claude, gw = cross_vendor(mocks, gateway, first_fails=False, claude_first=True)
    image = base64.b64encode(bytes(range(256)) * 6000).decode()  # ~2 MB of base64
    content = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]

    answer = chat(gw.port, {"model": CLAUDE, "messages": [{"role": "user", "content": content}]})

    assert answer.status == 200, answer.body[:300]
    assert answer.json()["choices"][0]["message"]["content"] == "[claude] you said: what is this"
    sent = claude.received[0].json()
    assert sent["model"] == "claude-sonnet-4"
    assert sent["messages"][0]["content"][1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}}
    assert gw.metric("extproc_processing_seconds_count", phase="bulk_request_body") == 1


def test_the_access_log_names_the_clients_path_and_model_and_the_answering_provider_and_its_model_within_a_second(mocks, gateway):
    import select
    import socket
    import time

    openai = mocks.start("openai", status=429)
    claude = mocks.start("claude", api="anthropic")
    gw = gateway(
        gateway_config(
            provider("openai", GPT4O, openai, retry_policy={"fallback_models": [CLAUDE]}),
            provider("claude", CLAUDE, claude, access_key="sk-ant", base_url=f"http://127.0.0.1:{claude.port}/anthro"),
            access_log=True,
        )
    )
    with socket.create_connection(("127.0.0.1", gw.port)) as half_sent:  # a port check, a head never finished: no request
        half_sent.sendall(b"POST /v1/chat/comp")
    assert chat(gw.port, {**ASK, "model": "openai/gpt-9"}).status == 404
    assert chat(gw.port, ASK).status == 200
    assert claude.received[0].path == "/anthro/v1/messages"

    lines = []
    deadline = time.monotonic() + 1.5
    while len(lines) < 2 and select.select([gw.process.stdout], [], [], max(deadline - time.monotonic(), 0))[0]:
        line = gw.process.stdout.readline()
        if line.startswith("{"):
            lines.append(json.loads(line))
    assert len(lines) == 2, f"the two requests' lines, within 1.5 s: {lines}"
    refused, served = lines
    assert (refused["path"], refused["status"], refused["provider"]) == ("/v1/chat/completions", 404, None)
    assert (served["path"], served["model"], served["provider"], served["provider_model"]) == ("/v1/chat/completions", GPT4O, "claude", CLAUDE)
    assert (served["status"], served["attempts"]) == (200, 2)


def test_a_retry_after_a_translated_attempt_carries_its_own_body_and_length(mocks, gateway):
    """OpenAI 429 -> Claude (translated, 429) -> OpenAI again: Envoy keeps one header map for all attempts,
    so the third must not inherit the translated attempt's content-length (it would hang, or be cut)."""
    first = mocks.start("first", status=429)
    claude = mocks.start("claude", api="anthropic", status=429)
    last = mocks.start("last")
    gw = gateway(
        gateway_config(
            provider("first", GPT4O, first, retry_policy={"fallback_models": [CLAUDE, "local/gpt-4o"]}),
            provider("claude", CLAUDE, claude, access_key="sk-ant-0002"),
            provider("last", "local/gpt-4o", last, provider_interface="openai"),
        )
    )

    answer = chat(gw.port, ASK)

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "last", answer.body
    assert json.loads(claude.received[0].body)["system"] == "Be brief.", "attempt 2 was translated"
    received = last.received[0]
    assert json.loads(received.body) == {**ASK, "model": "gpt-4o"}
    assert int(received.header("content-length")) == len(received.body) == len(first.received[0].body)


def test_a_translated_retry_after_a_patched_one_gets_only_its_translation(mocks, gateway):
    """OpenAI 429 -> another model's provider (body patched, 429) -> Claude (translated): the patch of attempt 2 must not touch attempt 3."""
    first = mocks.start("first", status=429)
    mini = mocks.start("mini", status=429)
    claude = mocks.start("claude", api="anthropic")
    gw = gateway(
        gateway_config(
            provider("first", GPT4O, first, retry_policy={"fallback_models": ["local/gpt-4o-mini", CLAUDE]}),
            provider("mini", "local/gpt-4o-mini", mini, provider_interface="openai"),
            provider("claude", CLAUDE, claude, access_key="sk-ant-0002"),
        )
    )

    answer = chat(gw.port, ASK)

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "claude", answer.body
    assert json.loads(mini.received[0].body)["model"] == "gpt-4o-mini", "attempt 2 was patched"
    received = claude.received[0]
    assert json.loads(received.body)["model"] == "claude-sonnet-4" and json.loads(received.body)["system"] == "Be brief."
    assert int(received.header("content-length")) == len(received.body)


#: (provider's API, its 200 answer's body): what a client of the other API cannot be given.
UNREADABLE_ANSWERS = {
    "openai, not JSON": ("openai", b"<html>oops</html>"),
    "openai, no choices": ("openai", b'{"id": "x", "object": "chat.completion"}'),
    "openai, message null": ("openai", b'{"choices": [{"index": 0, "message": null}]}'),
    "openai, empty": ("openai", b""),
    "anthropic, a top-level array": ("anthropic", b"[1, 2]"),
    "anthropic, content null": ("anthropic", b'{"type": "message", "content": null}'),
    "anthropic, only unknown blocks": ("anthropic", b'{"type": "message", "content": [{"type": "mystery"}]}'),
    "anthropic, empty": ("anthropic", b""),
}


@pytest.mark.parametrize("provider_api, body", UNREADABLE_ANSWERS.values(), ids=UNREADABLE_ANSWERS.keys())
def test_an_answer_the_clients_api_cannot_carry_is_a_502_in_its_shape_counted_against_the_provider(mocks, gateway, provider_api, body):
    anthropic_client = provider_api == "openai"
    openai, claude, gw = openai_and_claude(mocks, gateway, claude_first=not anthropic_client, openai={"answer_body": body}, claude={"answer_body": body})
    model = "openai/gpt-4o" if anthropic_client else "anthropic/claude-sonnet-4"
    payload = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}

    answer = chat(gw.port, payload, path="/v1/messages" if anthropic_client else "/v1/chat/completions")

    assert answer.status == 502, answer.body
    assert (openai if anthropic_client else claude).served == 1
    error = answer.json()["error"]
    assert f"Provider '{provider_api if provider_api == 'openai' else 'claude'}' answered" in error["message"]
    if anthropic_client:
        assert answer.json()["type"] == "error" and error["type"] == "api_error"
    else:
        assert error["code"] == "bad_provider_answer"
    wait_for(lambda: gw.metric("extproc_upstream_attempts_total", provider="openai" if anthropic_client else "claude", code="200", outcome="invalid_answer") == 1)
    wait_for(lambda: gw.metric("extproc_requests_total", status_class="5xx") == 1)
    assert gw.process.poll() is None
