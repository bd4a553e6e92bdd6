"""In-band errors of event streams through real Envoy: before the first token a failure that fails over, after it an explicit error.

A provider that accepts a stream (200, `text/event-stream`) may still fail it:
Anthropic sends `event: error` (`overloaded_error`), OpenAI a chunk holding
`error`. On a chain that holds streams (`first_token_timeout`, `hedge_after`)
one that comes before any content is the attempt's failure: the next provider
answers and the client sees nothing of it. Once content has reached the client
the stream can only end as an error in the client's API (never `[DONE]` nor
`message_stop`), and so does a stream whose connection is cut.
"""

import http.client
import json
import time

import anthropic
import openai
import pytest

from extproc.mock.bedrock import BedrockState

from .harness import gateway_config, provider, wait_for

GPT, CLAUDE = "openai/gpt-4o", "anthropic/claude-sonnet-4"
HOLDS = {"first_token_timeout": "5s"}


def stream(port: int, payload: dict, path: str) -> tuple[int, dict[str, str], bytes, bool]:
    """POST a streaming request: (status, headers, the body as received, whether it ended cleanly)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, json.dumps(payload).encode(), {"content-type": "application/json", "anthropic-version": "2023-06-01"})
        answer = connection.getresponse()
        headers = {key.lower(): value for key, value in answer.getheaders()}
        received = bytearray()
        try:
            while chunk := answer.read1(65536):
                received += chunk
            return answer.status, headers, bytes(received), True
        except (http.client.IncompleteRead, ConnectionError) as cut:
            received += getattr(cut, "partial", b"")
            return answer.status, headers, bytes(received), False
    finally:
        connection.close()


def events(body: bytes) -> list[dict | str]:
    """Each `data:` of an event stream, parsed (`[DONE]` as itself)."""
    out: list[dict | str] = []
    for line in body.decode().splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def sdk_stream(client: str, port: int, model: str, messages: list[dict]) -> None:
    """Read a whole stream with the client's official SDK (its error, if it meets one, is raised)."""
    if client == "openai":
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0) as sdk:
            list(sdk.chat.completions.create(model=model, stream=True, messages=messages))
    else:
        with anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="unused", max_retries=0) as sdk:
            list(sdk.messages.create(model=model, max_tokens=64, stream=True, messages=messages))


def request_for(client: str, model: str) -> tuple[dict, str]:
    payload = {"model": model, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi there"}]}
    return payload, "/v1/messages" if client == "anthropic" else "/v1/chat/completions"


@pytest.mark.parametrize(
    ("api", "model", "error_type", "retry_on"),
    [("anthropic", CLAUDE, "overloaded_error", [429]), ("openai", GPT, "server_error", [429, "5xx"])],
    ids=["anthropic overloaded_error", "openai server_error"],
)
def test_an_error_event_before_the_first_token_fails_over_and_the_client_sees_only_the_next_provider(mocks, gateway, api, model, error_type, retry_on):
    failing = mocks.start("failing", api=api, stream_error_after=0, stream_error_type=error_type)
    good = mocks.start("good", api=api)
    gw = gateway(
        gateway_config(
            provider("failing", model, failing, access_key="sk-failing-0001", retry_policy={"retry_on": retry_on, **HOLDS}),
            provider("good", model, good, access_key="sk-good-0002"),
        )
    )
    payload, path = request_for(api, model)

    status, headers, body, clean = stream(gw.port, payload, path)

    assert (status, headers["x-arch-llm-provider"], clean) == (200, "good", True)
    assert "mock in-band" not in body.decode(), "nothing of the failed attempt reached the client"
    if api == "anthropic":
        assert [event["type"] for event in events(body)][-1] == "message_stop"
        assert [request.header("x-api-key") for request in good.received] == ["sk-good-0002"]
    else:
        assert events(body)[-1] == "[DONE]" and all(event["id"] == "chatcmpl-good" for event in events(body)[:-1])
        assert [request.header("authorization") for request in good.received] == ["Bearer sk-good-0002"]
    assert good.received[0].body == failing.received[0].body, "the next provider got the same request"
    if error_type == "overloaded_error":  # Anthropic's 529: the provider cools before Envoy retries, so the next request starts on the next one
        assert stream(gw.port, payload, path)[1]["x-arch-llm-provider"] == "good"
        assert failing.served == 1
        wait_for(lambda: gw.metric("extproc_upstream_attempts_total", provider="failing", code="529", outcome="rate_limited") == 1)


def test_a_bedrock_exception_frame_before_the_first_token_fails_over_too(mocks, gateway):
    """Bedrock's stream is translated for an OpenAI client before the hold reads it: its exception frame is an OpenAI error chunk there."""
    model = "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0"
    keys = {"aws_region_name": "us-east-1", "aws_access_key_id": "AKIAMOCKMOCKMOCK0001", "aws_secret_access_key": "mock-secret-access-key"}
    throttled = mocks.start("throttled", api="bedrock", bedrock=BedrockState(), stream_error_after=0, stream_error_type="throttlingException")
    good = mocks.start("good")
    gw = gateway(
        gateway_config(
            provider("throttled", model, throttled, retry_policy={"fallback_models": [GPT], **HOLDS}, **keys),
            provider("good", GPT, good, access_key="sk-good-0002"),
        )
    )
    payload, path = request_for("openai", model)

    status, headers, body, clean = stream(gw.port, payload, path)

    assert (status, headers["x-arch-llm-provider"], clean) == (200, "good", True)
    assert events(body)[-1] == "[DONE]" and "mock in-band" not in body.decode()
    assert throttled.served == 1 and good.served == 1


@pytest.mark.parametrize(
    ("api", "model", "error_type", "status"),
    [("anthropic", CLAUDE, "overloaded_error", 529), ("anthropic", CLAUDE, "rate_limit_error", 429), ("openai", GPT, "server_error", 500)],
)
def test_the_last_providers_error_event_before_content_reaches_the_client_as_that_apis_error_answer(mocks, gateway, api, model, error_type, status):
    only = mocks.start("only", api=api, stream_error_after=0, stream_error_type=error_type)
    # cooldowns off: the SDK's request after the raw one must reach the provider too, not find it cooling
    gw = gateway({**gateway_config(provider("only", model, only, access_key="sk-only-0001", retry_policy=HOLDS)), "cooldown": {"enabled": False}})
    payload, path = request_for(api, model)

    answered, headers, body, clean = stream(gw.port, payload, path)

    assert (answered, headers["content-type"], clean) == (status, "application/json", True)
    error = json.loads(body)
    if api == "anthropic":
        assert error == {"type": "error", "error": {"type": error_type, "message": f"only: mock in-band {error_type}"}}
    else:
        assert error["error"]["type"] == error_type and error["error"]["message"] == f"only: mock in-band {error_type}"
    with pytest.raises(anthropic.APIStatusError if api == "anthropic" else openai.APIStatusError) as raised:
        sdk_stream(api, gw.port, model, payload["messages"])
    assert raised.value.status_code == status and f"mock in-band {error_type}" in str(raised.value)


def test_on_a_hedging_chain_an_error_event_waits_for_the_hedge_which_wins(mocks, gateway):
    """Envoy 1.40 crashes when an upstream filter releases a failed answer while a hedge is in flight: the error waits instead."""
    failing = mocks.start("failing", api="anthropic", stream_error_after=0)
    good = mocks.start("good", api="anthropic")
    gw = gateway(
        gateway_config(
            provider("failing", CLAUDE, failing, access_key="sk-failing-0001", retry_policy={"hedge_after": "0.5s"}),
            provider("good", CLAUDE, good, access_key="sk-good-0002"),
        )
    )
    payload, path = request_for("anthropic", CLAUDE)

    status, headers, body, clean = stream(gw.port, payload, path)

    assert (status, headers["x-arch-llm-provider"], clean) == (200, "good", True)
    assert [event["type"] for event in events(body)][-1] == "message_stop" and "mock in-band" not in body.decode()
    assert [request.header("x-api-key") for request in good.received] == ["sk-good-0002"]


def test_on_a_hedging_chain_whose_hedge_fails_too_the_first_error_goes_on_as_sent_after_twice_hedge_after(mocks, gateway):
    first = mocks.start("first", api="anthropic", stream_error_after=0)
    second = mocks.start("second", api="anthropic", stream_error_after=0)
    gw = gateway(
        gateway_config(
            provider("first", CLAUDE, first, access_key="sk-first-0001", retry_policy={"hedge_after": "0.5s"}),
            provider("second", CLAUDE, second, access_key="sk-second-0002"),
        )
    )
    payload, path = request_for("anthropic", CLAUDE)

    started = time.monotonic()
    status, _, body, clean = stream(gw.port, payload, path)
    elapsed = time.monotonic() - started

    assert (status, clean) == (200, True)
    assert [event["type"] for event in events(body)] == ["message_start", "ping", "error"], "an explicit error, never a clean end"
    assert 1.0 <= elapsed < 3.0, f"held twice hedge_after for the hedge, then sent on: {elapsed:.2f}s"
    assert first.served == 1 and second.served == 1
    assert stream(gw.port, payload, path)[0] == 200, "Envoy still answers"


PAIRS = {
    "openai client, openai provider": ("openai", "openai", GPT),
    "anthropic client, anthropic provider": ("anthropic", "anthropic", CLAUDE),
    "openai client, anthropic provider": ("openai", "anthropic", CLAUDE),
    "anthropic client, openai provider": ("anthropic", "openai", GPT),
}


def clean_end(client: str, received: list[dict | str]) -> bool:
    return "[DONE]" in received if client == "openai" else any(isinstance(event, dict) and event.get("type") == "message_stop" for event in received)


def content_of(client: str, received: list[dict | str]) -> str:
    if client == "openai":
        return "".join(choice["delta"].get("content") or "" for event in received if isinstance(event, dict) for choice in event.get("choices", []))
    return "".join(event["delta"].get("text", "") for event in received if isinstance(event, dict) and event.get("type") == "content_block_delta")


def broken_stream(mocks, gateway, client: str, api: str, model: str, **behaviour):
    """One provider of `api` whose stream breaks as `behaviour` says, on a chain that holds streams; (gateway, request, what `stream` got)."""
    mock = mocks.start("p", api=api, **behaviour)
    gw = gateway(gateway_config(provider("p", model, mock, access_key="sk-p-0001", retry_policy=HOLDS)))
    payload, path = request_for(client, model)
    return gw, payload, stream(gw.port, payload, path)


@pytest.mark.parametrize(("client", "api", "model"), PAIRS.values(), ids=PAIRS.keys())
def test_an_error_after_content_is_an_error_event_in_the_clients_api_and_never_a_clean_end(mocks, gateway, client, api, model):
    gw, payload, (status, _, body, _) = broken_stream(mocks, gateway, client, api, model, stream_error_after=2)

    received = events(body)
    assert status == 200 and content_of(client, received).strip(), "the content before the error reached the client"
    assert not clean_end(client, received), received[-3:]
    last = received[-1]
    assert isinstance(last, dict) and "error" in last and (client == "openai" or last["type"] == "error"), f"the stream ends with an error in the client's API: {last}"
    with pytest.raises(openai.APIError if client == "openai" else anthropic.APIError, match="mock in-band"):
        sdk_stream(client, gw.port, model, payload["messages"])


@pytest.mark.parametrize(("client", "api", "model"), PAIRS.values(), ids=PAIRS.keys())
def test_a_stream_cut_mid_answer_never_ends_cleanly_and_the_clients_sdk_raises(mocks, gateway, client, api, model):
    gw, payload, (status, _, body, clean) = broken_stream(mocks, gateway, client, api, model, cut_after_chunks=2)

    received = events(body)
    assert status == 200 and content_of(client, received).strip(), "the content before the cut reached the client"
    assert not clean and not clean_end(client, received), "the client's connection is cut too: no end of any kind"
    with pytest.raises(openai.APIConnectionError if client == "openai" else anthropic.APIConnectionError):
        sdk_stream(client, gw.port, model, payload["messages"])
