"""`retry_policy.retry_budget` through real Envoy: during an outage, failovers stay a share of the model's requests."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

from extproc.processor.retrybudget import MIN_RETRIES_PER_S, WINDOW_S

from .harness import chat, gateway_config, provider, wait_for

GPT = "openai/gpt-4o"
HELLO = {"model": GPT, "messages": [{"role": "user", "content": "hi"}]}


def test_an_outage_fails_over_only_within_the_budget_and_the_rest_get_the_providers_own_answer(mocks, gateway):
    down = mocks.start("down", status=429)
    up = mocks.start("up")
    config = gateway_config(
        provider("down", GPT, down, access_key="sk-down-0001", retry_policy={"retry_budget": "20%"}),
        provider("up", GPT, up, access_key="sk-up-0002"),
    )
    # Cooldowns off: every request starts on the provider that is down, and wants a failover.
    gw = gateway({**config, "cooldown": {"enabled": False}})

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda _: chat(gw.port, HELLO), range(300)))
    windows = int((time.monotonic() - started) // WINDOW_S)  # a slow machine's run spans more than one window: each adds its floor

    served = [answer for answer in answers if answer.status == 200]
    refused = [answer for answer in answers if answer.status != 200]
    assert down.served == 300, "every request went to the provider that is down first"
    assert up.served == len(served), "a request either failed over or got the first provider's answer"
    # 20% of 300 is 60, and the floor 30 (3 a second over 10 s); requests decided before the retries ahead of them
    # were counted may overshoot it by the requests in flight (32).
    assert 30 <= up.served <= 60 + 32 + windows * MIN_RETRIES_PER_S * WINDOW_S, f"{up.served} of 300 failed over"
    assert all(answer.headers["x-arch-llm-provider"] == "up" for answer in served)
    assert {answer.status for answer in refused} == {429}
    assert all(json.loads(answer.body)["error"]["message"] == "down: mock status 429" for answer in refused), "the provider's own answer, not the gateway's"
    assert all(request.header("x-envoy-max-retries") is None for request in (*down.received, *up.received)), "Envoy's header never reaches a provider"
    wait_for(lambda: gw.metric("extproc_retry_budget_exhausted_total", model=GPT) == len(refused))


def test_without_a_budget_every_request_of_an_outage_fails_over(mocks, gateway):
    down = mocks.start("down", status=429)
    up = mocks.start("up")
    config = gateway_config(provider("down", GPT, down, access_key="sk-down-0001"), provider("up", GPT, up, access_key="sk-up-0002"))
    gw = gateway({**config, "cooldown": {"enabled": False}})

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda _: chat(gw.port, HELLO), range(300)))

    assert {answer.status for answer in answers} == {200} and up.served == 300
