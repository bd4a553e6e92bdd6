"""The metrics port: `/metrics`, `/healthz` (alive), `/readyz` (ready, or why not), `POST /reload`.

A small HTTP server beside the gRPC loop, so a scrape never waits behind
request processing. Prometheus and the kubelet reach it; the one thing that
changes state, `POST /reload`, answers only loopback callers (or, with a token
file, callers that present that token). A bound on connections served at once
and a per-connection timeout keep idle or slow connections from piling up.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..runtime import Runtime

#: Connections served at once; more are closed at once (an idle-connection flood holds no more threads than this).
MAX_CONNECTIONS = 32
#: Seconds a connection may stay silent (reading a request, or between keep-alive requests).
CONNECTION_TIMEOUT_S = 5.0


class _BoundedHTTPServer(ThreadingMixIn, HTTPServer):
    """A thread per connection, at most `MAX_CONNECTIONS` of them."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connections waits here instead of in SYN retries

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    def __init__(self, runtime: Runtime, address: str, port: int, reload_token: str | None = None):
        self.reload: Callable[[], tuple[bool, str]] | None = None  # set once a reloader exists
        self.reload_token = reload_token
        handler = _handler(runtime, self)
        self.httpd = _BoundedHTTPServer((address, port), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="extproc-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def may_reload(self, client_host: str, authorization: str | None) -> bool:
        """Loopback callers may; others only with the token, when one is configured."""
        if self.reload_token is not None:
            return authorization is not None and hmac.compare_digest(authorization.encode(), f"Bearer {self.reload_token}".encode())
        try:
            return ipaddress.ip_address(client_host).is_loopback
        except ValueError:
            return False


def _handler(runtime: Runtime, server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = CONNECTION_TIMEOUT_S
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(runtime.metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                if runtime.ready:
                    notes = "".join(f"{part}: {note}\n" for part, note in sorted(runtime.notes.items()))
                    self._send(200, f"ready\n{notes}".encode())
                else:
                    reasons = "".join(f"{part}: {problem}\n" for part, problem in sorted(runtime.problems.items())) or "not serving yet\n"
                    self._send(503, f"not ready\n{reasons}".encode())
            else:
                self._send(404, b"not found: try /metrics, /healthz, /readyz, POST /reload\n")

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != "/reload" or server.reload is None:
                self._send(404, b"not found\n")
                return
            if not server.may_reload(self.client_address[0], self.headers.get("authorization")):
                self._send(403, json.dumps({"reloaded": False, "message": "POST /reload answers loopback callers only (or those with the reload token)"}).encode(), "application/json")
                return
            ok, message = server.reload()
            self._send(200 if ok else 422, json.dumps({"reloaded": ok, "message": message}).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            pass

    return Handler


