"""docker-compose's topology without containers: the same processes, commands and config, on loopback.

What differs from `docker compose up`, and only that: container paths map to
a temporary directory, service hostnames to 127.0.0.1, fixed ports to free
ones.
"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from .harness import chat, free_port, request, wait_port

ROOT = Path(__file__).resolve().parents[2]


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}`, from this environment."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda match: os.environ.get(match.group(1)) or match.group(2), value)


def test_compose_services_fail_over_as_declared(tmp_path, bare_envoy):
    services = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    paths = {"/run/extproc": str(run_dir)}
    for volume in (volume for service in services.values() for volume in service.get("volumes", ())):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            paths[target] = str(ROOT / source)

    def local(argument: str) -> str:
        for container_path, host_path in sorted(paths.items(), key=lambda item: -len(item[0])):
            argument = argument.replace(container_path, host_path)
        return argument

    processes: list[subprocess.Popen] = []
    try:
        addresses = {}
        for name in (service for service in services if service.startswith("mock-")):
            command = list(services[name]["command"])
            port = free_port()
            addresses[f"{name}:{command[command.index('--port') + 1]}"] = f"127.0.0.1:{port}"
            command[command.index("--port") + 1] = str(port)
            command[command.index("--host") + 1] = "127.0.0.1"
            command = [local(argument) for argument in command]
            processes.append(subprocess.Popen([sys.executable, "-m", "extproc", *command], stdout=subprocess.DEVNULL))
            wait_port(port)

        # The demo service account names mock-vertex's token endpoint by its compose host: a copy names the local port.
        account = json.loads(Path(paths["/etc/extproc/vertex-service-account.json"]).read_text())
        for service_address, local_address in addresses.items():
            account["token_uri"] = account["token_uri"].replace(service_address, local_address)
        paths["/etc/extproc/vertex-service-account.json"] = str(tmp_path / "vertex-service-account.json")
        Path(paths["/etc/extproc/vertex-service-account.json"]).write_text(json.dumps(account))

        environment = dict(os.environ)
        for key, value in services["extproc"]["environment"].items():
            value = interpolate(value)
            for service_address, local_address in addresses.items():
                value = value.replace(service_address, local_address)
            environment[key] = local(value)
        sidecar_command = [local(argument) for argument in services["extproc"]["command"]] + ["--metrics-port", "0"]
        sidecar = subprocess.Popen([sys.executable, "-m", "extproc", *sidecar_command], env=environment, stdout=subprocess.PIPE, text=True)
        processes.append(sidecar)
        assert "serving ext_proc" in sidecar.stdout.readline()

        bootstrap = yaml.safe_load(local((ROOT / "envoy/envoy.yaml").read_text()))
        for listener in bootstrap["static_resources"]["listeners"]:
            listener["address"]["socket_address"]["port_value"] = 0
        envoy = bare_envoy(bootstrap)
        healthcheck = [local(argument) for argument in services["envoy"]["healthcheck"]["test"][1:]]
        assert subprocess.run([sys.executable if healthcheck[0] == "python" else healthcheck[0], *healthcheck[1:]], timeout=10).returncode == 0, "Envoy's healthcheck (its admin socket)"

        answer = chat(envoy.port, {"model": "openai/gpt-4", "messages": [{"role": "user", "content": "hi"}]})

        assert answer.status == 200
        assert answer.headers["x-arch-llm-provider"] == "secondary"
        echo = answer.json()["echo"]
        assert echo["provider"] == "secondary"
        assert echo["headers"]["authorization"].startswith("Bearer secon"), "the secondary's own (demo) key"

        # Across vendors: gpt-4o's mock answers 429, Claude's (Anthropic's API) answers, translated back.
        answer = chat(envoy.port, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status == 200, answer.body
        assert answer.headers["x-arch-llm-provider"] == "claude"
        assert answer.json()["choices"][0]["message"]["content"] == "[claude] you said: hi"

        # Across clouds: gpt-4o-mini's mock answers 429, Bedrock's (checking SigV4) answers, translated back;
        # Vertex's answers with a token its own endpoint issued for the demo service account.
        answer = chat(envoy.port, {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status == 200, answer.body
        assert answer.headers["x-arch-llm-provider"] == "bedrock"
        assert answer.json()["choices"][0]["message"]["content"] == "[bedrock] you said: hi"
        answer = chat(envoy.port, {"model": "vertex_ai/claude-sonnet-4@20250514", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status == 200, answer.body
        assert answer.json()["choices"][0]["message"]["content"] == "[vertex] you said: hi"

        # The sidecar confirms updates through Envoy's admin socket on the shared volume: a reload applies.
        metrics_port = int(re.search(r":(\d+) \(/metrics", sidecar.stdout.readline()).group(1))
        answer = request(metrics_port, "POST", "/reload")
        assert answer.status == 200, answer.body
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(20)
