"""Bad input gets an OpenAI-style JSON error and reaches no provider."""

import http.client

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
    hcm["http_filters"] = [item for item in hcm["http_filters"] if item["name"] != "envoy.filters.http.ext_proc"]
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
    assert drain.status == 404 and dump.status == 404, "the admin API's other endpoints stay unreachable"
