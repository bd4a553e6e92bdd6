"""Bad input gets an OpenAI-style JSON error and reaches no provider."""

import contextlib
import http.client
import json
import re

import pytest
import yaml

from extproc.config import parse_config
from extproc.render import MISSING_ROUTE_MESSAGE, RenderOptions, render

from .harness import chat, free_port, gateway_config, provider, request

GPT4 = "openai/gpt-4"


def assert_openai_error(answer, status: int, type_: str, code: str | None = None) -> dict:
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["type"] == type_
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture
def one_provider(mocks, gateway):
    main = mocks.start("main")
    gw = gateway(gateway_config(provider("main", GPT4, main), max_body_bytes="4KiB"))
    return gw, main


def test_body_not_json(one_provider):
    gw, main = one_provider
    answer = request(gw.port, "POST", "/v1/chat/completions", b'{"model": "openai/gpt-4", ', {"content-type": "application/json"})
    error = assert_openai_error(answer, 400, "invalid_request_error", "invalid_json")
    assert "JSON" in error["message"]
    assert main.received == []


def test_invalid_utf8_anywhere_in_the_body_is_not_json(one_provider):
    gw, main = one_provider
    body = b'{"model": "openai/gpt-4", "messages": [{"role": "user", "content": "caf\xe9 \xff"}]}'
    answer = request(gw.port, "POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    error = assert_openai_error(answer, 400, "invalid_request_error", "invalid_json")
    assert "UTF-8" in error["message"]
    assert main.received == [], "JSON must be UTF-8: a provider is never sent a body it would refuse"


def test_body_json_but_not_an_object(one_provider):
    gw, main = one_provider
    answer = request(gw.port, "POST", "/v1/chat/completions", b'["openai/gpt-4"]', {"content-type": "application/json"})
    assert_openai_error(answer, 400, "invalid_request_error")
    assert main.received == []


def test_unknown_model(one_provider):
    gw, main = one_provider
    answer = chat(gw.port, {"model": "openai/gpt-5", "messages": []})
    error = assert_openai_error(answer, 404, "invalid_request_error", "model_not_found")
    assert "openai/gpt-5" in error["message"] and GPT4 in error["message"]
    assert main.received == []


def test_model_missing_without_default(one_provider):
    gw, main = one_provider
    answer = chat(gw.port, {"messages": []})
    assert_openai_error(answer, 400, "invalid_request_error", "missing_model")
    assert main.received == []


def test_body_over_the_limit_with_content_length(one_provider):
    gw, main = one_provider
    answer = chat(gw.port, {"model": GPT4, "messages": [{"role": "user", "content": "x" * 8192}]})
    assert_openai_error(answer, 413, "invalid_request_error", "request_too_large")
    assert main.received == []


def test_body_over_the_limit_chunked(one_provider):
    gw, main = one_provider
    connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    body = b'{"model": "openai/gpt-4", "messages": [{"role": "user", "content": "' + b"x" * 20000 + b'"}]}'
    connection.request("POST", "/v1/chat/completions", body=iter([body[:1000], body[1000:]]), headers={"content-type": "application/json"}, encode_chunked=True)
    answer = connection.getresponse()
    payload = answer.read()
    connection.close()
    assert answer.status == 413
    assert answer.getheader("content-type") == "application/json"
    assert b'"request_too_large"' in payload
    assert main.received == []


def test_models_list_is_answered_from_the_config(mocks, gateway):
    main = mocks.start("main")
    other = mocks.start("other")
    gw = gateway(gateway_config(provider("main", GPT4, main), provider("other", "mistral/mistral-large", other)))

    answer = request(gw.port, "GET", "/v1/models")

    assert answer.status == 200
    listing = answer.json()
    assert listing["object"] == "list"
    assert [(item["id"], item["object"], item["owned_by"]) for item in listing["data"]] == [
        (GPT4, "model", "openai"),
        ("mistral/mistral-large", "model", "mistral"),
    ]
    assert main.received == [] and other.received == []


def render_for(config: dict, sidecar: str) -> dict:
    return render(parse_config(yaml.safe_dump(config), "test.yaml", {}), RenderOptions(sidecar=sidecar))


def test_sidecar_unreachable_fails_closed_with_503(mocks, bare_envoy):
    main = mocks.start("main")
    envoy = bare_envoy(render_for(gateway_config(provider("main", GPT4, main)), f"127.0.0.1:{free_port()}"))

    answer = chat(envoy.port, {"model": GPT4, "messages": []})

    assert_openai_error(answer, 503, "api_error")
    assert main.received == []


def test_catch_all_route_refuses_a_request_without_the_provider_header(mocks, bare_envoy):
    main = mocks.start("main")
    bootstrap = render_for(gateway_config(provider("main", GPT4, main)), "127.0.0.1:1")
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [item for item in hcm["http_filters"] if item["name"] != "extproc.router"]
    envoy = bare_envoy(bootstrap)

    answer = chat(envoy.port, {"model": GPT4, "messages": []})

    error = assert_openai_error(answer, 400, "invalid_request_error", "missing_provider_header")
    assert error["message"] == MISSING_ROUTE_MESSAGE
    assert main.received == []


def test_envoys_stats_are_served_for_scraping_and_nothing_else_of_its_admin(mocks, bare_envoy, tmp_path):
    main = mocks.start("main")
    stats_port = free_port()
    options = RenderOptions(sidecar=f"127.0.0.1:{free_port()}", admin_address=f"unix:{tmp_path}/admin.sock", envoy_stats_port=stats_port)
    bare_envoy(render(parse_config(yaml.safe_dump(gateway_config(provider("main", GPT4, main))), "test.yaml", {}), options))

    stats = request(stats_port, "GET", "/stats/prometheus")
    drain = request(stats_port, "POST", "/drain_listeners")
    dump = request(stats_port, "GET", "/config_dump")

    assert stats.status == 200 and b"envoy_cluster_upstream_cx_total" in stats.body
    assert b'envoy_cluster_name="provider"' in stats.body and b'envoy_cluster_name="chain"' not in stats.body, "no statistics of chain clusters"
    # Envoy puts what follows the first dot of a cluster's name (`provider.main.<hash>`) into the metric's name.
    named = (line.split("{")[0] for line in stats.body.decode().splitlines() if 'envoy_cluster_name="provider"' in line)
    provider_stats = {re.sub(r"^envoy_cluster_main_[0-9a-f]{10}_", "envoy_cluster_", name) for name in named}
    kept = {"upstream_rq_total", "upstream_rq_active", "upstream_cx_total", "upstream_cx_active", "upstream_cx_connect_fail", "upstream_cx_connect_timeout", "upstream_cx_connect_ms_bucket"}
    assert {f"envoy_cluster_{name}" for name in kept} <= provider_stats, "a provider's requests, connections and connect times"
    assert not {name for name in provider_stats if name.startswith(("envoy_cluster_lb_", "envoy_cluster_membership_", "envoy_cluster_circuit_breakers_"))}, "nothing a one-endpoint cluster says"
    assert len(provider_stats) < 30, sorted(provider_stats)
    assert drain.status == 404 and dump.status == 404, "the admin API's other endpoints stay unreachable"


def _raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library tidying them up); the status, headers and body of the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(ConnectionResetError):  # Envoy answers and closes before reading a too-large head to its end
            sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _length(received):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _length(received: bytes) -> int:
    head = received.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    return next((int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:")), 0)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /v1/models HTTP/1.1\r\nhost: gw\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        (b"GET /v1/models HTTP/1.1\r\nhost: gw\r\nx_api_key: k\r\n\r\n", 400),
        (b"GET /v1%2Fmodels HTTP/1.1\r\nhost: gw\r\n\r\n", 400),
        (b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n", 404),
    ],
    ids=["header-too-large", "underscore-header", "escaped-slash", "connect"],
)
def test_what_envoy_refuses_before_routing_is_json_too(one_provider, raw, status):
    gw, main = one_provider
    got, headers, body = _raw(gw.port, raw)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["code"]
    assert main.received == []
