"""`extproc preflight` against real local servers: UP only when a provider really answers below 500."""

import socket
import subprocess
import sys
import threading

import pytest
import yaml

from .harness import free_port, gateway_config, provider


def preflight(tmp_path, *providers: dict, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(gateway_config(*providers)))
    return subprocess.run([sys.executable, "-m", "extproc", "preflight", str(config), "--timeout", "1", *args], capture_output=True, text=True, timeout=60)


def test_missing_config_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "extproc", "preflight", str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot read the file" in result.stderr


def test_connection_refused_is_down(tmp_path):
    result = preflight(tmp_path, provider("gone", "openai/gpt-4", port=free_port()))
    assert result.returncode == 70
    assert result.stdout.startswith("DEP-DOWN:gone connection refused")


@pytest.mark.parametrize(("status", "code", "line"), [(401, 0, "UP needs-key (HTTP 401"), (200, 0, "UP needs-key (HTTP 200"), (503, 70, "DEP-DOWN:needs-key HTTP 503")])
def test_status_decides(mocks, tmp_path, status, code, line):
    mock = mocks.start("needs-key", status=status)
    result = preflight(tmp_path, provider("needs-key", "openai/gpt-4", mock, access_key="sk-never-sent"))
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout.startswith(line)
    assert mock.received[0].path == "/v1/models"
    assert mock.received[0].header("authorization") is None, "no key unless --with-keys"


def test_with_keys_sends_the_providers_key(mocks, tmp_path):
    mock = mocks.start("keyed")
    assert preflight(tmp_path, provider("keyed", "openai/gpt-4", mock, access_key="sk-sent"), args=("--with-keys",)).returncode == 0
    assert mock.received[0].header("authorization") == "Bearer sk-sent"


def test_a_silent_server_times_out_as_down(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    try:
        result = preflight(tmp_path, provider("silent", "openai/gpt-4", port=listener.getsockname()[1]))
    finally:
        listener.close()
        for connection, _ in accepted:
            connection.close()
    assert result.returncode == 70
    assert result.stdout.startswith("DEP-DOWN:silent timed out after 1s")


def test_one_down_among_up_fails_the_gate(mocks, tmp_path):
    mock = mocks.start("fine")
    result = preflight(tmp_path, provider("fine", "openai/gpt-4", mock), provider("gone", "openai/gpt-4", port=free_port()))
    assert result.returncode == 70
    assert result.stdout.splitlines()[0].startswith("UP fine") and result.stdout.splitlines()[1].startswith("DEP-DOWN:gone")
