"""The official `openai` and `anthropic` SDKs as clients, through real Envoy, for every pair of client and provider API.

Their parsers are stricter than ours (event order, field types, stream helpers that rebuild the final message),
and they are what users call the gateway with.
"""

import json

import anthropic
import openai
import pytest

from .harness import gateway_config, provider

GPT = "openai/gpt-4o"
CLAUDE = "anthropic/claude-sonnet-4"
TOOL_OPENAI = {"type": "function", "function": {"name": "get_weather", "description": "the weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
TOOL_ANTHROPIC = {"name": "get_weather", "description": "the weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture
def both(mocks, gateway):
    """A gateway with an OpenAI provider (gpt-4o) and an Anthropic one (claude), each with its own key; (gateway, openai mock, claude mock)."""
    openai_mock = mocks.start("openai")
    claude_mock = mocks.start("claude", api="anthropic")
    gw = gateway(gateway_config(provider("openai", GPT, openai_mock, access_key="sk-openai-0001"), provider("claude", CLAUDE, claude_mock, access_key="sk-ant-0002")))
    return gw, openai_mock, claude_mock


@pytest.fixture
def clients():
    """SDK clients on a gateway, closed after the test (their kept-alive connections would hold the gateway's drain)."""
    opened: list = []

    def make(gw, kind):
        if kind == "openai":
            client = openai.OpenAI(api_key="client-key-not-forwarded", base_url=f"http://127.0.0.1:{gw.port}/v1", max_retries=0, timeout=20)
        else:
            client = anthropic.Anthropic(api_key="client-key-not-forwarded", base_url=f"http://127.0.0.1:{gw.port}", max_retries=0, timeout=20)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def provider_keys(mock) -> list[tuple[str | None, str | None]]:
    return [(request.header("authorization"), request.header("x-api-key")) for request in mock.received]


@pytest.mark.parametrize("model", [GPT, CLAUDE], ids=["openai provider", "anthropic provider (translated)"])
def test_the_openai_sdk_creates_streams_and_rebuilds_the_final_completion(both, clients, model):
    gw, openai_mock, claude_mock = both
    client = clients(gw, "openai")
    messages = [{"role": "user", "content": "hi"}]
    name = "openai" if model == GPT else "claude"

    created = client.chat.completions.create(model=model, messages=messages)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(model=model, messages=messages, stream=True) if chunk.choices)
    with client.chat.completions.stream(model=model, messages=messages) as stream:
        final = stream.get_final_completion()

    assert created.choices[0].message.content.startswith(f"[{name}] you said: hi") and created.choices[0].finish_reason == "stop"
    assert f"[{name}]" in streamed and final.choices[0].message.content.strip() == streamed.strip()
    mock = openai_mock if model == GPT else claude_mock
    expected = ("Bearer sk-openai-0001", None) if model == GPT else (None, "sk-ant-0002")
    assert provider_keys(mock) == [expected] * 3, "each request with the provider's key, never the client's"


@pytest.mark.parametrize("model", [CLAUDE, GPT], ids=["anthropic provider", "openai provider (translated)"])
def test_the_anthropic_sdk_creates_streams_and_rebuilds_the_final_message(both, clients, model):
    gw, openai_mock, claude_mock = both
    client = clients(gw, "anthropic")
    messages = [{"role": "user", "content": "hi"}]
    name = "claude" if model == CLAUDE else "openai"

    created = client.messages.create(model=model, max_tokens=100, messages=messages)
    events = list(client.messages.create(model=model, max_tokens=100, messages=messages, stream=True))
    with client.messages.stream(model=model, max_tokens=100, messages=messages) as stream:
        final = stream.get_final_message()

    assert created.content[0].type == "text" and created.content[0].text.startswith(f"[{name}] you said: hi") and created.stop_reason == "end_turn"
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    streamed = "".join(event.delta.text for event in events if event.type == "content_block_delta" and event.delta.type == "text_delta")
    assert f"[{name}]" in streamed and final.content[0].text.strip() == streamed.strip() and final.stop_reason == "end_turn"
    mock = claude_mock if model == CLAUDE else openai_mock
    expected = (None, "sk-ant-0002") if model == CLAUDE else ("Bearer sk-openai-0001", None)
    assert provider_keys(mock) == [expected] * 3


@pytest.mark.parametrize("model", [GPT, CLAUDE], ids=["openai provider", "anthropic provider (translated)"])
def test_an_openai_sdk_tool_call_split_across_chunks_is_rebuilt_whole(both, clients, model):
    gw, _, _ = both
    client = clients(gw, "openai")

    with client.chat.completions.stream(model=model, messages=[{"role": "user", "content": "weather in Paris?"}], tools=[TOOL_OPENAI]) as stream:
        final = stream.get_final_completion()

    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("model", [CLAUDE, GPT], ids=["anthropic provider", "openai provider (translated)"])
def test_an_anthropic_sdk_tool_use_split_across_events_is_rebuilt_whole(both, clients, model):
    gw, _, _ = both
    client = clients(gw, "anthropic")

    with client.messages.stream(model=model, max_tokens=100, messages=[{"role": "user", "content": "weather in Paris?"}], tools=[TOOL_ANTHROPIC]) as stream:
        final = stream.get_final_message()

    [tool_use] = [block for block in final.content if block.type == "tool_use"]
    assert tool_use.name == "get_weather" and isinstance(tool_use.input, dict) and final.stop_reason == "tool_use"


def test_the_gateways_errors_are_each_sdks_own_exception_classes(mocks, gateway, clients):
    limited = mocks.start("limited", status=429, retry_after="30")
    claude_mock = mocks.start("claude", api="anthropic")
    gw = gateway(gateway_config(provider("limited", GPT, limited, access_key="sk-1"), provider("claude", CLAUDE, claude_mock, access_key="sk-2")))
    openai_sdk, anthropic_sdk = clients(gw, "openai"), clients(gw, "anthropic")
    hello = [{"role": "user", "content": "hi"}]

    with pytest.raises(openai.RateLimitError):  # the provider's own 429, once
        openai_sdk.chat.completions.create(model=GPT, messages=hello)
    with pytest.raises(openai.RateLimitError) as cooling:  # then the gateway's: every provider of the model cooling down
        openai_sdk.chat.completions.create(model=GPT, messages=hello)
    assert cooling.value.code == "all_providers_cooling_down" and 1 <= int(cooling.value.response.headers["retry-after"]) <= 30
    with pytest.raises(anthropic.RateLimitError) as anthropic_cooling:
        anthropic_sdk.messages.create(model=GPT, max_tokens=10, messages=hello)
    assert int(anthropic_cooling.value.response.headers["retry-after"]) >= 1
    assert limited.served == 1

    with pytest.raises(openai.NotFoundError) as missing:
        openai_sdk.chat.completions.create(model="openai/no-such-model", messages=hello)
    assert missing.value.code == "model_not_found"
    with pytest.raises(anthropic.NotFoundError):
        anthropic_sdk.messages.create(model="openai/no-such-model", max_tokens=10, messages=hello)

    with pytest.raises(openai.BadRequestError) as bad:  # a field of the wrong type, refused where the request is translated
        openai_sdk.chat.completions.create(model=CLAUDE, messages=hello, temperature="hot")  # type: ignore[arg-type]
    assert bad.value.param == "temperature"
    with pytest.raises(anthropic.BadRequestError):
        anthropic_sdk.messages.create(model=CLAUDE, max_tokens=10, messages=[])
