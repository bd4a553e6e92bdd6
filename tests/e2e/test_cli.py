"""The command line as users run it: check, serve beside a separate Envoy, graceful stop."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.cli import log_formatter

from .harness import chat, gateway_config, provider, request, wait_for

GPT4 = "openai/gpt-4"


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "extproc", *args], capture_output=True, text=True, timeout=60, **kwargs)


def test_check_passes_a_good_file_and_lists_every_problem_of_a_bad_one(tmp_path):
    good = run_cli("check", "config_failover.yaml")
    assert good.returncode == 0, good.stderr
    assert "model openai/gpt-4: primary -> secondary" in good.stdout
    assert "model openai/gpt-4o: gpt-4o -> claude (Anthropic's Messages API)" in good.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners: [{type: model, port: 99999}]\nmodel_providers: [{model: gpt-4, base_url: 'ftp://x'}]\n")
    result = run_cli("check", str(bad))
    assert result.returncode == 2
    assert f"{bad}: invalid configuration" in result.stderr
    for expected in ("listeners[0].port", "model_providers[0].model", "model_providers[0].base_url"):
        assert expected in result.stderr
    missing = run_cli("check", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 2 and "cannot read the file" in missing.stderr


def test_serve_beside_a_separately_started_envoy_fails_over_and_rolls_back_what_envoy_rejects(mocks, bare_envoy, tmp_path):
    primary = mocks.start("primary", status=429)
    secondary = mocks.start("secondary")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(gateway_config(provider("primary", GPT4, primary, access_key="k1"), provider("secondary", GPT4, secondary, access_key="k2"))))
    socket_path = tmp_path / "sidecar.sock"
    admin = f"unix:{tmp_path / 'envoy-admin.sock'}"
    xds = tmp_path / "xds"
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "extproc", "serve", str(config), "--listen", f"unix:{socket_path}", "--metrics-port", "0", "--xds-dir", str(xds), "--envoy-admin", admin],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = [sidecar.stdout.readline() for _ in range(2)]
        assert "serving ext_proc on unix:" in lines[0], lines
        metrics_port = int(re.search(r":(\d+) \(/metrics", lines[1]).group(1))
        rendered = run_cli("render", str(config), "--sidecar", f"unix:{socket_path}", "--xds-dir", str(xds), "--admin-address", admin)
        assert rendered.returncode == 0, rendered.stderr
        envoy = bare_envoy(yaml.safe_load(rendered.stdout))

        answer = chat(envoy.port, {"model": GPT4, "messages": []})

        assert answer.status == 200 and answer.headers["x-arch-llm-provider"] == "secondary"
        assert secondary.received[0].header("authorization") == "Bearer k2"
        assert len(primary.received) == 1

        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.SERVING

        # A reload Envoy rejects (a CA file that is no certificate passes our checks, not Envoy's) is rolled back.
        not_a_certificate = tmp_path / "ca.pem"
        not_a_certificate.write_text("this is not PEM\n")
        rejected = {"name": "secure", "model": "openai/gpt-4o-mini", "base_url": "https://localhost:1", "ca_file": str(not_a_certificate)}
        config.write_text(yaml.safe_dump(gateway_config(provider("primary", GPT4, primary, access_key="k1"), provider("secondary", GPT4, secondary, access_key="k2"), rejected)))
        answer = request(metrics_port, "POST", "/reload")
        assert answer.status == 422 and "Envoy rejected the new CDS resources" in answer.json()["message"]
        assert chat(envoy.port, {"model": "openai/gpt-4o-mini"}).status == 404, "the sidecar kept its snapshot"
        assert chat(envoy.port, {"model": GPT4}).headers["x-arch-llm-provider"] == "secondary", "Envoy kept the previous routes and clusters"
    finally:
        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(20) == 0


def test_sigterm_drains_a_request_in_flight_before_stopping(mocks, gateway):
    slow = mocks.start("slow", delay_s=1.5)
    gw = gateway(gateway_config(provider("slow", GPT4, slow)))
    results = []
    worker = threading.Thread(target=lambda: results.append(chat(gw.port, {"model": GPT4})))
    worker.start()
    wait_for(lambda: slow.received)

    started = time.monotonic()
    gw.process.send_signal(signal.SIGTERM)
    worker.join(20)

    assert results and results[0].status == 200, "the request in flight finishes"
    assert gw.process.wait(20) == 0
    assert time.monotonic() - started >= 1.0, "Envoy was not stopped before the request finished"
    assert "stopping: draining in-flight requests" in gw.process.stdout.read()


def test_a_drain_turns_readiness_off_at_once_and_resets_no_kept_alive_connection(mocks, gateway):
    """Kept-alive clients sending back to back while the gateway stops: every request sent is answered.

    During the drain every answer says `connection: close`; once the listeners close, a new
    connection is refused (the client's cue to go elsewhere), never cut in the middle of a request.
    """
    import http.client

    main = mocks.start("main")
    gw = gateway(gateway_config(provider("main", GPT4, main)), "--drain-time", "2")
    body = json.dumps({"model": GPT4}).encode()
    outcomes: list[tuple[float, str]] = []
    stopping = threading.Event()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        served = 0  # answers on the current connection
        while True:
            try:
                if connection.sock is None:
                    connection.connect()
                    served = 0
            except (ConnectionRefusedError, ConnectionResetError):  # reset: the listener closed while the kernel held the connection
                outcomes.append((time.monotonic(), "refused"))
                return
            try:
                connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
                answer = connection.getresponse()
                answer.read()
                served += 1
                outcomes.append((time.monotonic(), f"{answer.status} {answer.getheader('connection', 'keep-alive')}"))
            except (OSError, http.client.HTTPException) as exc:
                # A connection the listener had not accepted yet when it closed is reset by the kernel: the same as refused.
                outcomes.append((time.monotonic(), f"cut: {exc!r}" if served else "refused"))
                connection.close()
                if not served:
                    return
                continue
            if answer.getheader("connection") == "close":
                connection.close()
                if not stopping.is_set():
                    return

    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    wait_for(lambda: len(outcomes) > 200)
    signalled = time.monotonic()
    stopping.set()
    gw.process.send_signal(signal.SIGTERM)
    wait_for(lambda: gw.get("/readyz").status == 503, timeout=1)
    assert b"draining" in gw.get("/readyz").body
    for thread in clients:
        thread.join(30)

    assert gw.process.wait(30) == 0
    assert not [outcome for _, outcome in outcomes if outcome.startswith("cut")], "a request on a kept-alive connection was cut"
    refused = [moment - signalled for moment, outcome in outcomes if outcome == "refused"]
    assert min(refused, default=2.0) > 1.5, "connections were refused only once the drain time (2 s) was over"
    during = [outcome for moment, outcome in outcomes if moment > signalled + 0.5 and not outcome.startswith("refused")]
    assert during and set(during) == {"200 close"}, "the listeners stayed open for the drain time, and told every client to close"
    assert {outcome for _, outcome in outcomes if outcome != "refused"} <= {"200 keep-alive", "200 close"}


def test_readyz_turns_200_only_once_the_listener_accepts(mocks, tmp_path):
    import socket
    import urllib.error
    import urllib.request

    from .harness import free_port

    main = mocks.start("main")
    config = gateway_config(provider("main", GPT4, main))
    listener_port, metrics_port = free_port(), free_port()
    config["listeners"][0]["port"] = listener_port
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "extproc", "up", str(path), "--metrics-port", str(metrics_port), "--drain-time", "0"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1) as answer:
                    ready = answer.status == 200
            except (urllib.error.URLError, ConnectionError):
                ready = False
            if ready:
                socket.create_connection(("127.0.0.1", listener_port), timeout=1).close()  # refused if ready came too soon
                break
            time.sleep(0.005)
        else:
            raise AssertionError("never ready")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_up_notices_a_dead_envoy_and_exits_non_zero(mocks, tmp_path):
    from .harness import GatewayProcess

    main = mocks.start("main")
    gw = GatewayProcess(gateway_config(provider("main", GPT4, main)), str(tmp_path))
    try:
        assert chat(gw.port, {"model": GPT4}).status == 200
        with open(f"/proc/{gw.process.pid}/task/{gw.process.pid}/children") as handle:
            envoy_pid = int(handle.read().split()[0])
        os.kill(envoy_pid, signal.SIGKILL)
        assert gw.process.wait(15) == 1, "up does not keep running without its Envoy"
    finally:
        gw.stop()
    assert "Envoy exited unexpectedly with status -9" in gw.logs()


def test_log_options_go_before_or_after_the_command_and_json_lines_have_stable_fields(tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text("listeners: [{type: model, port: 0}]\nmodel_providers: [{model: openai/gpt-4, base_url: 'http://127.0.0.1:1'}]\n")
    env = {**os.environ, "EXTPROC_LOG_LEVEL": "debug"}
    before = subprocess.run([sys.executable, "-m", "extproc", "--log-format", "json", "check", str(config)], capture_output=True, text=True, env=env)
    after = subprocess.run([sys.executable, "-m", "extproc", "check", str(config), "--log-format", "text", "--log-level", "error"], capture_output=True, text=True)
    wrong = subprocess.run([sys.executable, "-m", "extproc", "check", str(config)], capture_output=True, text=True, env={**os.environ, "EXTPROC_LOG_FORMAT": "xml"})
    assert before.returncode == after.returncode == 0
    assert wrong.returncode == 2 and "EXTPROC_LOG_FORMAT" in wrong.stderr
    record = logging.LogRecord("extproc.test", logging.WARNING, __file__, 1, "request %s went %s", ("r-1", "wrong"), None)
    record.request_id = "r-1"
    line = json.loads(log_formatter("json").format(record))
    assert {key: line[key] for key in ("level", "logger", "message", "request_id")} == {"level": "WARNING", "logger": "extproc.test", "message": "request r-1 went wrong", "request_id": "r-1"}
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$", line["time"])


def test_while_envoy_sheds_load_the_gateway_is_not_ready_and_says_why(mocks, gateway):
    main = mocks.start("main")
    gw = gateway(gateway_config(provider("main", "openai/gpt-4", main)), "--max-heap-mb", "1")  # Envoy alone starts above 1 MiB

    wait_for(lambda: gw.get("/readyz").status == 503)
    ready = gw.get("/readyz")
    answer = chat(gw.port, {"model": "openai/gpt-4", "messages": [{"role": "user", "content": "hi"}]})

    assert b"envoy overload: shedding load" in ready.body and b"1 MiB" in ready.body, ready.body
    assert answer.status == 503 and not main.received, "Envoy refused it: the gateway said so before a client had to find out"


def test_a_config_of_1500_providers_is_ready_and_serves_with_the_default_heap_budget(mocks, gateway):
    """The budget follows the config: with the fixed 200 MiB of before, Envoy shed every request at this size while /readyz said 200."""
    main = mocks.start("main", history=10)
    entries = [provider(f"m{model}-p{number}", f"openai/model-{model}", main, access_key="sk-1") for model in range(500) for number in range(3)]
    gw = gateway(gateway_config(*entries))

    wait_for(lambda: gw.get("/readyz").status == 200, timeout=60)
    answers = [chat(gw.port, {"model": f"openai/model-{model}", "messages": [{"role": "user", "content": "hi"}]}) for model in (0, 250, 499)]

    assert [answer.status for answer in answers] == [200, 200, 200], [answer.body for answer in answers]
    assert [answer.headers["x-arch-llm-provider"].split("-")[0] for answer in answers] == ["m0", "m250", "m499"]
