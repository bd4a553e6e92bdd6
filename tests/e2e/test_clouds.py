"""Cloud-hosted providers through real Envoy and the real sidecar: what each cloud receives, and failover across them."""

from .harness import chat, gateway_config, provider

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
