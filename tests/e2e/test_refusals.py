"""A provider's refusal another model may answer, through real Envoy: a prompt too long, a content policy.

The upstream level reads the 400, turns it into an internal redirect, and the
router level sends the request again to the fallback model, with what the
client sent (never the first provider's key, which the request's headers then hold).
"""

import json

import anthropic
import openai

from .harness import chat, gateway_config, provider, request, wait_for

SMALL, LARGE, CLAUDE = "openai/gpt-4o-mini", "openai/gpt-4.1", "anthropic/claude-haiku-4"
HELLO = {"model": SMALL, "messages": [{"role": "user", "content": "a long story"}]}
OPENAI_TOO_LONG = {
    "error": {
        "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 200000 tokens.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded",
    }
}  # fmt: skip
AZURE_FILTERED = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "type": None, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {"hate": {"filtered": True, "severity": "high"}}},
    }
}  # fmt: skip
ANTHROPIC_TOO_LONG = {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}


def refusing(mocks, gateway, body: dict, policy: dict, api: str = "openai", model: str = SMALL):
    small = mocks.start("small", api=api, status=400, error_answer=json.dumps(body).encode())
    large = mocks.start("large")
    gw = gateway(
        gateway_config(
            provider("small", model, small, access_key="sk-small-0001", retry_policy=policy),
            provider("large", LARGE, large, access_key="sk-large-0002"),
            access_log=True,
        )
    )
    return small, large, gw


def test_a_context_length_400_goes_to_the_fallback_model_with_the_clients_request_and_only_its_own_key(mocks, gateway):
    small, large, gw = refusing(mocks, gateway, OPENAI_TOO_LONG, {"context_window_fallbacks": [LARGE]})

    answer = chat(gw.port, HELLO, {"authorization": "Bearer the-clients-own", "x-trace": "t-1"})

    assert (answer.status, answer.headers["x-arch-llm-provider"]) == (200, "large")
    assert small.served == 1 and large.served == 1
    sent = large.received[0]
    assert sent.path == "/v1/chat/completions", "the client's path: no trace of the redirect"
    assert sent.header("authorization") == "Bearer sk-large-0002", "its own key: not the refusing provider's, not the client's"
    assert "sk-small" not in json.dumps(sent.headers) and sent.header("x-envoy-original-url") is None
    assert sent.header("x-trace") == "t-1", "the client's other headers go on"
    assert sent.json()["model"] == "gpt-4.1" and sent.json()["messages"] == HELLO["messages"]
    wait_for(lambda: gw.metric("extproc_refusal_fallbacks_total", model=SMALL, fallback=LARGE, reason="context_window") == 1)
    wait_for(lambda: gw.metric("extproc_upstream_attempts_total", provider="small", code="400", outcome="context_window") == 1)
    wait_for(lambda: gw.metric("extproc_requests_total", listener="llm", model=LARGE, provider="large", status_class="2xx") == 1)
    assert gw.metric("extproc_requests_total", listener="llm", model=SMALL, provider="small", status_class="3xx") is None, "one request, counted once"
    assert gw.metric("extproc_upstream_attempts_total", provider="small", code="307", outcome="ok") is None
    with openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="unused", max_retries=0) as client:
        completion = client.chat.completions.create(model=SMALL, messages=HELLO["messages"])
    assert "[large]" in completion.choices[0].message.content and small.served == 2 and large.served == 2
    gw.stop()
    lines = [json.loads(line) for line in gw.process_output.splitlines() if line.startswith("{")]
    assert [(line["status"], line["provider"], line["path"]) for line in lines] == [(200, "large", "/v1/chat/completions")] * 2, "a line per request: the final pass's"


def test_an_anthropic_prompt_too_long_goes_to_an_openai_fallback_and_the_anthropic_client_gets_its_own_format(mocks, gateway):
    small, large, gw = refusing(mocks, gateway, ANTHROPIC_TOO_LONG, {"context_window_fallbacks": [LARGE]}, api="anthropic", model=CLAUDE)

    with anthropic.Anthropic(base_url=f"http://127.0.0.1:{gw.port}", api_key="the-clients-own", max_retries=0) as client:
        message = client.messages.create(model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "a long story"}])

    assert message.type == "message" and "[large]" in message.content[0].text
    assert small.received[0].header("x-api-key") == "sk-small-0001"
    assert large.received[0].header("authorization") == "Bearer sk-large-0002" and large.received[0].header("x-api-key") is None
    assert large.received[0].path == "/v1/chat/completions", "translated for the fallback's API"


def test_a_content_policy_refusal_goes_to_its_own_fallbacks_and_is_returned_as_sent_without_them(mocks, gateway):
    _, large, gw = refusing(mocks, gateway, AZURE_FILTERED, {"content_policy_fallbacks": [LARGE]})
    answer = chat(gw.port, HELLO)
    assert (answer.status, answer.headers["x-arch-llm-provider"], large.served) == (200, "large", 1)
    wait_for(lambda: gw.metric("extproc_refusal_fallbacks_total", model=SMALL, fallback=LARGE, reason="content_policy") == 1)


def test_a_refusal_without_fallbacks_for_its_reason_reaches_the_client_as_sent(mocks, gateway):
    small, large, gw = refusing(mocks, gateway, AZURE_FILTERED, {"context_window_fallbacks": [LARGE]})
    answer = chat(gw.port, HELLO)
    assert answer.status == 400 and answer.json() == AZURE_FILTERED, "a policy decision is the user's: never routed around silently"
    assert large.served == 0 and small.served == 1


def test_a_providers_own_redirect_is_never_followed_to_another_host(mocks, gateway):
    elsewhere = mocks.start("elsewhere")
    location = f"http://127.0.0.1:{elsewhere.port}/v1/chat/completions"
    redirecting = mocks.start("redirecting", status=307, extra_headers=(("location", location),), error_answer=b"{}")
    large = mocks.start("large")
    gw = gateway(
        gateway_config(
            provider("redirecting", SMALL, redirecting, access_key="sk-r-0001", retry_policy={"context_window_fallbacks": [LARGE]}),
            provider("large", LARGE, large, access_key="sk-large-0002"),
        )
    )

    answer = request(gw.port, "POST", "/v1/chat/completions", json.dumps(HELLO).encode(), {"content-type": "application/json"})

    assert answer.status == 502 and answer.json()["error"]["code"] == "provider_redirect"
    assert elsewhere.served == 0 and large.served == 0
