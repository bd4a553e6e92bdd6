"""One running sidecar's health: a part that stops makes /readyz fail and say why; a reload never takes the watcher down."""

import asyncio
import urllib.error
import urllib.request

from extproc.config import parse_config
from extproc.reload import Reloader
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
        server.httpd.server_close()


def test_idle_connections_hold_a_bounded_number_of_threads_and_time_out():
    import socket
    import threading
    import time

    from extproc.observability import http

    sidecar = Sidecar(CONFIG, "unix:/nonexistent/s.sock", metrics_port=0)
    server = http.MetricsServer(sidecar.runtime, "127.0.0.1", 0).start()
    try:
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
        time.sleep(0.5)
        assert threading.active_count() - before <= http.MAX_CONNECTIONS, "200 idle connections, a bounded number of threads"
        deadline = time.monotonic() + http.CONNECTION_TIMEOUT_S + 5
        while True:  # the idle ones are dropped after the timeout; then a scrape is served again
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the idle connections were not timed out"
                time.sleep(0.2)
        for connection in idle:
            connection.close()
    finally:
        server.stop()
