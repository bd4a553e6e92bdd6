"""https providers: Envoy verifies the provider's certificate and sends SNI and Host for it."""

import ssl

import pytest

from .harness import certificates, chat, gateway_config

GPT4 = "openai/gpt-4"


@pytest.fixture
def tls_files(tmp_path):
    return certificates(tmp_path)


@pytest.fixture
def https_mock(mocks, tls_files):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    server_names: list[str] = []
    context.sni_callback = lambda connection, name, _: server_names.append(name)
    mock = mocks.start("secure", tls=context)
    return mock, server_names


def test_https_provider_gets_sni_host_and_its_key(https_mock, tls_files, gateway):
    mock, server_names = https_mock
    gw = gateway(gateway_config({"name": "secure", "model": GPT4, "base_url": f"https://localhost:{mock.port}/api", "access_key": "sk-tls", "ca_file": str(tls_files["ca"])}))

    answer = chat(gw.port, {"model": GPT4, "messages": []})

    assert answer.status == 200, answer.body
    assert server_names == ["localhost"]
    received = mock.received[0]
    assert received.header("host") == f"localhost:{mock.port}"
    assert received.path == "/api/v1/chat/completions"
    assert received.header("authorization") == "Bearer sk-tls"


def test_an_untrusted_certificate_is_refused(https_mock, gateway):
    mock, _ = https_mock
    gw = gateway(gateway_config({"name": "secure", "model": GPT4, "base_url": f"https://localhost:{mock.port}"}))

    answer = chat(gw.port, {"model": GPT4, "messages": []})

    assert answer.status == 503
    assert answer.json()["error"]["type"] == "api_error"
    assert mock.received == [], "nothing is sent over a connection whose certificate did not verify"
