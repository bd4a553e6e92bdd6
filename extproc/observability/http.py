"""The metrics port: `/metrics`, `/healthz` (alive), `/readyz` (ready, or why not), `POST /reload`.

A small HTTP/1.1 server (h11 for the protocol) on its own thread and event
loop, beside the gRPC loop, so a scrape or a probe never waits behind request
processing. An open connection costs a coroutine, not a thread, so no number
of idle or slow connections can crowd out the kubelet's probes; each one is
closed after `CONNECTION_TIMEOUT_S` of silence. The one thing that changes
state, `POST /reload`, answers only loopback callers (or, with a token file,
callers that present that token).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import socket
import threading
from collections.abc import Callable

import h11
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..runtime import Runtime

#: Seconds a connection may stay silent (before its request is complete, or between keep-alive requests).
CONNECTION_TIMEOUT_S = 5.0
#: A request's head may not be larger (the endpoints take no body worth reading).
MAX_REQUEST_BYTES = 16 * 1024


class MetricsServer:
    def __init__(self, runtime: Runtime, address: str, port: int, reload_token: str | None = None):
        self.runtime = runtime
        self.reload: Callable[[], tuple[bool, str]] | None = None  # set once a reloader exists
        self.reload_token = reload_token
        self._socket = socket.create_server((address, port), family=socket.AF_INET6 if ":" in address else socket.AF_INET, backlog=128)
        self.port = self._socket.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="extproc-metrics", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def start(self) -> MetricsServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self._socket)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        else:
            self._socket.close()
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.close()
            await self._server.wait_closed()

    def may_reload(self, client_host: str, authorization: str | None) -> bool:
        """Loopback callers may; others only with the token, when one is configured."""
        if self.reload_token is not None:
            return authorization is not None and hmac.compare_digest(authorization.encode(), f"Bearer {self.reload_token}".encode())
        try:
            return ipaddress.ip_address(client_host).is_loopback
        except ValueError:
            return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        peer = writer.get_extra_info("peername") or ("", 0)
        self._open.add(writer)
        try:
            while True:
                request = await self._next_request(connection, reader)
                if request is None:
                    return
                status, body, content_type = await self._answer(request, peer[0])
                headers = [("content-type", content_type), ("content-length", str(len(body)))]
                writer.write(connection.send(h11.Response(status_code=status, headers=headers)) + connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage()))
                await writer.drain()
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, TimeoutError):
            return
        finally:
            self._open.discard(writer)
            writer.close()

    async def _next_request(self, connection: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
        """The next complete request (its body read and dropped), or None when the peer is done or silent too long."""
        request = None
        async with asyncio.timeout(CONNECTION_TIMEOUT_S):
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.EndOfMessage):
                    return request
                elif isinstance(event, h11.ConnectionClosed):
                    return None

    async def _answer(self, request: h11.Request, client_host: str) -> tuple[int, bytes, str]:
        method, path = request.method.decode(), request.target.decode("latin-1").split("?", 1)[0]
        text = "text/plain; charset=utf-8"
        if method == "POST" and path == "/reload" and self.reload is not None:
            authorization = next((value.decode("latin-1") for name, value in request.headers if name == b"authorization"), None)
            if not self.may_reload(client_host, authorization):
                refused = {"reloaded": False, "message": "POST /reload answers loopback callers only (or those with the reload token)"}
                return 403, json.dumps(refused).encode(), "application/json"
            ok, message = await asyncio.to_thread(self.reload)  # waits on the gRPC loop: never on this one
            return (200 if ok else 422), json.dumps({"reloaded": ok, "message": message}).encode(), "application/json"
        if method != "GET":
            return 404, b"not found\n", text
        if path == "/metrics":
            return 200, generate_latest(self.runtime.metrics.registry), CONTENT_TYPE_LATEST
        if path == "/healthz":
            return 200, b"ok\n", text
        if path == "/readyz":
            runtime = self.runtime
            if runtime.ready:
                notes = "".join(f"{part}: {note}\n" for part, note in sorted(runtime.notes.items()))
                return 200, f"ready\n{notes}".encode(), text
            reasons = "".join(f"{part}: {problem}\n" for part, problem in sorted(runtime.problems.items())) or "not serving yet\n"
            return 503, f"not ready\n{reasons}".encode(), text
        return 404, b"not found: try /metrics, /healthz, /readyz, POST /reload\n", text
