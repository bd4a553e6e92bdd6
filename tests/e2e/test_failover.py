"""Routing by model and failover across providers, through real Envoy and the real sidecar."""

import itertools
import json
import time

import pytest

from .harness import chat, chunked, free_port, gateway_config, http_stream, provider, request

GPT4 = "openai/gpt-4"
HELLO = {"model": GPT4, "messages": [{"role": "user", "content": "hi"}]}


def test_primary_429_fails_over_to_secondary(mocks, gateway):
    primary = mocks.start("primary", status=429, retry_after="7")
    secondary = mocks.start("secondary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary)))

    answer = chat(gw.port, HELLO)

    assert answer.status == 200
    assert answer.json()["choices"][0]["message"]["content"] == "[secondary] you said: hi"
    assert answer.headers["x-arch-llm-provider"] == "secondary"
    assert len(primary.received) == 1
    assert len(secondary.received) == 1
    assert primary.received[0].header("x-envoy-attempt-count") == "1"
    assert secondary.received[0].header("x-envoy-attempt-count") == "2"


def test_secondary_receives_the_request_as_sent_with_its_own_credentials(mocks, gateway):
    primary = mocks.start("primary", status=429)
    secondary = mocks.start("secondary")
    gw = gateway(
        gateway_config(
            provider("primary", GPT4, primary, access_key="sk-primary-0001", headers={"x-tenant": "primary-tenant", "x-org": "primary-org"}),
            provider(
                "secondary", GPT4, secondary, access_key="sk-secondary-0002", base_url=f"http://127.0.0.1:{secondary.port}/proxy/",
                headers={"x-org": "secondary-org", "cookie": "provider-session=2"},
            ),
        )
    )
    # Odd spacing, key order, unicode and a nested "model" key: only the top-level model may change.
    body = '{ "messages" :[{"role":"user","content":"h\\u00e9llo ✓","model":"inner"}],\n  "model":   "openai/gpt-4", "temperature":0.25,"user":"u-1" }'
    headers = {
        "content-type": "application/json",
        "authorization": "Bearer client-own-key",
        "x-api-key": "client-other-key",
        "x-trace-id": "trace-123",
        "x-custom": "keep me",
        "openai-organization": "org-client",
        "x-arch-llm-provider": "secondary",
        "x-arch-internal": "forged",
        "cookie": "gateway-session=secret",
        "proxy-authorization": "Basic cHJveHk6cGFzcw==",
        "forwarded": "for=10.1.2.3;by=10.0.0.1",
    }
    path = "/v1/chat/completions?api-version=2024-06-01&x=1"

    answer = request(gw.port, "POST", path, body.encode(), headers)

    assert answer.status == 200, answer.body
    first, second = primary.received[0], secondary.received[0]
    # The forged x-arch-llm-provider did not bypass model resolution: primary was tried first.
    assert first.header("authorization") == "Bearer sk-primary-0001"
    assert first.path == path
    assert first.json()["model"] == "gpt-4"
    assert first.header("x-tenant") == "primary-tenant"
    # The secondary: its own key, its prefix once, the path and query unchanged.
    assert second.path == "/proxy" + path
    assert second.header_values("authorization") == ["Bearer sk-secondary-0002"]
    assert second.header("x-api-key") is None
    assert second.header("x-org") == "secondary-org"
    assert second.header("x-tenant") is None, "a header only the primary sets must not leak into the retry"
    for name in ("x-trace-id", "x-custom", "openai-organization", "content-type"):
        assert second.header(name) == headers[name]
    for seen in (first, second):
        assert [name for name, _ in seen.headers if name.startswith("x-arch-")] == [], "the gateway's routing headers are its own"
        assert seen.header("proxy-authorization") is None and seen.header("forwarded") is None
    assert first.header("cookie") is None, "the client's cookies are for the gateway's hop only"
    assert second.header_values("cookie") == ["provider-session=2"], "a provider's own headers: may still set one"
    assert second.body == body.replace('"openai/gpt-4"', '"gpt-4"').encode()
    assert int(second.header("content-length")) == len(second.body)
    assert "sk-primary-0001" not in json.dumps(second.headers)


def test_passthrough_auth_forwards_the_clients_original_credentials(mocks, gateway):
    primary = mocks.start("primary", status=429)
    secondary = mocks.start("secondary")
    gw = gateway(
        gateway_config(
            provider("primary", GPT4, primary, access_key="sk-primary-0001"),
            provider("secondary", GPT4, secondary, passthrough_auth=True),
        )
    )

    answer = chat(gw.port, HELLO, {"authorization": "Bearer client-own-key"})

    assert answer.status == 200
    assert primary.received[0].header("authorization") == "Bearer sk-primary-0001"
    assert secondary.received[0].header_values("authorization") == ["Bearer client-own-key"]


def test_three_providers_first_two_429_third_answers(mocks, gateway):
    first = mocks.start("first", status=429)
    second = mocks.start("second", status=429)
    third = mocks.start("third")
    gw = gateway(gateway_config(provider("first", GPT4, first), provider("second", GPT4, second), provider("third", GPT4, third)))

    answer = chat(gw.port, HELLO)

    assert answer.status == 200
    assert answer.headers["x-arch-llm-provider"] == "third"
    assert [len(first.received), len(second.received), len(third.received)] == [1, 1, 1]
    attempts = [mock.received[0].header("x-envoy-attempt-count") for mock in (first, second, third)]
    assert attempts == ["1", "2", "3"]


def test_max_attempts_two_returns_the_second_providers_429(mocks, gateway):
    first = mocks.start("first", status=429, retry_after="3")
    second = mocks.start("second", status=429, retry_after="11")
    third = mocks.start("third")
    gw = gateway(
        gateway_config(
            provider("first", GPT4, first, retry_policy={"retry_on": [429], "max_attempts": 2}),
            provider("second", GPT4, second),
            provider("third", GPT4, third),
        )
    )

    answer = chat(gw.port, HELLO)

    assert answer.status == 429
    assert answer.headers["retry-after"] == "11"
    assert answer.headers["x-arch-llm-provider"] == "second"
    assert answer.json()["error"]["message"] == "second: mock status 429"
    assert len(third.received) == 0


def test_fallback_model_provider_gets_its_own_model_name(mocks, gateway):
    gpt4 = mocks.start("gpt4", status=429)
    mini = mocks.start("mini")
    gw = gateway(
        gateway_config(
            provider("gpt4", GPT4, gpt4, retry_policy={"retry_on": [429], "fallback_models": ["openai/gpt-4o-mini"]}),
            provider("mini", "openai/gpt-4o-mini", mini),
        )
    )

    answer = chat(gw.port, HELLO)

    assert answer.status == 200
    assert answer.headers["x-arch-llm-provider"] == "mini"
    assert gpt4.received[0].json()["model"] == "gpt-4"
    assert mini.received[0].json()["model"] == "gpt-4o-mini"


def test_connect_failure_fails_over(mocks, gateway):
    secondary = mocks.start("secondary")
    gw = gateway(
        gateway_config(
            provider("primary", GPT4, port=free_port(), retry_policy={"retry_on": [429, "connect-failure"]}),
            provider("secondary", GPT4, secondary),
        )
    )

    answer = chat(gw.port, HELLO)

    assert answer.status == 200
    assert answer.headers["x-arch-llm-provider"] == "secondary"
    assert len(secondary.received) == 1


def test_sse_after_failover_streams_chunk_by_chunk(mocks, gateway):
    primary = mocks.start("primary", status=429)
    secondary = mocks.start("secondary", chunks=5, chunk_interval_s=0.3)
    gw = gateway(gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary)))

    status, headers, arrivals = http_stream(gw.port, {**HELLO, "stream": True})

    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert headers["x-arch-llm-provider"] == "secondary"
    events = [data for _, data in arrivals]
    assert len(events) == 6 and events[-1] == "[DONE]"
    assert json.loads(events[0])["object"] == "chat.completion.chunk"
    # Five chunks 0.3 s apart: the first arrives long before the last, not all at the end.
    first_at, last_at = arrivals[0][0], arrivals[-1][0]
    assert last_at - first_at > 1.0
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    assert min(gaps[:4]) > 0.15


def test_default_provider_serves_a_request_without_model(mocks, gateway):
    main = mocks.start("main")
    gw = gateway(gateway_config(provider("main", GPT4, main, default=True)))

    answer = chat(gw.port, {"messages": [{"role": "user", "content": "hi"}]})

    assert answer.status == 200
    assert main.received[0].json() == {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


def test_all_providers_failing_returns_the_last_status_and_body(mocks, gateway):
    primary = mocks.start("primary", status=429, retry_after="5")
    secondary = mocks.start("secondary", status=503, retry_after="9")
    gw = gateway(
        gateway_config(
            provider("primary", GPT4, primary, retry_policy={"retry_on": [429, 503]}),
            provider("secondary", GPT4, secondary),
        )
    )

    started = time.monotonic()
    answer = chat(gw.port, HELLO)

    assert answer.status == 503
    assert answer.headers["retry-after"] == "9"
    assert answer.json()["error"]["message"] == "secondary: mock status 503"
    assert time.monotonic() - started < 2, "failing over must not wait for Retry-After"


def test_a_slow_provider_past_per_try_timeout_fails_over(mocks, gateway):
    slow = mocks.start("slow", delay_s=3)
    fast = mocks.start("fast")
    gw = gateway(
        gateway_config(
            provider("slow", GPT4, slow, retry_policy={"retry_on": [429, "reset"], "per_try_timeout": "500ms"}),
            provider("fast", GPT4, fast),
        )
    )

    started = time.monotonic()
    answer = chat(gw.port, HELLO)

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "fast"
    assert time.monotonic() - started < 2.5
    assert len(slow.received) == 1 and len(fast.received) == 1


def test_per_try_timeout_holds_on_the_only_provider_and_on_a_chain_started_at_its_last(mocks, gateway):
    limited = mocks.start("limited", status=429, retry_after="60")
    hanging = mocks.start("hanging", delay_s=10)
    policy = {"retry_on": [429, "reset"], "per_try_timeout": "1s"}
    gw = gateway(
        gateway_config(
            provider("alone", "openai/solo", hanging, retry_policy=policy),
            provider("limited", GPT4, limited, retry_policy=policy),
            provider("hanging", GPT4, hanging),
            timeout="30s",
        )
    )

    for model in ("openai/solo", GPT4, GPT4):  # the last: limited cools down, so the chain starts at its last provider
        started = time.monotonic()
        answer = chat(gw.port, {**HELLO, "model": model})
        elapsed = time.monotonic() - started
        assert answer.status == 504 and elapsed < 3.5, f"{model}: {answer.status} after {elapsed:.1f}s (per_try_timeout 1s, listener timeout 30s)"
    assert len(limited.received) == 1 and len(hanging.received) == 3


def test_a_chunked_request_body_fails_over_intact(mocks, gateway):
    primary = mocks.start("primary", status=429)
    secondary = mocks.start("secondary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary)))
    body = json.dumps({**HELLO, "padding": "x" * 5000}).encode()
    answer = chunked(gw.port, "/v1/chat/completions", body, 100, {"content-type": "application/json"}, timeout=10)

    assert answer.status == 200
    expected = body.replace(b'"openai/gpt-4"', b'"gpt-4"')
    for mock in (primary, secondary):
        assert mock.received[0].body == expected
        assert mock.received[0].header("transfer-encoding") is None
        assert mock.received[0].header("content-length") == str(len(expected))


def test_a_bare_model_name_and_an_sdk_style_base_url(mocks, gateway):
    main = mocks.start("main")
    gw = gateway(gateway_config(provider("main", "openai/gpt-4o-mini", main, base_url=f"http://127.0.0.1:{main.port}/openai/v1")))

    body = b'{"messages": [] ,\n "model" :"gpt-4o-mini"}'  # already the provider's model: passed on untouched

    answer = request(gw.port, "POST", "/v1/chat/completions?x=1", body, {"content-type": "application/json"})

    assert answer.status == 200
    assert main.received[0].path == "/openai/v1/chat/completions?x=1"
    assert main.received[0].body == body


def test_a_client_cannot_switch_failover_off_with_envoy_headers(mocks, gateway):
    """Envoy's own guarantee, checked here because the failover promise rests on it."""
    primary = mocks.start("primary", status=429)
    secondary = mocks.start("secondary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary)))

    answer = chat(gw.port, HELLO, {"x-envoy-max-retries": "0", "x-envoy-retry-on": "5xx", "x-envoy-upstream-rq-timeout-ms": "1"})

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "secondary"
    for name in ("x-envoy-max-retries", "x-envoy-retry-on", "x-envoy-upstream-rq-timeout-ms"):
        assert secondary.received[0].header(name) is None


def test_a_body_near_the_default_limit_survives_failover(mocks, gateway):
    """9.5 MiB of the default 10 MiB: past gRPC's default 4 MiB message size, within the retry buffer."""
    primary = mocks.start("primary", status=429)
    secondary = mocks.start("secondary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary)))
    big = {**HELLO, "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024 + 512 * 1024)}]}

    answer = chat(gw.port, big)

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "secondary"
    assert len(secondary.received[0].body) == len(primary.received[0].body) > 9 * 1024 * 1024
    assert secondary.received[0].json()["messages"] == big["messages"]
    assert primary.received[0].json()["model"] == secondary.received[0].json()["model"] == "gpt-4"
    # Large: read in the sidecar's bulk lane (its own socket and threads), not on the event loop.
    assert gw.metric("extproc_processing_seconds_count", phase="bulk_request_body") == 1
    assert gw.metric("extproc_processing_seconds_count", phase="router_request_body") in (None, 0)
    assert chat(gw.port, HELLO).status == 200 and gw.metric("extproc_processing_seconds_count", phase="router_request_headers") == 1
    assert gw.metric("extproc_processing_seconds_count", phase="router_request_body") == 0, "a small body's model is found by Envoy"


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (b', \n  "model"  :  "openai/gpt-4" , "temperature": 0.5}', b', \n  "model"  :  "gpt-4" , "temperature": 0.5}'),  # after 9 MiB, odd spacing
        (b', "temperature": 0.5}', None),  # no model: the default provider's, inserted after the brace
    ],
)
def test_a_large_body_has_its_model_patched_by_envoy_and_nothing_else_changed(mocks, gateway, tail, expected):
    """The bulk lane sends back where the model is, not the body; Envoy (a Lua filter) patches those bytes."""
    primary = mocks.start("primary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary, default=True)))
    head = b'{"messages": [{"role": "user", "content": "' + b"y" * (9 * 1024 * 1024) + b'"}]'

    answer = request(gw.port, "POST", "/v1/chat/completions", head + tail, {"content-type": "application/json"})

    assert answer.status == 200, answer.body
    received = primary.received[0]
    if expected is not None:
        assert received.body == head + expected
    else:
        assert received.body == b'{"model":"gpt-4",' + head[1:] + tail
    assert int(received.header("content-length")) == len(received.body)
    assert gw.metric("extproc_processing_seconds_count", phase="bulk_request_body") == 1


def test_the_access_log_says_which_provider_answered_after_how_many_attempts(mocks, gateway):
    primary = mocks.start("primary", status=429)
    secondary = mocks.start("secondary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary, access_key="sk-must-not-be-logged"), provider("secondary", GPT4, secondary), access_log=True))

    assert chat(gw.port, HELLO, {"authorization": "Bearer client-secret"}).status == 200
    gw.stop()

    lines = [json.loads(line) for line in gw.process_output.splitlines() if line.startswith("{")]
    entry = next(line for line in lines if line["path"].startswith("/v1/chat/completions"))
    assert (entry["model"], entry["provider"], entry["status"], entry["attempts"]) == (GPT4, "secondary", 200, 2)
    assert "sk-must-not-be-logged" not in gw.process_output and "client-secret" not in gw.process_output


def test_an_audio_upload_is_routed_by_its_form_model_and_fails_over_byte_for_byte(mocks, gateway):
    primary = mocks.start("primary", status=429)
    secondary = mocks.start("secondary")
    gw = gateway(gateway_config(provider("primary", "openai/whisper-1", primary), provider("secondary", "openai/whisper-1", secondary)))
    audio = bytes(range(256)) * 2048
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n' + audio + b"\r\n"
        b'--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--b0undary--\r\n'
    )
    content_type = "multipart/form-data; boundary=b0undary"

    answer = request(gw.port, "POST", "/v1/audio/transcriptions", body, {"content-type": content_type})

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "secondary"
    for mock in (primary, secondary):
        received = mock.received[0]
        assert (received.path, received.header("content-type"), received.body) == ("/v1/audio/transcriptions", content_type, body)


def test_plano_keys_an_alias_and_an_http_host_reach_the_provider(mocks, gateway):
    local = mocks.start("local")
    config = {
        "listeners": [{"type": "model", "name": "llm", "address": "127.0.0.1", "port": 0}],
        "llm_providers": [{"model": "local/qwen", "base_url": f"http://127.0.0.1:{local.port}", "provider_interface": "openai", "http_host": "models.internal", "access_key": "sk-local"}],
        "model_aliases": {"fast": {"target": "local/qwen"}},
    }
    gw = gateway(config)

    answer = chat(gw.port, {"model": "fast", "messages": [{"role": "user", "content": "hi"}]})

    assert answer.status == 200
    received = local.received[0]
    assert received.header("host") == "models.internal"
    assert received.header("authorization") == "Bearer sk-local"
    assert received.json()["model"] == "qwen", "the alias resolved to local/qwen, sent as the provider's name"
