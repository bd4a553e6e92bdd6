"""Large requests and answers: what a slow sender costs, what a large answer passes as."""

import json
import socket
import threading
import time

import pytest

from .harness import chat, gateway_config, http_stream, provider, request, wait_for

GPT4 = "openai/gpt-4"


class SlowUpload:
    """A client that announces a large body and sends it at ~10 KB/s until stopped."""

    def __init__(self, port: int, size: int = 2_000_000):
        self.sock = socket.create_connection(("127.0.0.1", port))
        head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
        self.sock.sendall(head.encode() + b'{"model": "openai/gpt-4", "messages": [{"role": "user", "content": "')
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.sock.sendall(b"x" * 1000)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_slow_uploads_cost_only_their_own_requests(mocks, gateway):
    upstream = mocks.start("p")
    gw = gateway(gateway_config(provider("p", GPT4, upstream)))
    # More slow senders than the sidecar has threads for large bodies (4): each must cost only its own request.
    slow = [SlowUpload(gw.port) for _ in range(6)]
    try:
        time.sleep(1.0)
        body = json.dumps({"model": GPT4, "messages": [{"role": "user", "content": "y" * 1_500_000}]}).encode()
        answers: list[tuple[int, float]] = []

        def fast() -> None:
            started = time.monotonic()
            answer = request(gw.port, "POST", "/v1/chat/completions", body, {"content-type": "application/json"}, timeout=20)
            answers.append((answer.status, time.monotonic() - started))

        threads = [threading.Thread(target=fast) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [status for status, _ in answers] == [200, 200, 200]
        assert max(seconds for _, seconds in answers) < 3.0, answers
        assert chat(gw.port, {"model": GPT4}).status == 200
    finally:
        for upload in slow:
            upload.close()
    assert len(upstream.received) == 4, "the unfinished uploads never reached the provider"


def test_a_large_answer_passes_whole_and_its_uncounted_tokens_are_counted_as_skipped(mocks, gateway):
    """Envoy buffers a JSON answer to read its usage, up to the listener's buffer: a larger one passes unread."""
    large = mocks.start("large", padding=12 * 1024 * 1024)
    medium = mocks.start("medium", padding=5_000_000)
    gw = gateway(gateway_config(provider("large", GPT4, large), provider("medium", "openai/gpt-4o", medium)))

    answer = chat(gw.port, {"model": GPT4, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status == 200, answer.body[:300]
    assert len(answer.body) == int(answer.headers["content-length"]) > 12 * 1024 * 1024
    assert answer.json()["usage"]["completion_tokens"] > 0, "the provider's whole answer, usage included"
    wait_for(lambda: gw.metric("extproc_token_usage_skipped_total", provider="large", reason="answer_too_large") == 1)
    assert gw.metric("extproc_tokens_total", provider="large", model="openai/gpt-4", type="output") is None

    assert chat(gw.port, {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).status == 200
    wait_for(lambda: (gw.metric("extproc_tokens_total", provider="medium", model="openai/gpt-4o", type="output") or 0) > 0)
    assert gw.metric("extproc_token_usage_skipped_total", provider="medium", reason="answer_too_large") is None, "5 MB fits: counted"


CLAUDE = "anthropic/claude-sonnet-4"
#: (client's path, model asked for): an Anthropic client answered by OpenAI, an OpenAI client answered by Claude.
CROSSED = {"anthropic client, openai provider": ("/v1/messages", "openai/gpt-4o"), "openai client, anthropic provider": ("/v1/chat/completions", CLAUDE)}


def crossed_gateway(mocks, gateway, padding: int = 0, metrics: dict | None = None, **listener):
    openai = mocks.start("openai", padding=padding)
    claude = mocks.start("claude", api="anthropic", padding=padding)
    config = gateway_config(provider("openai", "openai/gpt-4o", openai, access_key="sk-o"), provider("claude", CLAUDE, claude, access_key="sk-a"), **listener)
    if metrics is not None:
        config["metrics"] = metrics
    return gateway(config)


@pytest.mark.parametrize("path, model", CROSSED.values(), ids=CROSSED.keys())
def test_a_translated_answer_of_megabytes_arrives_whole_json_and_as_one_event(mocks, gateway, path, model):
    """Envoy 1.40 crashed on a message from the sidecar over its connection's buffer limit (1 MiB by default)."""
    gw = crossed_gateway(mocks, gateway)
    prompt = "y" * 3_000_000  # the mocks echo it: a 3 MB answer, one word (one event when streamed)
    payload = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": prompt}]}

    answer = chat(gw.port, payload, path=path)
    status, _, events = http_stream(gw.port, {**payload, "stream": True}, path=path)

    assert answer.status == 200, answer.body[:300]
    body = answer.json()
    text = body["content"][0]["text"] if path == "/v1/messages" else body["choices"][0]["message"]["content"]
    assert text.endswith(prompt) and len(text) < len(prompt) + 40
    assert status == 200
    datas = [json.loads(data) for _, data in events if data != "[DONE]"]
    if path == "/v1/messages":
        streamed = "".join(event["delta"].get("text", "") for event in datas if event["type"] == "content_block_delta")
        assert datas[-1]["type"] == "message_stop"
    else:
        streamed = "".join(choice["delta"].get("content") or "" for event in datas for choice in event["choices"])
        assert events[-1][1] == "[DONE]"
    assert prompt in streamed, "the one 3 MB event, translated whole"
    assert gw.process.poll() is None


@pytest.mark.parametrize("path, model", CROSSED.values(), ids=CROSSED.keys())
def test_a_translated_answer_over_the_size_limit_is_a_502_in_the_clients_shape_at_once(mocks, gateway, path, model):
    gw = crossed_gateway(mocks, gateway, padding=3_000_000, max_body_bytes="2MiB")

    started = time.monotonic()
    answer = chat(gw.port, {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, path=path)

    assert time.monotonic() - started < 5.0
    assert answer.status == 502, answer.body
    error = answer.json()["error"]
    assert "more than this gateway's size limit" in error["message"] and "max_body_bytes" in error["message"]
    if path == "/v1/messages":
        assert answer.json()["type"] == "error" and error["type"] == "api_error"
    else:
        assert error["code"] == "response_too_large"
    assert chat(gw.port, {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, path=path).status == 502, "and the gateway is still up"
