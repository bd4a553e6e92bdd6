"""`first_token_timeout` and `hedge_after` through real Envoy: an attempt that shows the client nothing in time is left or raced."""

import http.client
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from extproc.mock.bedrock import BedrockState

from .harness import chat, http_stream, provider, wait_for
from .harness import gateway_config as config_of

GPT = "openai/gpt-4o"
STREAM = {"model": GPT, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
HELLO = {"model": GPT, "messages": [{"role": "user", "content": "hi"}]}


def two(mocks, gateway, policy: dict, slow: dict, fast: dict | None = None):
    """gpt-4o on a slow provider then a fast one, both with their own key; (slow mock, fast mock, gateway)."""
    slow_mock, fast_mock = mocks.start("slow", **slow), mocks.start("fast", **(fast or {}))
    gw = gateway(
        config_of(
            provider("slow", GPT, slow_mock, access_key="sk-slow-0001", retry_policy=policy),
            provider("fast", GPT, fast_mock, access_key="sk-fast-0002"),
        )
    )
    return slow_mock, fast_mock, gw


def texts(events: list[tuple[float, str]]) -> list[str]:
    """The content of each chunk of an OpenAI-format stream, `[DONE]` as itself."""
    out = []
    for _, data in events:
        choices = [{"delta": {"content": data}}] if data == "[DONE]" else json.loads(data)["choices"]
        out.extend(choice["delta"].get("content") or "" for choice in choices)
    return out


def test_a_stream_stalled_after_its_headers_goes_to_the_next_provider_with_nothing_of_it_shown(mocks, gateway):
    slow, fast, gw = two(mocks, gateway, {"retry_on": [429], "first_token_timeout": "1s"}, {"first_token_delay_s": 30})

    started = time.monotonic()
    status, headers, events = http_stream(gw.port, STREAM)
    elapsed = time.monotonic() - started

    assert status == 200 and headers["x-arch-llm-provider"] == "fast"
    assert all(json.loads(data)["id"] == "chatcmpl-fast" for _, data in events if data != "[DONE]"), "not one chunk of the stalled stream"
    assert texts(events)[-1] == "[DONE]" and "".join(texts(events[:-1])).strip()
    assert 1.0 <= elapsed < 3.0, f"left after its first_token_timeout (1s), answered in {elapsed:.2f}s"
    assert [request.header("authorization") for request in slow.received] == ["Bearer sk-slow-0001"]
    assert [request.header("authorization") for request in fast.received] == ["Bearer sk-fast-0002"], "each attempt only its own key"
    assert fast.received[0].body == slow.received[0].body, "the next provider got the same body"
    wait_for(lambda: slow.cancelled == 1)
    wait_for(lambda: gw.metric("extproc_upstream_attempts_total", provider="slow", outcome="first_token_timeout") == 1)
    assert "an attempt to provider slow (group openai/gpt-4o#1) ended: first_token_timeout" in gw.logs()


def test_a_provider_that_sends_no_headers_is_left_at_the_first_token_timeout(mocks, gateway):
    slow, fast, gw = two(mocks, gateway, {"retry_on": [429], "first_token_timeout": "1s"}, {"delay_s": 30})

    started = time.monotonic()
    status, headers, events = http_stream(gw.port, STREAM)
    json_answer = chat(gw.port, HELLO)
    elapsed = time.monotonic() - started

    assert status == 200 and headers["x-arch-llm-provider"] == "fast" and texts(events)[-1] == "[DONE]"
    assert json_answer.status == 200 and json_answer.headers["x-arch-llm-provider"] == "fast"
    assert elapsed < 5.0, f"two requests, each left after 1s: {elapsed:.2f}s"
    assert fast.served == 2 and [request.header("authorization") for request in fast.received] == ["Bearer sk-fast-0002"] * 2
    wait_for(lambda: slow.cancelled == 2)


def test_a_prompt_stream_is_not_held_beyond_its_first_token_and_its_chunks_flow_as_they_come(mocks, gateway):
    _, fast, gw = two(mocks, gateway, {"retry_on": [429], "first_token_timeout": "2s"}, {"chunks": 8, "chunk_interval_s": 0.2})

    sent = time.monotonic()
    status, headers, events = http_stream(gw.port, STREAM)

    assert status == 200 and headers["x-arch-llm-provider"] == "slow"
    assert texts(events)[-1] == "[DONE]" and len(events) == 9
    first = events[0][0] - sent
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(events[:-1])]
    assert first < 0.15, f"first chunk after {first * 1000:.0f} ms: the hold let it go as soon as it came"
    assert all(0.1 < gap < 0.4 for gap in gaps), f"chunks arrive as the provider sends them (every 200 ms): {gaps}"
    assert not fast.served


def test_a_hedged_slow_answer_loses_to_the_fast_one_which_is_kept_and_the_slow_one_cancelled(mocks, gateway):
    slow, fast, gw = two(mocks, gateway, {"retry_on": [429], "hedge_after": "500ms"}, {"delay_s": 3}, {"delay_s": 0.2})

    started = time.monotonic()
    answer = chat(gw.port, HELLO)
    elapsed = time.monotonic() - started

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "fast"
    assert 0.6 <= elapsed < 1.5, f"hedged at 500 ms, answered 200 ms later: {elapsed:.2f}s"
    assert [request.header("authorization") for request in fast.received] == ["Bearer sk-fast-0002"]
    assert [request.header("authorization") for request in slow.received] == ["Bearer sk-slow-0001"]
    assert all(request.header("x-envoy-is-timeout-retry") is None for request in [*slow.received, *fast.received])
    wait_for(lambda: slow.cancelled == 1)
    wait_for(lambda: gw.metric("extproc_hedged_attempts_total", provider="fast") == 1)
    wait_for(lambda: gw.metric("extproc_upstream_attempts_total", provider="slow", outcome="hedged_out") == 1)
    assert "an attempt to provider slow (group openai/gpt-4o#1) ended: hedged_out" in gw.logs()
    assert gw.metric("extproc_provider_cooldowns_total", provider="slow", reason="hedged_out") is None, "losing a race is no failure"


def test_hedged_streams_the_first_token_wins(mocks, gateway):
    slow, fast, gw = two(mocks, gateway, {"retry_on": [429], "hedge_after": "500ms"}, {"first_token_delay_s": 3}, {"first_token_delay_s": 0.3})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: http_stream(gw.port, STREAM), range(8)))

    for status, headers, events in results:
        assert status == 200 and headers["x-arch-llm-provider"] == "fast"
        assert all(json.loads(data)["id"] == "chatcmpl-fast" for _, data in events if data != "[DONE]")
    assert fast.served == 8 and slow.served == 8, "each request raced once"
    wait_for(lambda: slow.cancelled == 8)


def test_a_translated_stream_is_held_too_an_anthropic_provider_stalled_after_message_start(mocks, gateway):
    claude, fast = mocks.start("claude", api="anthropic", first_token_delay_s=30), mocks.start("fast")
    gw = gateway(
        config_of(
            provider("claude", "anthropic/claude-sonnet-4", claude, access_key="sk-ant-0001", retry_policy={"first_token_timeout": "1s", "fallback_models": [GPT]}),
            provider("fast", GPT, fast, access_key="sk-fast-0002"),
        )
    )

    status, headers, events = http_stream(gw.port, {**STREAM, "model": "anthropic/claude-sonnet-4"})

    assert status == 200 and headers["x-arch-llm-provider"] == "fast"
    assert all(json.loads(data)["id"] == "chatcmpl-fast" for _, data in events if data != "[DONE]"), "nothing of Claude's translated opening"
    assert claude.received[0].path == "/v1/messages" and claude.received[0].header("x-api-key") == "sk-ant-0001"
    assert fast.received[0].header("x-api-key") is None and fast.received[0].header("authorization") == "Bearer sk-fast-0002"
    wait_for(lambda: claude.cancelled == 1)


def test_when_every_provider_stalls_the_client_gets_a_504_in_its_apis_shape_and_nothing_else(mocks, gateway):
    slow, fast, gw = two(mocks, gateway, {"retry_on": [429], "first_token_timeout": "700ms"}, {"first_token_delay_s": 30}, {"first_token_delay_s": 30})

    started = time.monotonic()
    answer = chat(gw.port, STREAM)
    elapsed = time.monotonic() - started

    assert answer.status == 504 and b"data:" not in answer.body, "no byte of either stream"
    assert answer.json()["error"]["type"] and answer.json()["error"]["message"], answer.body
    assert 1.4 <= elapsed < 3.0, f"each provider had its 700 ms: {elapsed:.2f}s"
    wait_for(lambda: slow.cancelled == 1 and fast.cancelled == 1)
    wait_for(lambda: gw.metric("extproc_upstream_attempts_total", provider="fast", outcome="first_token_timeout") == 1)
    assert chat(gw.port, HELLO).status == 200, "a JSON answer's first content is its headers: the stalls held nothing else back"


def test_on_a_hedging_chain_a_429_still_fails_over_at_once_and_is_no_hedge(mocks, gateway):
    limited, fast, gw = two(mocks, gateway, {"retry_on": [429], "hedge_after": "2s"}, {"status": 429, "retry_after": "30"})

    started = time.monotonic()
    first = chat(gw.port, HELLO)
    elapsed = time.monotonic() - started
    after = chat(gw.port, HELLO)

    assert first.status == 200 and first.headers["x-arch-llm-provider"] == "fast" and elapsed < 1.0
    assert after.headers["x-arch-llm-provider"] == "fast" and limited.served == 1, "its 429 cooled it before the client held the answer"
    assert fast.served == 2 and fast.received[0].header("authorization") == "Bearer sk-fast-0002"
    assert gw.metric("extproc_failovers_total", from_provider="slow", to_provider="fast", reason="rate_limited") == 1
    assert gw.metric("extproc_hedged_attempts_total", provider="fast") is None


def test_two_hundred_streams_at_once_each_left_once_and_counted_once(mocks, gateway):
    slow, fast, gw = two(mocks, gateway, {"retry_on": [429], "first_token_timeout": "1s"}, {"first_token_delay_s": 30}, {"chunks": 3, "chunk_interval_s": 0.01})

    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(lambda _: http_stream(gw.port, STREAM), range(200)))

    assert [status for status, _, _ in results] == [200] * 200
    assert all(headers["x-arch-llm-provider"] == "fast" for _, headers, _ in results)
    assert all(json.loads(data)["id"] == "chatcmpl-fast" for _, _, events in results for _, data in events if data != "[DONE]"), "not one chunk of a stalled stream"
    assert fast.served == 200 and slow.served >= 1
    # Each stalled attempt: one cancelled connection, one first_token_timeout; its failures cooled the provider for the rest.
    wait_for(lambda: slow.cancelled == slow.served and gw.metric("extproc_upstream_attempts_total", provider="slow", outcome="first_token_timeout") == slow.served)
    assert gw.metric("extproc_provider_cooldowns_total", provider="slow", reason="first_token_timeout") >= 1


def test_a_bedrock_stream_translated_from_its_frames_is_held_only_to_its_first_token(mocks, gateway):
    bedrock = mocks.start("bedrock", api="bedrock", bedrock=BedrockState(), chunk_interval_s=0.1)
    limited = mocks.start("limited", status=429, retry_after="1")
    model = "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0"
    keys = {"aws_region_name": "us-east-1", "aws_access_key_id": "AKIAMOCKMOCKMOCK0001", "aws_secret_access_key": "mock-secret-access-key"}
    gw = gateway(
        config_of(
            provider("limited", GPT, limited, access_key="sk-1", retry_policy={"fallback_models": [model], "first_token_timeout": "2s"}),
            provider("bedrock", model, bedrock, **keys),
        )
    )

    sent = time.monotonic()
    status, headers, events = http_stream(gw.port, STREAM)

    assert status == 200 and headers["x-arch-llm-provider"] == "bedrock" and headers["content-type"].startswith("text/event-stream")
    assert "".join(texts(events[:-1])) == "[bedrock] you said: hi" and events[-1][1] == "[DONE]"
    assert events[0][0] - sent < 1.0 and events[-1][0] - events[1][0] >= 0.3, "released at its first token, then frame by frame"



#: A hedged chain (hedge after 1s) where one attempt fails while the other is in flight:
#: (first provider, second provider, streamed, what the client gets: status and the provider that answered, the provider whose failure is recorded).
HEDGED_FAILURES = {
    "the hedge answers 429 at once, the first answers later": ({"delay_s": 2}, {"status": 429, "retry_after": "30"}, False, (200, "slow"), ("fast", "429")),
    "the hedge answers 500 at once, the first answers later": ({"delay_s": 2}, {"status": 500}, False, (200, "slow"), ("fast", "500")),
    "the first fails while the hedge is in flight": ({"delay_s": 1.5, "status": 429, "retry_after": "30"}, {"delay_s": 1}, False, (200, "fast"), ("slow", "429")),
    "both fail, the hedge first": ({"delay_s": 2, "status": 503}, {"status": 429, "retry_after": "30"}, False, (503, "slow"), ("fast", "429")),
    "a stalled stream, its hedge answers 429": ({"first_token_delay_s": 2}, {"status": 429, "retry_after": "30"}, True, (200, "slow"), ("fast", "429")),
    "a stalled stream, its hedge answers 529": ({"first_token_delay_s": 2}, {"status": 529}, True, (200, "slow"), ("fast", "529")),
}


@pytest.mark.parametrize("slow, fast, streamed, answered, failed", HEDGED_FAILURES.values(), ids=HEDGED_FAILURES.keys())
def test_a_failed_answer_while_another_attempt_is_in_flight_is_recorded_and_the_race_goes_on(mocks, gateway, slow, fast, streamed, answered, failed):
    slow_mock, fast_mock, gw = two(mocks, gateway, {"retry_on": [429, 500, 503], "hedge_after": "1s"}, slow, fast)

    if streamed:
        status, headers, events = http_stream(gw.port, STREAM)
        assert texts(events)[-1] == "[DONE]" and all(json.loads(data)["id"] == "chatcmpl-slow" for _, data in events if data != "[DONE]")
    else:
        answer = chat(gw.port, HELLO)
        status, headers = answer.status, answer.headers
        assert answer.json()["error" if status >= 400 else "choices"], answer.body

    assert (status, headers.get("x-arch-llm-provider")) == answered
    assert slow_mock.served == 1 and fast_mock.served == 1, "one attempt each: the failure ended its attempt, the race went on"
    provider_name, failed_status = failed
    wait_for(lambda: gw.metric("extproc_upstream_attempts_total", provider=provider_name, code=failed_status) == 1)
    assert chat(gw.port, HELLO).json(), "the gateway is still up and answering"
    assert gw.process.poll() is None, gw.logs()[-2000:]


@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_a_request_whose_answer_is_translated_is_not_hedged_and_its_failures_crash_nothing(mocks, gateway, client):
    """Envoy 1.40 crashes when an upstream filter releases a failed answer while another attempt is in flight
    (docs/envoy-behaviour.md); the upstream level holds every answer it translates, so such a request is not hedged."""
    slow = mocks.start("slow", api="anthropic", delay_s=1.5)
    failing = mocks.start("failing", status=529)
    claude = "anthropic/claude-sonnet-4"
    gw = gateway(
        config_of(
            provider("slow", claude, slow, access_key="sk-ant-0001", retry_policy={"retry_on": [429], "hedge_after": "500ms", "fallback_models": [GPT]}),
            provider("failing", GPT, failing, access_key="sk-fast-0002"),
        )
    )
    message = {"model": claude, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}

    started = time.monotonic()
    answer = chat(gw.port, message, path="/v1/messages") if client == "anthropic" else chat(gw.port, {**HELLO, "model": claude})
    elapsed = time.monotonic() - started

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "slow", answer.body
    assert answer.json()["type" if client == "anthropic" else "object"] == ("message" if client == "anthropic" else "chat.completion")
    assert elapsed >= 1.5 and failing.served == 0, "not hedged at 500 ms: the slow provider's answer was waited for"
    assert gw.metric("extproc_hedged_attempts_total", provider="failing") is None
    assert gw.process.poll() is None


def test_a_chain_that_hedges_still_hedges_a_request_answered_in_its_own_api(mocks, gateway):
    slow = mocks.start("slow", api="anthropic", delay_s=3)
    fast = mocks.start("fast", api="anthropic", status=529)
    claude = "anthropic/claude-sonnet-4"
    gw = gateway(
        config_of(
            provider("slow", claude, slow, access_key="sk-ant-0001", retry_policy={"retry_on": [429], "hedge_after": "500ms"}),
            provider("fast", claude, fast, access_key="sk-ant-0002"),
        )
    )

    answer = chat(gw.port, {"model": claude, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}, path="/v1/messages")

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "slow"
    assert fast.served == 1, "hedged at 500 ms; its 529 ended that attempt and the race went on"
    wait_for(lambda: gw.metric("extproc_upstream_attempts_total", provider="fast", code="529") == 1)
    assert gw.process.poll() is None



def test_a_stream_stalled_after_its_first_token_ends_at_the_idle_timeout_counted_against_its_provider(mocks, gateway):
    stalled = mocks.start("stalled", stall_after_chunks=1)
    gw = gateway(config_of(provider("stalled", GPT, stalled, access_key="sk-1"), stream_idle_timeout="1s"))

    started = time.monotonic()
    try:
        status, _, events = http_stream(gw.port, STREAM, timeout=20)
    except http.client.IncompleteRead:  # the chunked answer was cut: what a client sees
        status, events = 200, None
    elapsed = time.monotonic() - started

    assert status == 200 and 1.0 <= elapsed < 5.0, f"ended {elapsed:.1f}s in, at its stream_idle_timeout (1s), not the listener's timeout"
    assert events is None or "[DONE]" not in [data for _, data in events], "never a clean end"
    wait_for(lambda: gw.metric("extproc_upstream_attempts_total", provider="stalled", code="200", outcome="timeout") == 1)
    assert gw.metric("extproc_upstream_attempts_total", provider="stalled", code="200", outcome="ok") is None
    wait_for(lambda: stalled.cancelled == 1)
