"""`max_input_tokens` and `context_window_fallbacks` through real Envoy: a prompt goes only where it fits, uncalled elsewhere."""

import openai
import pytest

from .harness import chat, gateway_config, provider, wait_for

SMALL, LARGE = "openai/gpt-4o-mini", "openai/gpt-4.1"


def ask(words: int) -> dict:
    return {"model": SMALL, "messages": [{"role": "user", "content": "word " * words}]}


@pytest.fixture
def windows(mocks, gateway):
    short_a = mocks.start("short-a")
    short_b = mocks.start("short-b")
    long = mocks.start("long")
    gw = gateway(
        gateway_config(
            provider("short-a", SMALL, short_a, access_key="sk-a-0001", max_input_tokens=2000, retry_policy={"context_window_fallbacks": [LARGE]}),
            provider("short-b", SMALL, short_b, access_key="sk-b-0002", max_input_tokens=2000),
            provider("long", LARGE, long, access_key="sk-long-0003", max_input_tokens=1000000),
        )
    )
    return short_a, short_b, long, gw


def test_a_prompt_too_long_for_its_models_providers_goes_to_the_fallback_and_they_are_never_called(windows):
    short_a, short_b, long, gw = windows

    short = chat(gw.port, ask(100))
    too_long = chat(gw.port, ask(4000))  # 20 KB: about 5,000 tokens by bytes / 4

    assert (short.status, short.headers["x-arch-llm-provider"]) == (200, "short-a")
    assert (too_long.status, too_long.headers["x-arch-llm-provider"]) == (200, "long")
    assert short_a.served == 1 and short_b.served == 0, "the short providers never saw the long prompt"
    assert long.received[0].header("authorization") == "Bearer sk-long-0003"
    assert long.received[0].json()["model"] == "gpt-4.1" and long.received[0].json()["messages"] == ask(4000)["messages"], "the whole prompt, as the fallback model"
    wait_for(lambda: gw.metric("extproc_context_window_fallbacks_total", model=SMALL, fallback=LARGE) == 1)


def test_a_prompt_too_long_for_every_model_is_a_context_length_error_for_the_sdk(windows):
    _, _, long, gw = windows
    with openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="unused", max_retries=0) as client, pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=SMALL, messages=ask(1_000_000)["messages"])  # 5 MB: over every window
    assert raised.value.code == "context_length_exceeded" and "about 1250" in raised.value.message
    assert long.served == 0
