"""Anthropic-format clients (`/v1/messages`) served by any provider, through real Envoy and the real sidecar.

The OpenAI mock runs `strict`: it refuses what OpenAI's chat.completions
refuses (no Bearer key, Anthropic's fields such as `system` or `top_k`, a
content block type it has no place for, a tool result answering no call),
and 404s `/v1/messages`; so a 200 here means the provider got a real
chat.completions request. The Anthropic mock likewise refuses what Anthropic refuses.
"""

import json

import pytest

from .harness import chat, gateway_config, http_stream, openai_and_claude, provider, request, wait_for

GPT4O = "openai/gpt-4o"
CLAUDE = "anthropic/claude-sonnet-4"
MESSAGES = "/v1/messages"
#: What Claude Code sends beside its body: its own key (never forwarded), the API version, a beta flag.
CLIENT_HEADERS = {"x-api-key": "sk-ant-client-0009", "anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking-2025-05-14"}
ASK = {
    "model": CLAUDE,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "hi there"}],
    "max_tokens": 64,
    "temperature": 0.5,
    "top_k": 40,
    "stop_sequences": ["END"],
    "metadata": {"user_id": "u-42"},
}


def claude_then_openai(mocks, gateway, claude_status: int = 429, openai_first: bool = False, **openai_behaviour):
    """Claude falls back to gpt-4o (or gpt-4o comes first when `openai_first`); Claude answers `claude_status`."""
    claude = {"status": claude_status, "retry_after": "1"} if claude_status != 200 else {}
    openai, claude_mock, gw = openai_and_claude(mocks, gateway, not openai_first, {"strict": True, **openai_behaviour}, claude)
    return claude_mock, openai, gw


def messages(port: int, payload: dict, headers: dict[str, str] | None = None):
    return chat(port, payload, headers={**CLIENT_HEADERS, **(headers or {})}, path=MESSAGES)


def test_an_anthropic_429_fails_over_to_openai_with_a_translated_request_and_answer(mocks, gateway):
    claude, openai, gw = claude_then_openai(mocks, gateway)

    answer = messages(gw.port, ASK)

    assert answer.status == 200, answer.body
    assert answer.headers["x-arch-llm-provider"] == "openai"
    assert answer.json() == {
        "id": "chatcmpl-openai-1", "type": "message", "role": "assistant", "model": "gpt-4o",
        "content": [{"type": "text", "text": "[openai] you said: hi there"}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 4, "output_tokens": 5},
    }  # fmt: skip
    assert int(answer.headers["content-length"]) == len(answer.body)
    # In order: Claude got the client's Messages body with only its own key; OpenAI a chat.completions request with only its own.
    [first], [second] = claude.received, openai.received
    assert first.path == MESSAGES and first.header("x-api-key") == "sk-ant-0002" and first.header("authorization") is None
    assert first.header("anthropic-beta") == CLIENT_HEADERS["anthropic-beta"], "an Anthropic provider gets the client's Anthropic headers"
    assert json.loads(first.body) == {**ASK, "model": "claude-sonnet-4"}
    assert second.path == "/v1/chat/completions" and second.header("x-envoy-attempt-count") == "2"
    assert second.header("authorization") == "Bearer sk-openai-0001"
    assert second.header("x-api-key") is None and second.header("anthropic-version") is None and second.header("anthropic-beta") is None
    assert second.json() == {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}],
        "max_completion_tokens": 64,
        "temperature": 0.5,
        "stop": ["END"],
        "user": "u-42",
    }, "top_k has no chat.completions equivalent: dropped, never sent raw"
    assert gw.metric("extproc_translation_dropped_fields_total", provider="openai", field="top_k") == 1
    assert gw.metric("extproc_translated_attempts_total", provider="openai", api="anthropic_messages->openai_chat") == 1
    # Envoy reads the translated answer's usage (Anthropic's names): tokens are counted for OpenAI like for any provider.
    wait_for(lambda: gw.metric("extproc_tokens_total", provider="openai", model=GPT4O, type="output") == 5)
    assert gw.metric("extproc_tokens_total", provider="openai", model=GPT4O, type="input") == 4


def test_openai_first_is_translated_on_attempt_one_and_falls_back_to_claude_untranslated(mocks, gateway):
    claude, openai, gw = claude_then_openai(mocks, gateway, claude_status=200, openai_first=True, status=429, retry_after="1")

    answer = messages(gw.port, {**ASK, "model": GPT4O})

    assert answer.status == 200, answer.body
    assert answer.headers["x-arch-llm-provider"] == "claude"
    assert answer.json()["content"] == [{"type": "text", "text": "[claude] you said: hi there"}]
    [first], [second] = openai.received, claude.received
    assert first.path == "/v1/chat/completions" and first.header("x-envoy-attempt-count") == "1"
    # The retry to Claude carries the client's own body and Anthropic headers, none of OpenAI's.
    assert second.path == MESSAGES and second.header("authorization") is None and second.header("x-api-key") == "sk-ant-0002"
    assert second.header("anthropic-version") == "2023-06-01" and second.header("anthropic-beta") == CLIENT_HEADERS["anthropic-beta"]
    assert json.loads(second.body) == {**ASK, "model": "claude-sonnet-4"}


def test_a_streamed_answer_comes_back_as_anthropics_event_stream_chunk_by_chunk(mocks, gateway):
    _claude, openai, gw = claude_then_openai(mocks, gateway, chunks=6, chunk_interval_s=0.1)

    status, headers, events = http_stream(gw.port, {**ASK, "stream": True}, path=MESSAGES, headers=CLIENT_HEADERS)

    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    data = [json.loads(text) for _, text in events]
    kinds = [event["type"] for event in data]
    assert kinds == ["message_start", "content_block_start", *["content_block_delta"] * 6, "content_block_stop", "message_delta", "message_stop"]
    assert data[0]["message"]["role"] == "assistant" and data[0]["message"]["model"] == "gpt-4o" and data[0]["message"]["content"] == []
    assert data[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    text = "".join(event["delta"]["text"] for event in data if event["type"] == "content_block_delta")
    assert text == "[openai] you said: hi there [openai] ", "six chunks of the mock's five words, each passed on"
    assert data[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert data[-2]["usage"] == {"input_tokens": 4, "output_tokens": 5}
    sent = openai.received[0].json()
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}, "usage is asked for: Anthropic's clients expect it"
    # Each event was passed on as the provider sent it (0.1 s apart), not held until the end.
    times = [moment for moment, _ in events]
    assert times[-1] - times[1] >= 0.4, "the events arrived all at once: the answer was buffered"
    wait_for(lambda: gw.metric("extproc_tokens_total", provider="openai", model=GPT4O, type="output") == 5)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_tool_use_round_trips_through_openai(mocks, gateway, stream):
    _claude, openai, gw = claude_then_openai(mocks, gateway, chunk_interval_s=0.01)
    tools = [{"name": "lookup", "description": "Look it up", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    ask = {"model": CLAUDE, "max_tokens": 64, "messages": [{"role": "user", "content": "find cats"}], "tools": tools, "tool_choice": {"type": "any"}}

    if stream:
        status, _, events = http_stream(gw.port, {**ask, "stream": True}, path=MESSAGES, headers=CLIENT_HEADERS)
        data = [json.loads(text) for _, text in events]
        assert status == 200
        [start] = [event for event in data if event["type"] == "content_block_start"]
        block = start["content_block"]
        arguments = "".join(event["delta"]["partial_json"] for event in data if event["type"] == "content_block_delta")
        assert [event["delta"]["type"] for event in data if event["type"] == "content_block_delta"] == ["input_json_delta"], "the arguments whole, read as a JSON answer's are"
        call = {**block, "input": json.loads(arguments)}
        assert next(event for event in data if event["type"] == "message_delta")["delta"]["stop_reason"] == "tool_use"
    else:
        answer = messages(gw.port, ask)
        assert answer.status == 200, (answer.body, openai.received[0].headers)
        body = answer.json()
        assert body["stop_reason"] == "tool_use"
        [call] = body["content"]
    assert call["type"] == "tool_use" and call["name"] == "lookup" and call["input"] == {"echo": "find cats"}
    sent = openai.received[0].json()
    assert sent["tools"] == [{"type": "function", "function": {"name": "lookup", "description": "Look it up", "parameters": tools[0]["input_schema"]}}]
    assert sent["tool_choice"] == "required"

    follow_up = [
        {"role": "user", "content": "find cats"},
        {"role": "assistant", "content": [{"type": "text", "text": "Looking."}, call]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": [{"type": "text", "text": "3 cats"}]}, {"type": "text", "text": "thanks"}]},
    ]
    answer = messages(gw.port, {**ask, "messages": follow_up, "tool_choice": {"type": "auto"}})

    assert answer.status == 200, answer.body
    assert answer.json()["content"] == [{"type": "text", "text": "[openai] you said: thanks"}]
    assert openai.received[1].json()["messages"][1:] == [
        {"role": "assistant", "content": "Looking.", "tool_calls": [{"id": call["id"], "type": "function", "function": {"name": "lookup", "arguments": '{"echo":"find cats"}'}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "3 cats"},
        {"role": "user", "content": "thanks"},
    ]


def test_an_openai_error_reaches_the_anthropic_client_in_anthropics_shape(mocks, gateway):
    _claude, openai, gw = claude_then_openai(mocks, gateway, status=400)

    answer = messages(gw.port, ASK)

    assert answer.status == 400
    assert answer.json() == {"type": "error", "error": {"type": "invalid_request_error", "message": "openai: mock status 400"}}
    assert openai.received[0].path == "/v1/chat/completions", "the error came from a translated attempt"
    assert answer.headers["content-type"] == "application/json"


def test_a_request_openai_cannot_take_is_the_clients_400_in_anthropics_shape_and_claude_is_not_retried(mocks, gateway):
    claude, openai, gw = claude_then_openai(mocks, gateway)
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}

    answer = messages(gw.port, {**ASK, "messages": [{"role": "user", "content": [document]}]})

    assert answer.status == 400
    error = answer.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "'document' content block" in error["error"]["message"] and "openai" in error["error"]["message"]
    assert len(claude.received) == 1 and not openai.received, "nothing untranslated reaches OpenAI"


def test_an_anthropic_error_reaches_an_openai_client_in_openais_shape(mocks, gateway):
    claude = mocks.start("claude", api="anthropic", status=404)
    gw = gateway(gateway_config(provider("claude", CLAUDE, claude, access_key="sk-ant-0002")))

    answer = chat(gw.port, {"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}]})

    assert answer.status == 404
    assert answer.json() == {"error": {"message": "claude: mock status 404", "type": "not_found_error", "code": "not_found_error"}}


def test_the_gateways_own_errors_reach_an_anthropic_client_in_anthropics_shape(mocks, gateway):
    claude = mocks.start("claude", api="anthropic", status=429, retry_after="30")
    gw = gateway(gateway_config(provider("claude", CLAUDE, claude, access_key="sk-ant-0002"), provider("down", "openai/gpt-4o-mini", port=9)))

    unknown = messages(gw.port, {**ASK, "model": "anthropic/no-such-model"})
    assert unknown.status == 404
    assert unknown.json()["type"] == "error" and unknown.json()["error"]["type"] == "not_found_error"
    assert "anthropic/no-such-model" in unknown.json()["error"]["message"]

    bad_json = request(gw.port, "POST", MESSAGES, b'{"model": "anthropic/claude-sonnet-4", "messages": [', {"content-type": "application/json", **CLIENT_HEADERS})
    assert bad_json.status == 400 and bad_json.json()["error"]["type"] == "invalid_request_error" and set(bad_json.json()) == {"type", "error"}

    assert messages(gw.port, ASK).status == 429  # Claude's own 429, in Anthropic's shape already; Claude now cools down
    cooling = messages(gw.port, ASK)
    assert cooling.status == 429 and int(cooling.headers["retry-after"]) >= 1
    assert cooling.json()["error"]["type"] == "rate_limit_error" and "claude-sonnet-4" in cooling.json()["error"]["message"]
    assert len(claude.received) == 1

    # Envoy's own reply (the provider's port refuses connections): Anthropic's shape too, OpenAI's for an OpenAI client.
    down = messages(gw.port, {**ASK, "model": "openai/gpt-4o-mini"})
    assert down.status == 503 and down.json()["type"] == "error" and down.json()["error"]["type"] == "api_error"
    openai_client = chat(gw.port, {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert openai_client.status == 503 and openai_client.json()["error"]["type"] == "api_error" and "type" not in openai_client.json()


def test_the_clients_own_key_reaches_only_a_passthrough_provider(mocks, gateway):
    claude = mocks.start("claude", api="anthropic")
    mine = mocks.start("mine", api="anthropic")
    gw = gateway(gateway_config(provider("claude", CLAUDE, claude, access_key="sk-ant-0002"), provider("mine", "anthropic/claude-mine", mine, passthrough_auth=True)))

    assert messages(gw.port, ASK).status == 200
    assert messages(gw.port, {**ASK, "model": "anthropic/claude-mine"}).status == 200

    assert claude.received[0].header("x-api-key") == "sk-ant-0002"
    assert mine.received[0].header("x-api-key") == CLIENT_HEADERS["x-api-key"]


COUNT = {"model": CLAUDE, "system": "Be brief.", "messages": [{"role": "user", "content": "count these words"}]}
COUNT_TOKENS = "/v1/messages/count_tokens"


def test_count_tokens_goes_only_to_anthropic_providers_of_the_chain(mocks, gateway):
    """Only Anthropic's API counts tokens: a 429 moves on to the next Anthropic provider, never to OpenAI (raw or translated)."""
    limited = mocks.start("limited", api="anthropic", status=429, retry_after="30")
    claude = mocks.start("claude", api="anthropic")
    openai = mocks.start("openai", strict=True)
    entries = [
        provider("openai", GPT4O, openai, access_key="sk-openai-0001", retry_policy={"fallback_models": [CLAUDE]}),
        provider("limited", CLAUDE, limited, access_key="sk-ant-0001"),
        provider("claude", CLAUDE, claude, access_key="sk-ant-0002"),
        provider("late", "openai/gpt-4o-mini", openai, access_key="sk-openai-0003"),
    ]
    entries[2]["retry_policy"] = {"fallback_models": ["openai/gpt-4o-mini"]}
    gw = gateway(gateway_config(*entries))

    # gpt-4o's chain starts at OpenAI: counting starts at its first Anthropic provider, and stops before "late".
    answer = chat(gw.port, {**COUNT, "model": GPT4O}, headers=CLIENT_HEADERS, path=COUNT_TOKENS)

    assert answer.status == 200, answer.body
    assert answer.json() == {"input_tokens": 5}
    assert [request.path for request in limited.received] == [COUNT_TOKENS]
    [counted] = claude.received
    assert counted.path == COUNT_TOKENS and counted.header("x-api-key") == "sk-ant-0002" and counted.header("x-envoy-attempt-count") == "2"
    assert json.loads(counted.body) == {**COUNT, "model": "claude-sonnet-4"}
    assert counted.header("x-envoy-max-retries") is None, "Envoy's router reads the cap and removes it"
    assert not openai.received


def test_count_tokens_is_not_retried_past_the_last_anthropic_provider(mocks, gateway):
    claude, openai, gw = claude_then_openai(mocks, gateway)

    answer = chat(gw.port, COUNT, headers=CLIENT_HEADERS, path=COUNT_TOKENS)

    assert answer.status == 429, "Claude's own answer: no provider after it counts tokens"
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "rate_limit_error"
    assert len(claude.received) == 1 and not openai.received


def test_count_tokens_for_a_model_without_an_anthropic_provider_is_a_clear_404(mocks, gateway):
    openai = mocks.start("openai", strict=True)
    gw = gateway(gateway_config(provider("openai", GPT4O, openai, access_key="sk-openai-0001")))

    answer = chat(gw.port, {**COUNT, "model": GPT4O}, headers=CLIENT_HEADERS, path=COUNT_TOKENS)

    assert answer.status == 404
    error = answer.json()
    assert error["type"] == "error" and error["error"]["type"] == "not_found_error"
    assert COUNT_TOKENS in error["error"]["message"] and GPT4O in error["error"]["message"]
    assert not openai.received


def test_an_anthropic_provider_always_gets_an_api_version_and_a_clients_own_is_kept(mocks, gateway):
    claude, _openai, gw = claude_then_openai(mocks, gateway, claude_status=200)

    plain = chat(gw.port, ASK, path=MESSAGES)  # curl-style: no anthropic-version
    own = chat(gw.port, ASK, headers={"anthropic-version": "2023-01-01"}, path=MESSAGES)

    assert plain.status == own.status == 200, (plain.body, own.body)
    assert [request.header("anthropic-version") for request in claude.received] == ["2023-06-01", "2023-01-01"]
