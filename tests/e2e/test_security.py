"""Who may reach what: the sidecar's gRPC service trusts only its Envoy.

The ext_proc service hands out provider keys, and the access-log service moves
cooldowns: a Unix socket only the pod's user can open, or TCP with mutual TLS.
"""

import os
import re
import signal
import stat
import subprocess
import sys

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .harness import certificates, chat, free_port, gateway_config, provider, wait_port

GPT4 = "openai/gpt-4"


def serve(config_path, *args: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "extproc", "serve", str(config_path), "--metrics-port", "0", *args], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if "serving ext_proc" not in line:
        process.kill()
        raise AssertionError(f"serve did not start: {line!r}, exit {process.wait()}")
    return process


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0


def health_check(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3).status


def test_the_unix_socket_is_only_for_the_pods_user(mocks, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(gateway_config(provider("p", GPT4, mocks.start("p")))))
    socket_path = tmp_path / "run" / "sidecar.sock"
    process = serve(config, "--listen", f"unix:{socket_path}")
    try:
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "run" / "sidecar-bulk.sock").st_mode) == 0o600, "the bulk lane's socket too"
    finally:
        stop(process)


@pytest.mark.parametrize("listen, extra", [("127.0.0.1:{port}", ()), ("0.0.0.0:{port}", ("--insecure-tcp",))], ids=["no-flag", "not-loopback"])
def test_plain_tcp_is_refused_unless_loopback_and_asked_for(tmp_path, listen, extra):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(gateway_config()))
    result = subprocess.run([sys.executable, "-m", "extproc", "serve", str(config), "--listen", listen.format(port=free_port()), *extra], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "refusing to serve ext_proc on plain TCP" in result.stderr and "mutual TLS" in result.stderr


def test_tcp_with_mutual_tls_serves_envoy_and_refuses_a_client_without_a_certificate(mocks, bare_envoy, tmp_path):
    pki = certificates(tmp_path)
    upstream = mocks.start("p")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(gateway_config(provider("p", GPT4, upstream, access_key="sk-mtls"))))
    port = free_port()
    process = serve(config, "--listen", f"127.0.0.1:{port}", "--tls-cert", pki["cert"], "--tls-key", pki["key"], "--client-ca", pki["ca"])
    try:
        wait_port(port)
        with open(pki["ca"], "rb") as handle:
            ca = handle.read()
        with grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(root_certificates=ca)) as channel, pytest.raises(grpc.RpcError):
            health_check(channel)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError):
            health_check(channel)
        with open(pki["client_key"], "rb") as key, open(pki["client_cert"], "rb") as cert:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key.read(), certificate_chain=cert.read())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            assert health_check(channel) == health_pb2.HealthCheckResponse.SERVING

        rendered = subprocess.run(
            [sys.executable, "-m", "extproc", "render", str(config), "--sidecar", f"127.0.0.1:{port}",
             "--sidecar-tls-cert", pki["client_cert"], "--sidecar-tls-key", pki["client_key"], "--sidecar-ca", pki["ca"]],
            capture_output=True, text=True, timeout=30,
        )
        assert rendered.returncode == 0, rendered.stderr
        envoy = bare_envoy(yaml.safe_load(rendered.stdout))
        answer = chat(envoy.port, {"model": GPT4})
        assert answer.status == 200 and upstream.received[-1].header("authorization") == "Bearer sk-mtls"
        assert re.search(r"sk-mtls", rendered.stdout) is None
    finally:
        stop(process)


def test_post_reload_with_a_token_file_needs_the_token(mocks, gateway, tmp_path):
    from .harness import request

    token = tmp_path / "reload-token"
    token.write_text("t0k3n\n")
    gw = gateway(gateway_config(provider("p", GPT4, mocks.start("p"))), "--reload-token-file", str(token))
    refused = request(gw.metrics_port, "POST", "/reload")
    assert refused.status == 403 and refused.json()["reloaded"] is False
    assert request(gw.metrics_port, "POST", "/reload", headers={"authorization": "Bearer wrong"}).status == 403
    accepted = request(gw.metrics_port, "POST", "/reload", headers={"authorization": "Bearer t0k3n"})
    assert accepted.status == 200 and accepted.json() == {"reloaded": True, "message": "unchanged"}
    assert gw.get("/metrics").status == 200 and gw.get("/readyz").status == 200, "scrapes and probes need no token"


def test_what_a_client_sends_cannot_reach_past_the_provider_or_its_endpoints(mocks, gateway):
    from .harness import request

    upstream = mocks.start("p")
    gw = gateway(gateway_config(provider("p", GPT4, upstream, base_url=f"http://127.0.0.1:{upstream.port}/tenant-a", access_key="sk-a")))
    body = b'{"model": "openai/gpt-4"}'
    for method, path, status in (
        ("POST", "/v1/../../tenant-b/v1/chat/completions", 400),
        ("POST", "/v1/%2e%2e/%2e%2e/tenant-b/v1/chat/completions", 400),
        ("POST", "/v1%2F..%2Ftenant-b/chat/completions", 400),
        ("GET", "/admin", 404),
        ("DELETE", "/v1/files/file-123", 404),
        ("DELETE", "/v1/chat/completions", 405),
    ):
        answer = request(gw.port, method, path, body, {"content-type": "application/json"})
        assert answer.status == status, (method, path, answer.status, answer.body)
    assert upstream.received == [], "none of them reached the provider, with or without its key"

    answer = request(gw.port, "POST", "/v1/chat/completions", body, {"content-type": "application/json", "x-envoy-original-path": "/elsewhere", "x-request-id": "mine"})
    assert answer.status == 200
    seen = upstream.received[-1]
    assert seen.path == "/tenant-a/v1/chat/completions"
    assert seen.header("x-envoy-original-path") is None
    assert seen.header("x-request-id") not in (None, "mine"), "Envoy's own request id, not the client's"
    assert answer.headers["x-request-id"] == seen.header("x-request-id"), "and the client is told which"

    underscored = request(gw.port, "POST", "/v1/chat/completions", body, {"content-type": "application/json", "x_api_key": "k"})
    assert underscored.status == 400


def test_a_request_envoy_accepts_is_never_failed_by_what_the_gateway_adds(mocks, gateway):
    upstream = mocks.start("p")
    gw = gateway(gateway_config(provider("p", GPT4, upstream, access_key="sk-a", headers={f"x-extra-{index}": "v" for index in range(8)})))
    many = {f"x-client-{index}": "v" for index in range(99)}
    answer = chat(gw.port, {"model": GPT4}, many)
    assert answer.status == 200, answer.body
    assert upstream.received[-1].header("x-extra-7") == "v" and upstream.received[-1].header("x-client-98") == "v"
    too_many = {f"x-client-{index}": "v" for index in range(115)}
    answer = chat(gw.port, {"model": GPT4}, too_many)
    assert answer.status == 431 and answer.json()["error"]["code"] == "too_many_headers"


def test_keys_never_appear_in_logs_metrics_or_envoys_config_even_at_trace(mocks, gateway, monkeypatch, tmp_path):
    from extproc import envoyadmin

    from .harness import request

    monkeypatch.setenv("SECRET_B", "sk-from-env-SECRETKEY-b")
    primary, secondary = mocks.start("primary", status=429), mocks.start("secondary")
    config = gateway_config(
        provider("a", GPT4, primary, access_key="sk-plain-SECRETKEY-a"),
        provider("b", GPT4, secondary, access_key="$SECRET_B", headers={"x-org-token": "org-SECRETKEY-c"}),
    )
    config["cooldown"] = {"enabled": False}
    gw = gateway(config, "--envoy-log-level", "trace")
    client_keys = {"authorization": "Bearer client-SECRETKEY-d", "x-api-key": "client-SECRETKEY-e", "api-key": "client-SECRETKEY-f"}
    for _ in range(3):
        assert chat(gw.port, {"model": GPT4}, headers=client_keys).status == 200
    assert secondary.received[-1].header("authorization") == "Bearer sk-from-env-SECRETKEY-b", "the keys are in use"
    assert request(gw.metrics_port, "POST", "/reload").status == 200

    config_path = tmp_path / "rendered.yaml"
    config_path.write_text(yaml.safe_dump(config))
    rendered = subprocess.run([sys.executable, "-m", "extproc", "render", str(config_path)], capture_output=True, text=True, timeout=30, env={**os.environ, "SECRET_B": "sk-from-env-SECRETKEY-b"})
    assert rendered.returncode == 0, rendered.stderr
    dump = envoyadmin._call(gw.admin_url, "GET", "/config_dump?include_eds").decode()
    places = {"logs (trace)": gw.logs(), "/metrics": gw.get("/metrics").body.decode(), "config_dump": dump, "render": rendered.stdout + rendered.stderr}
    assert "[trace]" in places["logs (trace)"] and "[debug]" in places["logs (trace)"], "Envoy did log at trace"
    leaks = {where: text.count("SECRETKEY") for where, text in places.items() if "SECRETKEY" in text}
    assert leaks == {}, leaks
