"""Opt-in: the full stack (`extproc up`) against a real OpenAI-compatible provider, and Anthropic's.

Run with `make e2e-smoke`. Needs OPENAI_API_KEY; OPENAI_BASE_URL (as the
OpenAI SDK takes it, e.g. https://api.openai.com/v1) and OPENAI_MODEL are
optional. The cross-vendor tests need ANTHROPIC_API_KEY (ANTHROPIC_MODEL
optional). The cloud tests need AWS_REGION and AWS credentials (Bedrock,
BEDROCK_MODEL optional), or VERTEX_PROJECT, VERTEX_LOCATION and
GOOGLE_APPLICATION_CREDENTIALS (Vertex AI, VERTEX_MODEL optional).
Without them a test is skipped and says why.
"""

import json
import os

import pytest

from .harness import chat, gateway_config, http_stream

pytestmark = pytest.mark.real_provider
EXPECTED = "EXTPROC_OK"


@pytest.fixture
def real_gateway(gateway):
    if not os.environ.get("OPENAI_API_KEY"):
        pytest.skip("OPENAI_API_KEY is not set: the real-provider smoke test needs a key (set it, optionally OPENAI_BASE_URL and OPENAI_MODEL)")
    base_url = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    model = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
    config = gateway_config({"name": "real", "model": f"openai/{model}", "base_url": base_url, "access_key": "$OPENAI_API_KEY"})
    return gateway(config), f"openai/{model}"


def test_completion_through_the_gateway(real_gateway):
    gw, model = real_gateway
    answer = chat(gw.port, {"model": model, "messages": [{"role": "user", "content": f"Reply with exactly: {EXPECTED}"}], "temperature": 0})
    assert answer.status == 200, answer.body[:500]
    assert EXPECTED in answer.json()["choices"][0]["message"]["content"]
    assert answer.headers["x-arch-llm-provider"] == "real"


def test_streamed_completion_through_the_gateway(real_gateway):
    gw, model = real_gateway
    status, headers, events = http_stream(gw.port, {"model": model, "stream": True, "messages": [{"role": "user", "content": f"Reply with exactly: {EXPECTED}"}], "temperature": 0})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    text = "".join(
        (json.loads(data)["choices"][0]["delta"].get("content") or "") if json.loads(data)["choices"] else ""
        for _, data in events
        if data != "[DONE]"
    )
    assert EXPECTED in text
    assert events[-1][1] == "[DONE]"


@pytest.fixture
def real_anthropic(gateway):
    """An OpenAI-format client served by Anthropic's real Messages API, translated both ways."""
    if not os.environ.get("ANTHROPIC_API_KEY"):
        pytest.skip("ANTHROPIC_API_KEY is not set: the cross-vendor smoke test needs a key (set it, optionally ANTHROPIC_MODEL)")
    model = os.environ.get("ANTHROPIC_MODEL", "claude-3-5-haiku-latest")
    config = gateway_config({"name": "claude", "model": f"anthropic/{model}", "access_key": "$ANTHROPIC_API_KEY", "default_max_tokens": 64})
    return gateway(config), f"anthropic/{model}"


def test_an_openai_client_is_answered_by_anthropic(real_anthropic):
    gw, model = real_anthropic
    answer = chat(gw.port, {"model": model, "messages": [{"role": "system", "content": "Follow instructions exactly."}, {"role": "user", "content": f"Reply with exactly: {EXPECTED}"}], "temperature": 0, "seed": 1})
    assert answer.status == 200, answer.body[:500]
    body = answer.json()
    assert body["object"] == "chat.completion" and EXPECTED in body["choices"][0]["message"]["content"]
    assert body["usage"]["prompt_tokens"] > 0 and body["choices"][0]["finish_reason"] == "stop"


def test_an_openai_client_streams_from_anthropic(real_anthropic):
    gw, model = real_anthropic
    status, headers, events = http_stream(gw.port, {"model": model, "stream": True, "messages": [{"role": "user", "content": f"Reply with exactly: {EXPECTED}"}], "temperature": 0})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    chunks = [json.loads(data) for _, data in events if data != "[DONE]"]
    assert EXPECTED in "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk.get("choices"))
    assert events[-1][1] == "[DONE]"


def _skip_without(*names: str, why: str) -> None:
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not set: {why}")


@pytest.fixture
def real_bedrock(gateway):
    """An OpenAI-format client served by AWS Bedrock's Converse API, signed with the AWS chain's credentials."""
    _skip_without("AWS_REGION", why="the Bedrock smoke test needs a region and AWS credentials (the standard chain), optionally BEDROCK_MODEL")
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")):
        pytest.skip("no AWS credentials in the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE or AWS_WEB_IDENTITY_TOKEN_FILE): the Bedrock smoke test needs them")
    model = os.environ.get("BEDROCK_MODEL", "us.anthropic.claude-3-5-haiku-20241022-v1:0")
    return gateway(gateway_config({"name": "bedrock", "model": f"bedrock/{model}", "default_max_tokens": 64})), f"bedrock/{model}"


@pytest.fixture
def real_vertex(gateway):
    """An OpenAI-format client served by Vertex AI (Claude on rawPredict, or the OpenAI endpoint), with Application Default Credentials."""
    _skip_without("VERTEX_PROJECT", "VERTEX_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS", why="the Vertex AI smoke test needs a project, a location and credentials, optionally VERTEX_MODEL")
    model = os.environ.get("VERTEX_MODEL", "gemini-2.5-flash")
    entry = {"name": "vertex", "model": f"vertex_ai/{model}", "vertex_project": "$VERTEX_PROJECT", "vertex_location": "$VERTEX_LOCATION", "default_max_tokens": 64}
    return gateway(gateway_config(entry)), f"vertex_ai/{model}"


@pytest.mark.parametrize("cloud", ["real_bedrock", "real_vertex"])
def test_a_cloud_answers_an_openai_client(cloud, request):
    gw, model = request.getfixturevalue(cloud)
    answer = chat(gw.port, {"model": model, "messages": [{"role": "user", "content": f"Reply with exactly: {EXPECTED}"}], "temperature": 0, "max_tokens": 64})
    assert answer.status == 200, answer.body[:500]
    assert EXPECTED in answer.json()["choices"][0]["message"]["content"]
    assert answer.json()["usage"]["completion_tokens"] > 0
