"""Rate-limited providers are remembered (Retry-After) and routed around; metrics and health show it.

The contract these tests hold the gateway to: once a client has the answer of a
request during which a provider failed, the gateway already knows it (no
waiting for a log to catch up before the next request).
"""

import email.utils
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .harness import chat, free_port, gateway_config, provider, wait_for

GPT4 = "openai/gpt-4"
HELLO = {"model": GPT4, "messages": [{"role": "user", "content": "hi"}]}


def cooling_seconds(gw, name: str) -> float:
    return gw.metric("extproc_provider_cooldown_remaining_seconds", provider=name) or 0.0


def test_a_429_with_retry_after_sends_the_next_requests_straight_to_the_secondary(mocks, gateway):
    primary = mocks.start("primary", status=429, retry_after="2")
    secondary = mocks.start("secondary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary)))

    assert chat(gw.port, HELLO).status == 200
    assert cooling_seconds(gw, "primary") > 0
    for _ in range(3):
        answer = chat(gw.port, HELLO)
        assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "secondary"
    assert len(primary.received) == 1, "a cooling provider gets no request"
    assert len(secondary.received) == 4
    assert secondary.received[-1].header("x-envoy-attempt-count") == "1", "no wasted attempt on the primary"

    wait_for(lambda: cooling_seconds(gw, "primary") == 0, timeout=5)
    primary.status = 200
    answer = chat(gw.port, HELLO)
    assert answer.headers["x-arch-llm-provider"] == "primary", "after the cooldown the primary is tried first again"
    assert len(primary.received) == 2


def test_all_providers_cooling_answers_429_at_once_without_calling_any(mocks, gateway):
    primary = mocks.start("primary", status=429, retry_after="30")
    secondary = mocks.start("secondary", status=429, retry_after="20")
    gw = gateway(gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary)))

    assert chat(gw.port, HELLO).status == 429
    answer = chat(gw.port, HELLO)

    assert answer.status == 429
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "all_providers_cooling_down")
    assert GPT4 in error["message"]
    assert 18 <= int(answer.headers["retry-after"]) <= 20, "the soonest provider's remaining cooldown"
    assert "x-arch-llm-provider" not in answer.headers
    assert (len(primary.received), len(secondary.received)) == (1, 1)
    assert gw.metric("extproc_rejected_requests_total", reason="all_providers_cooling_down") == 1
    # Each attempt was recorded from its answer's headers; its log entry, when it comes, is not counted again.
    wait_for(lambda: gw.metric("extproc_requests_total", listener="llm", model=GPT4, provider="secondary", status_class="4xx"))
    for name in ("primary", "secondary"):
        assert gw.metric("extproc_upstream_attempts_total", provider=name, code="429", outcome="rate_limited") == 1
        assert gw.metric("extproc_upstream_attempt_duration_seconds_count", provider=name) == 1, "its duration came with its entry"


def test_try_anyway_listener_still_calls_the_providers(mocks, gateway):
    primary = mocks.start("primary", status=429, retry_after="30")
    gw = gateway(gateway_config(provider("primary", GPT4, primary), on_all_cooling="try_anyway"))

    assert chat(gw.port, HELLO).status == 429
    # A chain of one attempt: its 429 is recorded by the failed-answer watch before the client holds it (docs/cooldowns.md).
    wait_for(lambda: cooling_seconds(gw, "primary") > 0)
    answer = chat(gw.port, HELLO)

    assert answer.status == 429 and answer.json()["error"]["message"] == "primary: mock status 429"
    assert len(primary.received) == 2


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry_after": lambda: email.utils.formatdate(time.time() + 40, usegmt=True)}, 40),
        ({"extra_headers": (("retry-after-ms", "15000"),)}, 15),
        ({}, 7),  # no header: the configured default_cooldown
        ({"retry_after": "600"}, 45),  # capped by max_cooldown
    ],
    ids=["http-date", "retry-after-ms", "absent", "capped"],
)
def test_retry_after_forms(mocks, gateway, headers, expected):
    headers = {key: value() if callable(value) else value for key, value in headers.items()}
    primary = mocks.start("primary", status=429, **headers)
    secondary = mocks.start("secondary")
    config = gateway_config(provider("primary", GPT4, primary), provider("secondary", GPT4, secondary))
    config["cooldown"] = {"default_cooldown": "7s", "max_cooldown": "45s"}
    gw = gateway(config)

    assert chat(gw.port, HELLO).status == 200
    remaining = cooling_seconds(gw, "primary")

    assert expected - 3 <= remaining <= expected


def test_connect_failures_cool_a_provider_down_after_the_threshold(mocks, gateway):
    secondary = mocks.start("secondary")
    config = gateway_config(
        provider("primary", GPT4, port=free_port(), retry_policy={"retry_on": [429, "connect-failure"]}),
        provider("secondary", GPT4, secondary),
    )
    config["cooldown"] = {"failure_threshold": 2, "default_cooldown": "30s"}
    gw = gateway(config)

    assert chat(gw.port, HELLO).status == 200
    assert cooling_seconds(gw, "primary") == 0, "one failure is below the threshold"
    assert chat(gw.port, HELLO).status == 200
    assert cooling_seconds(gw, "primary") > 0
    assert gw.metric("extproc_upstream_attempts_total", provider="primary", code="none", outcome="connect_failure") == 2


def test_metrics_and_health_after_a_failover(mocks, gateway):
    primary = mocks.start("primary", status=429, retry_after="30")
    secondary = mocks.start("secondary")
    gw = gateway(gateway_config(provider("primary", GPT4, primary, access_key="sk-secret-primary"), provider("secondary", GPT4, secondary)))

    assert chat(gw.port, HELLO).status == 200
    assert gw.metric("extproc_failovers_total", from_provider="primary", to_provider="secondary", reason="rate_limited") == 1, "known with the answer"
    assert gw.metric("extproc_provider_state", provider="primary", model=GPT4, state="cooling_down") == 1
    # Request totals (and the answering attempt) come with the request's entry, batched for up to 20 ms.
    wait_for(lambda: gw.metric("extproc_requests_total", listener="llm", model=GPT4, provider="secondary", status_class="2xx"))

    assert gw.metric("extproc_upstream_attempts_total", provider="primary", code="429", outcome="rate_limited") == 1
    assert gw.metric("extproc_upstream_attempts_total", provider="secondary", code="200", outcome="ok") == 1
    assert gw.metric("extproc_failovers_total", from_provider="primary", to_provider="secondary", reason="rate_limited") == 1
    assert gw.metric("extproc_upstream_attempts_total", provider="primary", code="429", outcome="rate_limited") == 1
    assert gw.metric("extproc_provider_state", provider="primary", model=GPT4, state="cooling_down") == 1
    assert gw.metric("extproc_provider_state", provider="secondary", model=GPT4, state="enabled") == 1
    assert gw.metric("extproc_provider_state", provider="primary", model=GPT4, state="enabled") == 0, "every state has its series, 0 or 1"
    assert gw.metric("extproc_upstream_attempt_duration_seconds_count", provider="secondary") == 1
    assert gw.metric("extproc_processing_seconds_count", phase="router_request_headers") >= 1
    assert gw.metric("extproc_processing_seconds_count", phase="router_request_body") == 0, "Envoy found the model: no body message"
    assert gw.metric("extproc_processing_seconds_count", phase="upstream_request_headers") == 1, "only the retry needs the upstream level"
    exposition = gw.get("/metrics").body.decode()
    samples = "\n".join(line for line in exposition.splitlines() if not line.startswith("#"))  # help texts are prose
    assert "sk-secret-primary" not in exposition and "hi" not in samples
    assert gw.get("/readyz").status == 200
    assert gw.get("/healthz").status == 200


def test_a_client_hanging_up_does_not_count_against_the_provider(mocks, gateway):
    import socket

    slow = mocks.start("slow", delay_s=1.0)
    config = gateway_config(provider("slow", GPT4, slow))
    config["cooldown"] = {"failure_threshold": 1}
    gw = gateway(config)
    body = b'{"model": "openai/gpt-4"}'
    with socket.create_connection(("127.0.0.1", gw.port)) as client:
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: slow.received)
    wait_for(lambda: gw.metric("extproc_upstream_attempts_total", provider="slow", code="none", outcome="cancelled"))
    assert cooling_seconds(gw, "slow") == 0
    assert chat(gw.port, HELLO).status == 200


def test_after_a_cooldown_one_trial_request_waits_on_a_hanging_provider_not_everyone(mocks, gateway):
    """Half-open: when a cooldown ends, one request finds out; the rest keep going to the next provider meanwhile."""
    import threading

    hanging = mocks.start("hanging", delay_s=30)
    backup = mocks.start("backup")
    policy = {"retry_on": [429, "reset"], "per_try_timeout": "1s"}
    gw = gateway(
        {
            **gateway_config(provider("hanging", GPT4, hanging, retry_policy=policy), provider("backup", GPT4, backup)),
            "cooldown": {"failure_threshold": 1, "default_cooldown": "2s"},
        }
    )
    assert chat(gw.port, HELLO).headers["x-arch-llm-provider"] == "backup"
    wait_for(lambda: cooling_seconds(gw, "hanging") > 0)
    wait_for(lambda: cooling_seconds(gw, "hanging") == 0, timeout=5)
    tried = len(hanging.received)

    times: list[float] = []

    def ask() -> None:
        started = time.monotonic()
        answer = chat(gw.port, HELLO)
        assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "backup"
        times.append(time.monotonic() - started)

    clients = [threading.Thread(target=ask) for _ in range(16)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(10)

    assert len(times) == 16
    assert len(hanging.received) - tried == 1, "one trial, not every open request"
    slow = [seconds for seconds in times if seconds >= 0.9]
    assert len(slow) == 1, f"only the trial waits out the per-try timeout: {sorted(times)}"
    assert cooling_seconds(gw, "hanging") > 0, "the failed trial cooled it again at once"


def test_a_waiting_listener_holds_a_request_until_its_provider_is_back_instead_of_a_429(mocks, gateway):
    primary = mocks.start("primary", status=429, retry_after="1")
    gw = gateway(gateway_config(provider("primary", GPT4, primary), on_all_cooling="wait", max_wait="2s", max_waiting=1))

    assert chat(gw.port, HELLO).status == 429, "the provider's own 429 (a chain of one: nowhere to fail over)"
    primary.status, primary.retry_after = 200, None
    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: chat(gw.port, HELLO), range(3)))
    waited = time.monotonic() - started

    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200, 429, 429], "max_waiting 1: one request waits, the others get the 429 at once"
    served = next(answer for answer in answers if answer.status == 200)
    assert served.headers["x-arch-llm-provider"] == "primary" and 0.5 <= waited <= 3, waited
    refused = [answer for answer in answers if answer.status == 429]
    assert all(answer.json()["error"]["code"] == "all_providers_cooling_down" and answer.headers["retry-after"] == "1" for answer in refused)
    assert len(primary.received) == 2, "the waiting request reached the provider once it was back; the refused ones never"


def test_a_waiting_listener_refuses_at_once_a_cooldown_longer_than_max_wait(mocks, gateway):
    primary = mocks.start("primary", status=429, retry_after="30")
    gw = gateway(gateway_config(provider("primary", GPT4, primary), on_all_cooling="wait", max_wait="2s"))

    assert chat(gw.port, HELLO).status == 429
    started = time.monotonic()
    answer = chat(gw.port, HELLO)

    assert answer.status == 429 and time.monotonic() - started < 0.5, "30 s is past max_wait: no point holding it"
    assert 28 <= int(answer.headers["retry-after"]) <= 30
    assert len(primary.received) == 1
