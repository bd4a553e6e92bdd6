"""The metrics port: `/metrics`, `/healthz` (alive), `/readyz` (config loaded, serving), `POST /reload`.

A small threaded HTTP server beside the gRPC loop, so a scrape never waits
behind request processing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..runtime import Runtime


class MetricsServer:
    def __init__(self, runtime: Runtime, address: str, port: int):
        self.reload: Callable[[], tuple[bool, str]] | None = None  # set once a reloader exists
        handler = _handler(runtime, self)
        self.httpd = ThreadingHTTPServer((address, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="extproc-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(runtime: Runtime, server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(runtime.metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                if runtime.ready:
                    self._send(200, b"ready\n")
                else:
                    reasons = "".join(f"{part}: {problem}\n" for part, problem in sorted(runtime.problems.items())) or "not serving yet\n"
                    self._send(503, f"not ready\n{reasons}".encode())
            else:
                self._send(404, b"not found: try /metrics, /healthz, /readyz, POST /reload\n")

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != "/reload" or server.reload is None:
                self._send(404, b"not found\n")
                return
            ok, message = server.reload()
            self._send(200 if ok else 422, json.dumps({"reloaded": ok, "message": message}).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: scrapes are frequent
            pass

    return Handler
