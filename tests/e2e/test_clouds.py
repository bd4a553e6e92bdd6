"""Cloud-hosted providers through real Envoy and the real sidecar: what each cloud receives, and failover across them."""

import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from extproc.mock.bedrock import BedrockState
from extproc.mock.vertex import VertexState

from .harness import chat, gateway_config, http_stream, provider, wait_for

HELLO = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_an_openai_429_fails_over_to_an_azure_deployment_on_its_deployments_path(mocks, gateway):
    openai = mocks.start("openai", status=429, retry_after="1")
    azure = mocks.start("azure", strict=True)
    gw = gateway(
        gateway_config(
            provider("openai", "openai/gpt-4o", openai, access_key="sk-openai-0001", retry_policy={"fallback_models": ["azure/prod-gpt-4o"]}),
            provider("azure", "azure/prod-gpt-4o", azure, access_key="azure-key-0002", api_version="2024-10-21"),
        )
    )

    answer = chat(gw.port, HELLO, headers={"authorization": "Bearer client-key"})
    embedded = chat(gw.port, {"model": "azure/prod-gpt-4o", "input": "hi"}, path="/v1/embeddings?user=u1")

    assert answer.status == 200, answer.body
    assert answer.headers["x-arch-llm-provider"] == "azure"
    [chat_request, embeddings_request] = azure.received
    assert chat_request.path == "/openai/deployments/prod-gpt-4o/chat/completions?api-version=2024-10-21"
    assert chat_request.header("api-key") == "azure-key-0002" and chat_request.header("authorization") is None, "Azure's key only, in its header"
    assert chat_request.json()["model"] == "prod-gpt-4o" and chat_request.json()["messages"] == HELLO["messages"]
    assert embedded.status == 200
    assert embeddings_request.path == "/openai/deployments/prod-gpt-4o/embeddings?user=u1&api-version=2024-10-21"
    assert openai.received[0].header("api-key") is None and openai.received[0].header("authorization") == "Bearer sk-openai-0001"


def test_an_azure_429_fails_over_and_azures_v1_path_needs_no_api_version(mocks, gateway):
    azure = mocks.start("azure", status=429, retry_after="1")
    v1 = mocks.start("v1")
    gw = gateway(
        gateway_config(
            provider("azure", "azure/east-gpt-4o", azure, access_key="azure-key-0001", api_version="2025-01-01-preview", retry_policy={"fallback_models": ["azure/gpt-4o"]}),
            {**provider("v1", "azure/gpt-4o", v1, access_key="azure-key-0002"), "base_url": f"http://127.0.0.1:{v1.port}/openai/v1"},
        )
    )

    answer = chat(gw.port, {**HELLO, "model": "azure/east-gpt-4o"})

    assert answer.status == 200, answer.body
    assert azure.received[0].path == "/openai/deployments/east-gpt-4o/chat/completions?api-version=2025-01-01-preview"
    assert v1.received[0].path == "/openai/v1/chat/completions" and v1.received[0].header("api-key") == "azure-key-0002"
    assert v1.received[0].json()["model"] == "gpt-4o"


CLAUDE_ON_VERTEX = "vertex_ai/claude-sonnet-4@20250514"
RAW_PREDICT = "/v1/projects/proj-1/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict"


@pytest.fixture
def google_key(tmp_path):
    """A service account's key (as Google issues them) and the public half the mock's token endpoint trusts."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return tmp_path, private, public


def vertex(mocks, google_key, lifetime_s: int = 3600, token_port: int | None = None, **behaviour):
    """A Vertex mock and a service-account file whose token_uri is that mock's token endpoint (or `token_port`'s); (mock, its provider entry's keys)."""
    directory, private, public = google_key
    mock = mocks.start("vertex", api="vertex", vertex=VertexState(public_key=public, lifetime_s=lifetime_s), **behaviour)
    account = {
        "type": "service_account", "project_id": "proj-1", "private_key_id": "key-1", "private_key": private,
        "client_email": "gateway@proj-1.iam.gserviceaccount.com", "client_id": "1", "token_uri": f"http://127.0.0.1:{token_port or mock.port}/token",
    }  # fmt: skip
    path = directory / f"service-account-{mock.port}.json"
    path.write_text(json.dumps(account))
    return mock, {"vertex_project": "proj-1", "vertex_location": "us-east5", "vertex_credentials": str(path)}


def openai_then(mocks, gateway, model: str, entry: dict):
    openai = mocks.start("openai", status=429, retry_after="1")
    first = provider("openai", "openai/gpt-4o", openai, access_key="sk-openai-0001", retry_policy={"fallback_models": [model]})
    return openai, gateway(gateway_config(first, entry))


def test_an_openai_429_fails_over_to_claude_on_vertex_with_a_token_and_rawpredict(mocks, gateway, google_key):
    mock, keys = vertex(mocks, google_key)
    openai, gw = openai_then(mocks, gateway, CLAUDE_ON_VERTEX, provider("vertex", CLAUDE_ON_VERTEX, mock, **keys))

    answer = chat(gw.port, {**HELLO, "max_tokens": 50})

    assert answer.status == 200, answer.body
    assert answer.headers["x-arch-llm-provider"] == "vertex"
    body = answer.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "[vertex] you said: hi"
    [sent] = mock.received
    assert sent.path == RAW_PREDICT
    assert sent.header("authorization") == "Bearer ya29.mock-1", "the token Vertex's own endpoint issued, for the service account"
    assert sent.header("x-api-key") is None and "sk-openai" not in json.dumps(sent.headers)
    assert sent.json() == {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 50, "anthropic_version": "vertex-2023-10-16",
    }, "Anthropic's Messages body, its model in the path"  # fmt: skip
    assert openai.received[0].header("authorization") == "Bearer sk-openai-0001"


def test_a_stream_goes_to_streamrawpredict_and_comes_back_chunk_by_chunk(mocks, gateway, google_key):
    mock, keys = vertex(mocks, google_key, chunk_interval_s=0.05)
    _openai, gw = openai_then(mocks, gateway, CLAUDE_ON_VERTEX, provider("vertex", CLAUDE_ON_VERTEX, mock, **keys))

    status, _, events = http_stream(gw.port, {**HELLO, "stream": True})

    assert status == 200
    assert mock.received[0].path == RAW_PREDICT.replace(":rawPredict", ":streamRawPredict")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"]) == "[vertex] you said: hi"
    assert events[-1][1] == "[DONE]"
    assert events[-1][0] - events[1][0] >= 0.15, "passed on as the events came, not held to the end"


def test_an_anthropic_client_reaches_claude_on_vertex_with_its_own_body(mocks, gateway, google_key):
    mock, keys = vertex(mocks, google_key)
    gw = gateway(gateway_config(provider("vertex", CLAUDE_ON_VERTEX, mock, **keys)))
    ask = {"model": CLAUDE_ON_VERTEX, "max_tokens": 20, "system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]}

    answer = chat(gw.port, ask, headers={"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01"}, path="/v1/messages")

    assert answer.status == 200, answer.body
    assert answer.json()["type"] == "message" and answer.json()["content"] == [{"type": "text", "text": "[vertex] you said: hi"}]
    [sent] = mock.received
    assert sent.path == RAW_PREDICT and sent.header("x-api-key") is None
    assert sent.json() == {"max_tokens": 20, "system": "Be brief.", "messages": ask["messages"], "anthropic_version": "vertex-2023-10-16"}


def test_gemini_goes_to_vertexs_openai_endpoint_with_its_publisher(mocks, gateway, google_key):
    mock, keys = vertex(mocks, google_key)
    _openai, gw = openai_then(mocks, gateway, "vertex_ai/gemini-2.5-flash", provider("gemini", "vertex_ai/gemini-2.5-flash", mock, **keys))

    answer = chat(gw.port, HELLO)

    assert answer.status == 200, answer.body
    [sent] = mock.received
    assert sent.path == "/v1/projects/proj-1/locations/us-east5/endpoints/openapi/chat/completions"
    assert sent.json()["model"] == "google/gemini-2.5-flash" and sent.header("authorization") == "Bearer ya29.mock-1"


def test_one_token_serves_many_requests_and_a_new_one_is_minted_before_it_expires(mocks, gateway, google_key):
    mock, keys = vertex(mocks, google_key, lifetime_s=3)
    gw = gateway(gateway_config(provider("vertex", "vertex_ai/gemini-2.5-flash", mock, **keys)))

    first = [chat(gw.port, {**HELLO, "model": "vertex_ai/gemini-2.5-flash"}).status for _ in range(20)]
    assert first == [200] * 20 and len(mock.vertex.issued) == 1, "minted once, before the first request"
    deadline = time.monotonic() + 4.5  # past the first token's expiry
    statuses = []
    while time.monotonic() < deadline:
        statuses.append(chat(gw.port, {**HELLO, "model": "vertex_ai/gemini-2.5-flash"}).status)
        time.sleep(0.05)

    assert set(statuses) == {200}, "no request ever went out with an expired token"
    assert len(mock.vertex.issued) >= 2
    used = {request.header("authorization") for request in mock.received}
    # Every request carried a token the mock issued, and a renewed one served requests. (Not every issued one:
    # renewal runs ahead of expiry, so the last may be minted just before the loop ends.)
    assert used <= {f"Bearer {token}" for token in mock.vertex.issued} and len(used) >= 2


def test_a_vertex_429_fails_over_and_the_next_provider_never_sees_googles_token(mocks, gateway, google_key):
    mock, keys = vertex(mocks, google_key, status=429)
    openai = mocks.start("openai")
    gw = gateway(
        gateway_config(
            provider("vertex", CLAUDE_ON_VERTEX, mock, **keys, retry_policy={"fallback_models": ["openai/gpt-4o"]}),
            provider("openai", "openai/gpt-4o", openai, access_key="sk-openai-0001"),
        )
    )

    answer = chat(gw.port, {**HELLO, "model": CLAUDE_ON_VERTEX})

    assert answer.status == 200, answer.body
    assert mock.received[0].header("authorization") == "Bearer ya29.mock-1"
    assert openai.received[0].header("authorization") == "Bearer sk-openai-0001"
    assert openai.received[0].path == "/v1/chat/completions" and openai.received[0].json()["model"] == "gpt-4o"


def test_count_tokens_is_never_sent_to_vertex(mocks, gateway, google_key):
    mock, keys = vertex(mocks, google_key)
    gw = gateway(gateway_config(provider("vertex", CLAUDE_ON_VERTEX, mock, **keys)))

    answer = chat(gw.port, {"model": CLAUDE_ON_VERTEX, "messages": [{"role": "user", "content": "hi"}]}, path="/v1/messages/count_tokens")

    assert answer.status == 404 and answer.json()["error"]["type"] == "not_found_error"
    assert not mock.received


CLAUDE_ON_BEDROCK = "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0"
CONVERSE = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
AWS_KEYS = {"aws_region_name": "us-east-1", "aws_access_key_id": "AKIAMOCKMOCKMOCK0001", "aws_secret_access_key": "mock-secret-access-key"}


def bedrock(mocks, **behaviour):
    return mocks.start("bedrock", api="bedrock", bedrock=BedrockState(), **behaviour)


def test_an_openai_429_fails_over_to_bedrock_signed_over_the_body_and_translated(mocks, gateway):
    mock = bedrock(mocks)
    openai, gw = openai_then(mocks, gateway, CLAUDE_ON_BEDROCK, provider("bedrock", CLAUDE_ON_BEDROCK, mock, **AWS_KEYS))

    answer = chat(gw.port, {**HELLO, "messages": [{"role": "system", "content": "Be brief."}, *HELLO["messages"]], "temperature": 0.3, "stop": "END", "max_tokens": 99})

    assert answer.status == 200, answer.body
    assert answer.headers["x-arch-llm-provider"] == "bedrock"
    body = answer.json()
    assert body["object"] == "chat.completion" and body["model"] == "anthropic.claude-3-5-sonnet-20240620-v1:0"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "[bedrock] you said: hi"}, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
    [sent] = mock.received
    assert sent.path == CONVERSE, "the model id percent-encoded in the path"
    assert sent.header("authorization").startswith("AWS4-HMAC-SHA256 Credential=AKIAMOCKMOCKMOCK0001/"), "the mock verified it over the bytes it got"
    assert sent.header("x-amz-date") and "sk-openai" not in json.dumps(sent.headers)
    assert sent.json() == {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 99, "temperature": 0.3, "stopSequences": ["END"]},
    }
    assert openai.received[0].header("x-amz-date") is None
    wait_for(lambda: gw.metric("extproc_tokens_total", provider="bedrock", model=CLAUDE_ON_BEDROCK, type="output") == 4)


def test_a_bedrock_stream_arrives_frame_by_frame_as_chat_completion_chunks(mocks, gateway):
    mock = bedrock(mocks, chunk_interval_s=0.05)
    _openai, gw = openai_then(mocks, gateway, CLAUDE_ON_BEDROCK, provider("bedrock", CLAUDE_ON_BEDROCK, mock, **AWS_KEYS))

    status, headers, events = http_stream(gw.port, {**HELLO, "stream": True, "stream_options": {"include_usage": True}})

    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert mock.received[0].path == CONVERSE.replace("/converse", "/converse-stream")
    assert "stream" not in mock.received[0].json(), "Converse takes the stream choice in its path"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert events[-1][1] == "[DONE]"
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"]) == "[bedrock] you said: hi"
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]][-1] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
    assert events[-1][0] - events[1][0] >= 0.2, "passed on as the frames came, not held to the end"


def test_tool_calls_round_trip_through_bedrock(mocks, gateway):
    mock = bedrock(mocks)
    gw = gateway(gateway_config(provider("bedrock", CLAUDE_ON_BEDROCK, mock, **AWS_KEYS)))
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Look it up", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]

    answer = chat(gw.port, {"model": CLAUDE_ON_BEDROCK, "messages": [{"role": "user", "content": "find cats"}], "tools": tools, "tool_choice": "required"})

    assert answer.status == 200, answer.body
    choice = answer.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup" and json.loads(call["function"]["arguments"]) == {"echo": "find cats"}
    assert mock.received[0].json()["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": tools[0]["function"]["parameters"]}, "description": "Look it up"}}],
        "toolChoice": {"any": {}},
    }
    follow_up = [{"role": "user", "content": "find cats"}, {"role": "assistant", "content": None, "tool_calls": [call]}, {"role": "tool", "tool_call_id": call["id"], "content": "3 cats"}]

    answer = chat(gw.port, {"model": CLAUDE_ON_BEDROCK, "messages": follow_up, "tools": tools})

    assert answer.status == 200, answer.body
    assert answer.json()["choices"][0]["message"]["content"] == "[bedrock] you said: 3 cats"
    assert mock.received[1].json()["messages"][1:] == [
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": call["id"], "name": "lookup", "input": {"echo": "find cats"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": call["id"], "content": [{"text": "3 cats"}]}}]},
    ]


def test_bedrock_throttling_fails_over_and_its_errors_reach_the_client_as_openai_json(mocks, gateway):
    throttled = bedrock(mocks, status=429)
    openai = mocks.start("openai")
    gw = gateway(
        gateway_config(
            provider("bedrock", CLAUDE_ON_BEDROCK, throttled, **AWS_KEYS, retry_policy={"fallback_models": ["openai/gpt-4o"]}),
            provider("openai", "openai/gpt-4o", openai, access_key="sk-openai-0001"),
            provider("wrong-key", "bedrock/amazon.nova-pro-v1:0", throttled, **{**AWS_KEYS, "aws_secret_access_key": "not-the-secret"}),
        )
    )

    answer = chat(gw.port, {**HELLO, "model": CLAUDE_ON_BEDROCK})
    refused = chat(gw.port, {**HELLO, "model": "bedrock/amazon.nova-pro-v1:0"})

    assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "openai"
    assert openai.received[0].header("authorization") == "Bearer sk-openai-0001" and openai.received[0].header("x-amz-date") is None
    wait_for(lambda: gw.metric("extproc_provider_cooldowns_total", provider="bedrock", reason="rate_limited") == 1)
    assert refused.status == 403, "a signature made with the wrong secret is refused by the mock"
    assert refused.json() == {"error": {"message": "The request signature we calculated does not match the signature you provided.", "type": "permission_error", "code": "bedrock_error"}}


def test_a_bedrock_api_key_is_sent_as_a_bearer_token_unsigned(mocks, gateway):
    mock = mocks.start("bedrock", api="bedrock", bedrock=BedrockState(api_key="bedrock-api-key-0001"))
    gw = gateway(gateway_config(provider("bedrock", CLAUDE_ON_BEDROCK, mock, aws_region_name="us-east-1", access_key="bedrock-api-key-0001")))

    answer = chat(gw.port, {**HELLO, "model": CLAUDE_ON_BEDROCK})

    assert answer.status == 200, answer.body
    assert mock.received[0].header("authorization") == "Bearer bedrock-api-key-0001" and mock.received[0].header("x-amz-date") is None


ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01"}


def test_an_anthropic_client_falls_over_anthropic_to_bedrock_to_vertex_with_anthropics_own_bodies(mocks, gateway, google_key):
    """The chain Claude Code users ask for: Claude on Anthropic, then on Bedrock (InvokeModel), then on Vertex (rawPredict)."""
    anthropic = mocks.start("anthropic", api="anthropic", status=429, retry_after="1")
    aws = bedrock(mocks, status=429)
    google, keys = vertex(mocks, google_key)
    gw = gateway(
        gateway_config(
            provider("anthropic", "anthropic/claude-sonnet-4", anthropic, access_key="sk-ant-0001", retry_policy={"fallback_models": [CLAUDE_ON_BEDROCK, CLAUDE_ON_VERTEX]}),
            provider("bedrock", CLAUDE_ON_BEDROCK, aws, **AWS_KEYS),
            provider("vertex", CLAUDE_ON_VERTEX, google, **keys),
        )
    )
    ask = {"model": "anthropic/claude-sonnet-4", "max_tokens": 30, "system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]}

    answer = chat(gw.port, ask, headers=ANTHROPIC_HEADERS, path="/v1/messages")

    assert answer.status == 200, answer.body
    assert answer.headers["x-arch-llm-provider"] == "vertex" and answer.json()["content"] == [{"type": "text", "text": "[vertex] you said: hi"}]
    [first], [second], [third] = anthropic.received, aws.received, google.received
    assert first.header("x-api-key") == "sk-ant-0001" and first.json() == {**ask, "model": "claude-sonnet-4"}
    assert second.path == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke"
    assert second.header("authorization").startswith("AWS4-HMAC-SHA256") and second.header("x-api-key") is None
    assert second.json() == {"max_tokens": 30, "system": "Be brief.", "messages": ask["messages"], "anthropic_version": "bedrock-2023-05-31"}
    assert third.header("authorization") == "Bearer ya29.mock-1" and third.header("x-amz-date") is None, "nothing of Bedrock's signature reaches Google"
    assert third.json() == {"max_tokens": 30, "system": "Be brief.", "messages": ask["messages"], "anthropic_version": "vertex-2023-10-16"}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_claude_on_bedrock_answers_an_anthropic_client_in_anthropics_format(mocks, gateway, stream):
    aws = bedrock(mocks, chunk_interval_s=0.02)
    gw = gateway(gateway_config(provider("bedrock", CLAUDE_ON_BEDROCK, aws, **AWS_KEYS)))
    ask = {"model": CLAUDE_ON_BEDROCK, "max_tokens": 30, "messages": [{"role": "user", "content": "hi there"}], **({"stream": True} if stream else {})}

    if stream:
        status, headers, events = http_stream(gw.port, ask, path="/v1/messages", headers=ANTHROPIC_HEADERS)
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        data = [json.loads(text) for _, text in events]
        assert [event["type"] for event in data][:2] == ["message_start", "ping"] and data[-1]["type"] == "message_stop"
        assert "".join(event["delta"]["text"] for event in data if event["type"] == "content_block_delta") == "[bedrock] you said: hi there"
        assert aws.received[0].path.endswith("/invoke-with-response-stream") and "stream" not in aws.received[0].json()
    else:
        answer = chat(gw.port, ask, headers=ANTHROPIC_HEADERS, path="/v1/messages")
        assert answer.status == 200, answer.body
        assert answer.json()["type"] == "message" and answer.json()["content"] == [{"type": "text", "text": "[bedrock] you said: hi there"}]


def test_a_bedrock_model_without_a_messages_api_is_the_anthropic_clients_400(mocks, gateway):
    aws = bedrock(mocks)
    gw = gateway(gateway_config(provider("nova", "bedrock/amazon.nova-pro-v1:0", aws, **AWS_KEYS)))

    answer = chat(gw.port, {"model": "bedrock/amazon.nova-pro-v1:0", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, headers=ANTHROPIC_HEADERS, path="/v1/messages")

    assert answer.status == 400 and answer.json()["type"] == "error" and "not a Claude model" in answer.json()["error"]["message"]
    assert not aws.received


@pytest.fixture
def no_aws_files(monkeypatch, tmp_path):
    """The AWS chain sees only what a test puts in the environment: no shared files, no instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def test_bedrock_signs_with_the_standard_aws_chain_when_the_entry_has_no_keys(mocks, gateway, monkeypatch, no_aws_files):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAMOCKMOCKMOCK0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "mock-secret-access-key")
    mock = bedrock(mocks)
    gw = gateway(gateway_config(provider("bedrock", CLAUDE_ON_BEDROCK, mock)))  # region and keys from the environment

    answer = chat(gw.port, {**HELLO, "model": CLAUDE_ON_BEDROCK})

    assert answer.status == 200, answer.body
    assert mock.received[0].header("authorization").startswith("AWS4-HMAC-SHA256 Credential=AKIAMOCKMOCKMOCK0001/")
    assert "mock-secret-access-key" not in gw.logs()


def test_bedrock_without_any_aws_credentials_is_a_clear_503_and_nothing_is_sent_unsigned(mocks, gateway, no_aws_files):
    mock = bedrock(mocks)
    gw = gateway(gateway_config(provider("bedrock", CLAUDE_ON_BEDROCK, mock)))

    answer = chat(gw.port, {**HELLO, "model": CLAUDE_ON_BEDROCK})

    assert answer.status == 503, answer.body
    assert answer.json()["error"]["code"] == "provider_credentials_missing" and "aws_access_key_id" in answer.json()["error"]["message"]
    anthropic = chat(gw.port, {**HELLO, "model": CLAUDE_ON_BEDROCK, "max_tokens": 10}, path="/v1/messages")
    assert anthropic.status == 503 and anthropic.json()["type"] == "error"
    assert anthropic.json()["error"]["type"] == "api_error", "not overloaded_error: Anthropic's SDKs retry that as if it would pass"
    assert not mock.received


def test_vertex_uses_application_default_credentials_and_its_errors_reach_the_client_as_openai_json(mocks, gateway, google_key, monkeypatch):
    mock, keys = vertex(mocks, google_key, status=429)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", keys.pop("vertex_credentials"))
    gw = gateway(gateway_config(provider("vertex", CLAUDE_ON_VERTEX, mock, **keys)))

    answer = chat(gw.port, {**HELLO, "model": CLAUDE_ON_VERTEX})

    assert mock.received[0].header("authorization") == "Bearer ya29.mock-1", "a token for the ADC service account"
    assert answer.status == 429
    assert answer.json() == {"error": {"message": "vertex: mock status 429", "type": "server_error", "code": "api_error"}}


def test_a_non_chat_request_never_reaches_bedrock(mocks, gateway):
    """Bedrock's paths are per model and operation: an embeddings request stays with the providers that take it."""
    aws = bedrock(mocks)
    openai = mocks.start("openai", status=429, retry_after="1")
    gw = gateway(
        gateway_config(
            provider("openai", "openai/gpt-4o", openai, access_key="sk-openai-0001", retry_policy={"fallback_models": [CLAUDE_ON_BEDROCK]}),
            provider("bedrock", CLAUDE_ON_BEDROCK, aws, **AWS_KEYS),
        )
    )

    through_openai = chat(gw.port, {"model": "openai/gpt-4o", "input": "hi"}, path="/v1/embeddings")
    bedrock_only = chat(gw.port, {"model": CLAUDE_ON_BEDROCK, "input": "hi"}, path="/v1/embeddings")

    assert through_openai.status == 429, "OpenAI's own answer: the chain stops before Bedrock"
    assert bedrock_only.status == 404 and "chat requests only" in bedrock_only.json()["error"]["message"]
    assert [request.path for request in openai.received] == ["/v1/embeddings"] and not aws.received


def test_an_azure_refusal_reaches_the_client_as_azure_sent_it_and_is_not_failed_over(mocks, gateway):
    """A 400 (Azure's content_filter refusals are 400s) is the client's answer: not retried elsewhere, body untouched."""
    azure = mocks.start("azure", status=400)
    backup = mocks.start("backup")
    gw = gateway(
        gateway_config(
            provider("azure", "azure/prod-gpt-4o", azure, access_key="azure-key-0001", api_version="2024-10-21", retry_policy={"fallback_models": ["openai/gpt-4o"]}),
            provider("backup", "openai/gpt-4o", backup, access_key="sk-openai-0001"),
        )
    )

    answer = chat(gw.port, {**HELLO, "model": "azure/prod-gpt-4o"})

    assert answer.status == 400
    assert answer.json() == {"error": {"message": "azure: mock status 400", "type": "invalid_request_error", "param": None, "code": "invalid_request_error"}}
    assert not backup.received


@pytest.mark.parametrize("token_endpoint", [{"status": 500}, {"delay_s": 30}], ids=["answers 500", "hangs"])
def test_a_vertex_token_that_cannot_be_minted_is_a_503_naming_the_provider_and_nothing_goes_out_unauthenticated(mocks, gateway, google_key, token_endpoint):
    tokens = mocks.start("tokens", **token_endpoint)
    mock, keys = vertex(mocks, google_key, token_port=tokens.port)
    openai = mocks.start("openai")
    started = time.monotonic()
    gw = gateway(
        gateway_config(
            provider("vertex", CLAUDE_ON_VERTEX, mock, **keys, retry_policy={"fallback_models": ["openai/gpt-4o"]}),
            provider("lonely", "vertex_ai/claude-opus-4@20250514", mock, **keys),
            provider("openai", "openai/gpt-4o", openai, access_key="sk-openai-0001"),
        )
    )
    assert time.monotonic() - started < 8.0, "a token endpoint that hangs delays no start"

    refused = chat(gw.port, {**HELLO, "model": "vertex_ai/claude-opus-4@20250514"})
    served = chat(gw.port, {**HELLO, "model": CLAUDE_ON_VERTEX})
    ready = gw.get("/readyz")

    assert refused.status == 503 and refused.json()["error"]["code"] == "provider_credentials_missing", refused.body
    assert "Provider 'lonely' has no credentials" in refused.json()["error"]["message"]
    assert served.status == 200 and served.headers["x-arch-llm-provider"] == "openai", "the chain's next provider serves meanwhile"
    assert not mock.received, "nothing reached Vertex without a token"
    assert ready.status == 200 and b"credential of provider lonely" in ready.body and b"credential of provider vertex" in ready.body
