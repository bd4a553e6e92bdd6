"""The mock provider that `make run` and compose leave running for hours: what it keeps."""

import asyncio
import http.client
import json

from extproc.mock import MockProvider


def _post(port: int, payload: dict) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(payload).encode(), {"content-type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


def test_the_mock_keeps_a_bounded_history_of_the_latest_requests():
    async def scenario() -> MockProvider:
        mock = MockProvider(name="m", history=10)
        port = await mock.start()
        try:
            for number in range(25):
                assert await asyncio.to_thread(_post, port, {"model": "gpt-4", "n": number}) == 200
        finally:
            await mock.stop()
        return mock

    mock = asyncio.run(scenario())
    assert mock.served == 25
    assert [request.json()["n"] for request in mock.received] == list(range(15, 25)), "the latest ten, oldest first"


def test_the_anthropic_mock_takes_a_betas_field_or_system_turn_only_under_that_beta():
    from extproc.mock.anthropic import refusal

    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    managed = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "context_management": {"edits": []}}).encode()
    assert refusal("/v1/messages", headers, managed) == (400, "context_management: Extra inputs are not permitted")
    assert refusal("/v1/messages?beta=true", {**headers, "anthropic-beta": "claude-code-20250219, context-management-2025-06-27"}, managed) is None
    system_turn = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]}).encode()
    assert refusal("/v1/messages", headers, system_turn)[0] == 400
    assert refusal("/v1/messages", {**headers, "anthropic-beta": "mid-conversation-system-2026-04-07"}, system_turn) is None


def test_the_bedrock_mock_refuses_a_beta_invokemodel_does_not_take():
    from extproc.mock.bedrock import _invoke_refusal

    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert _invoke_refusal("anthropic.claude-sonnet-4", {**body, "anthropic_beta": ["claude-code-20250219"]})[1].endswith("invalid beta flag")
    assert _invoke_refusal("anthropic.claude-sonnet-4", {**body, "context_management": {}})[0] == 400
    assert _invoke_refusal("anthropic.claude-sonnet-4", {**body, "context_management": {}, "anthropic_beta": ["context-management-2025-06-27"]}) is None
