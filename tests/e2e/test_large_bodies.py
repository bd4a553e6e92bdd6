"""Large requests and answers: what a slow sender costs, what a large answer passes as."""

import json
import socket
import threading
import time

from .harness import chat, gateway_config, provider, request

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
