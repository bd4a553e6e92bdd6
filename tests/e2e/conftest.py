import pytest

from .harness import EnvoyProcess, GatewayProcess, MockServers

pytestmark = pytest.mark.e2e


@pytest.fixture
def mocks():
    servers = MockServers()
    yield servers
    servers.close()


@pytest.fixture
def gateway(tmp_path):
    """Start `extproc up` on a config dict; every gateway started is stopped after the test."""
    started: list[GatewayProcess] = []

    def start(config: dict, *extra_args: str, **how) -> GatewayProcess:
        directory = tmp_path / f"gateway{len(started)}"
        directory.mkdir()
        process = GatewayProcess(config, str(directory), extra_args, **how)
        started.append(process)
        return process

    yield start
    for process in started:
        code = process.stop()
        assert code == 0, f"extproc up exited with {code} on SIGTERM:\n{process.logs()}"


@pytest.fixture
def bare_envoy(tmp_path):
    started: list[EnvoyProcess] = []

    def start(bootstrap: dict) -> EnvoyProcess:
        directory = tmp_path / f"envoy{len(started)}"
        directory.mkdir()
        process = EnvoyProcess(bootstrap, str(directory))
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
