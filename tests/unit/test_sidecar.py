"""One running sidecar's health: a part that stops makes /readyz fail and say why; a reload never takes the watcher down; gRPC's own logs."""

import asyncio
import logging
import urllib.error
import urllib.request

from grpc._cython import cygrpc

from extproc.config import parse_config
from extproc.reload import Reloader
from extproc.server.app import quiet_peer_gone
from extproc.sidecar import Sidecar

CONFIG = parse_config("listeners: [{type: model, port: 0}]\nmodel_providers: [{name: a, model: openai/gpt-4, base_url: 'http://127.0.0.1:1'}]\n", "t.yaml", {})


def readyz(sidecar: Sidecar) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.metrics.port}/readyz", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_part_that_stops_on_an_error_makes_readyz_fail_and_say_why(tmp_path):
    async def scenario():
        sidecar = Sidecar(CONFIG, f"unix:{tmp_path}/s.sock", metrics_port=0)
        await sidecar.start()
        try:
            assert await asyncio.to_thread(readyz, sidecar) == (200, "ready\n")

            async def broken():
                raise OSError(28, "No space left on device")

            task = sidecar.spawn(broken(), "xds writer")
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0)
            return await asyncio.to_thread(readyz, sidecar)
        finally:
            await sidecar.stop(grace_s=0)

    status, body = asyncio.run(scenario())
    assert status == 503
    assert "xds writer: stopped: OSError(28, 'No space left on device')" in body


class ExplodingXds:
    def __init__(self):
        self.calls = 0

    async def transition(self, live, new, swap):
        self.calls += 1
        if self.calls == 1:
            raise OSError(28, "No space left on device")
        swap()


def test_an_unexpected_error_in_a_reload_is_counted_and_the_next_reload_works(tmp_path):
    path = tmp_path / "config.yaml"

    async def scenario():
        sidecar = Sidecar(CONFIG, f"unix:{tmp_path}/s.sock", metrics_port=0)
        reloader = Reloader(str(path), sidecar.runtime, ExplodingXds(), asyncio.get_running_loop())
        path.write_text("listeners: [{type: model, port: 0}]\nmodel_providers: []\n")
        first = await reloader.reload("test")
        second = await reloader.reload("test")
        return first, second, sidecar

    first, second, sidecar = asyncio.run(scenario())
    assert first == (False, "reload failed unexpectedly: OSError")
    assert second[0] is True and sidecar.runtime.store.current.providers == {}
    errors = sidecar.runtime.metrics.registry.get_sample_value("extproc_config_reloads_total", {"result": "error"})
    assert errors == 1


def test_post_reload_answers_loopback_callers_or_the_token_only():
    from extproc.observability.http import MetricsServer

    sidecar = Sidecar(CONFIG, "unix:/nonexistent/s.sock", metrics_port=0)
    open_server = MetricsServer(sidecar.runtime, "127.0.0.1", 0)
    assert open_server.may_reload("127.0.0.1", None) and open_server.may_reload("::1", None)
    assert not open_server.may_reload("10.1.2.3", None), "a caller from another address (a pod, the Service) is refused"
    with_token = MetricsServer(sidecar.runtime, "127.0.0.1", 0, reload_token="s3cret")
    assert with_token.may_reload("10.1.2.3", "Bearer s3cret")
    assert not with_token.may_reload("127.0.0.1", None) and not with_token.may_reload("127.0.0.1", "Bearer wrong")
    for server in (open_server, with_token):
        server.stop()


def test_idle_connections_never_keep_a_probe_out_and_are_closed_when_silent(monkeypatch):
    """Hundreds of idle connections (a flood, or leaky scrapers) cost no thread, and /healthz answers at once beside them."""
    import socket
    import threading
    import time

    from extproc.observability import http

    monkeypatch.setattr(http, "CONNECTION_TIMEOUT_S", 1.0)
    sidecar = Sidecar(CONFIG, "unix:/nonexistent/s.sock", metrics_port=0)
    server = http.MetricsServer(sidecar.runtime, "127.0.0.1", 0).start()
    try:
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        half_sent = idle[0]
        half_sent.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")  # and never finishes its request
        for _ in range(10):
            started = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=2) as answer:
                assert answer.status == 200 and answer.read() == b"ok\n"
            assert time.monotonic() - started < 0.5
        assert threading.active_count() == before, "no thread per connection"
        time.sleep(1.5)
        for connection in idle:
            connection.settimeout(2)
            assert connection.recv(1) == b"", "a silent connection is closed after CONNECTION_TIMEOUT_S"
            connection.close()
    finally:
        server.stop()


def _batch_error_record(operations: str, logger: str = "grpc._cython.cygrpc") -> logging.LogRecord:
    error = cygrpc.ExecuteBatchError(f'Failed "execute_batch": ({operations},)')
    return logging.LogRecord(logger, logging.ERROR, "server.pyx.pxi", 710, "ExecuteBatchError raised in core by servicer method", (), (type(error), error, None))


def test_a_closing_status_envoy_no_longer_wanted_is_debug_not_an_error(monkeypatch):
    status_only = "<grpc._cython.cygrpc.SendStatusFromServerOperation object at 0x7f>"
    monkeypatch.setattr(logging.getLogger("test.quiet.info"), "level", logging.INFO)
    monkeypatch.setattr(logging.getLogger("test.quiet.debug"), "level", logging.DEBUG)
    record = _batch_error_record(status_only, "test.quiet.info")
    assert quiet_peer_gone(record) is False and record.levelname == "DEBUG", "dropped below debug"
    assert quiet_peer_gone(_batch_error_record(status_only, "test.quiet.debug")) is True, "kept, as debug, when debug is on"


def test_a_failed_batch_that_carried_a_message_or_any_other_error_stays_an_error():
    record = _batch_error_record("<grpc._cython.cygrpc.SendMessageOperation object at 0x7e>, <grpc._cython.cygrpc.SendStatusFromServerOperation object at 0x7f>")
    assert quiet_peer_gone(record) is True and record.levelname == "ERROR"
    other = logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, "x", 1, "Unexpected error", (), (ValueError, ValueError("x"), None))
    assert quiet_peer_gone(other) is True and other.levelname == "ERROR"
