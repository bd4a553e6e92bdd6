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
