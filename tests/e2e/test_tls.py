"""https providers: Envoy verifies the provider's certificate and sends SNI and Host for it."""

import datetime
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .harness import chat, gateway_config

GPT4 = "openai/gpt-4"


def _certificate(subject: str, issuer_key, issuer_name, public_key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
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


@pytest.fixture
def tls_files(tmp_path):
    """A throwaway CA and a server certificate for localhost, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "extproc test CA")])
    ca_cert = _certificate("extproc test CA", ca_key, ca_name, ca_key.public_key(), ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate("localhost", ca_key, ca_name, server_key.public_key(), ca=False)
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server.key"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


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
