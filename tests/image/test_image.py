"""The image, built and run as users run it (`make image-test`, after `make test` in CI).

Built with podman from the Dockerfile, on a Debian bookworm root made with
debootstrap and imported as the base: no registry here serves the pinned
python image, so CI's base is a Debian-built stand-in for it (Python 3.11 too).
From the image: `extproc check`, the user it runs as, its HEALTHCHECK, `up
--mock-providers` with every demo model of config_failover.yaml, and the
compose topology: the mocks, the sidecar and Envoy as separate containers with
the commands docker-compose.yaml gives them, sharing the socket volume.
Containers use the host's network (loopback), so the compose file's service
names are replaced by 127.0.0.1; Redis and Jaeger (images no registry here
serves) are left out: cooldowns stay per process, spans are not collected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from extproc.config.envsubst import expand

#: Building the base and the images is part of the first test's time: more than the suite's 300 s per test.
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
BASE = "localhost/extproc-base:bookworm"
IMAGE = "localhost/extproc:image-test"
PODMAN = ["podman", "--storage-driver", "vfs"]
#: What these machines allow a container: runc (crun is refused), and limits under the host's.
RUN_ANYWHERE = [*PODMAN, "run", "--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1000:1000"]
RUN = [*RUN_ANYWHERE, "--network", "host"]
DEMO_MODELS = ("openai/gpt-4", "gpt-4o", "gpt-4o-mini", "vertex_ai/claude-sonnet-4@20250514", "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0")
#: The demo's answering provider per model: each first provider answers 429 (the mocks of config_failover.yaml).
ANSWERED_BY = {"openai/gpt-4": "secondary", "gpt-4o": "claude", "gpt-4o-mini": "bedrock", DEMO_MODELS[3]: "vertex", DEMO_MODELS[4]: "bedrock"}
#: The demo key's token_uri is 127.0.0.1:8088, the Vertex mock's port in config_failover.yaml.
CONFIG_MOUNTS = [
    "-v", f"{ROOT / 'config_failover.yaml'}:/etc/extproc/config.yaml:ro",
    "-v", f"{ROOT / 'deploy/demo/vertex-service-account.json'}:/etc/extproc/vertex-service-account.json:ro",
    "-e", "VERTEX_CREDENTIALS=/etc/extproc/vertex-service-account.json",
]  # fmt: skip


def run(command: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command[:6])} … failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result


def install_tools() -> None:
    """podman, runc and debootstrap from Debian's packages, when missing (CI runs as root)."""
    if all(shutil.which(tool) for tool in ("podman", "runc", "debootstrap")):
        return
    assert os.geteuid() == 0, "podman, runc and debootstrap are missing: `apt-get install podman runc debootstrap`"
    run(["apt-get", "update", "-qq"])
    run(["apt-get", "install", "-y", "-qq", "podman", "runc", "debootstrap"], timeout=900)


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> str:
    install_tools()
    if run([*PODMAN, "image", "exists", BASE], check=False).returncode != 0:
        root = tmp_path_factory.mktemp("base") / "root"
        packages = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
        run(["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(root), "http://deb.debian.org/debian"], timeout=1200)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([*PODMAN, "import", "-", BASE], stdin=tar.stdout, capture_output=True, text=True, timeout=600)
        tar.wait()
        assert imported.returncode == 0, imported.stderr
    build = [*PODMAN, "build", "--format", "docker", "--isolation", "chroot", "--network", "host", "-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    run([*build, "--build-arg", f"PYTHON_IMAGE={BASE}", "-t", IMAGE, str(ROOT)], timeout=1800)
    return IMAGE


@pytest.fixture
def containers():
    """Start containers in the background; every one is stopped and removed after the test, its volumes too."""
    started: list[str] = []
    volumes: list[str] = []

    def start(*arguments: str) -> str:
        name = f"extproc-test-{uuid.uuid4().hex[:8]}"
        run([*RUN, "-d", "--name", name, *arguments])
        started.append(name)
        return name

    def volume() -> str:
        name = f"extproc-run-{uuid.uuid4().hex[:8]}"
        run([*PODMAN, "volume", "create", name])
        volumes.append(name)
        return name

    start.volume = volume  # type: ignore[attr-defined]
    yield start
    for name in started:
        run([*PODMAN, "rm", "-f", "-t", "1", name], check=False)
    for name in volumes:
        run([*PODMAN, "volume", "rm", "-f", name], check=False)


def get(url: str, timeout: float = 2) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def post(path: str, payload: dict) -> tuple[int, dict[str, str], dict]:
    request = urllib.request.Request(f"http://127.0.0.1:12000{path}", json.dumps(payload).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, {key.lower(): value for key, value in answer.getheaders()}, json.loads(answer.read())


def wait_until(ready, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f}s"
        time.sleep(0.3)


def healthcheck(image: str) -> list[str]:
    """The image's HEALTHCHECK command (`CMD` form: the program and its arguments)."""
    [inspected] = json.loads(run([*PODMAN, "image", "inspect", image]).stdout)
    test = (inspected.get("Healthcheck") or inspected["Config"].get("Healthcheck") or {}).get("Test", [])
    assert test[:1] == ["CMD"], inspected.get("Healthcheck")
    return test[1:]


def assert_every_demo_model_answers() -> None:
    for model in DEMO_MODELS:
        status, headers, body = post("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and headers["x-arch-llm-provider"] == ANSWERED_BY[model], (model, headers)
        assert body["choices"][0]["message"]["content"], body
    status, headers, body = post("/v1/messages", {"model": "openai/gpt-4", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and body["type"] == "message" and body["content"][0]["text"].startswith("[secondary]"), body


def test_check_validates_the_demo_config_as_a_non_root_user_with_a_healthcheck(image):
    checked = run([*RUN, "--rm", *CONFIG_MOUNTS, image, "check", "/etc/extproc/config.yaml"])
    assert "config.yaml: ok" in checked.stdout and "model vertex_ai/claude-sonnet-4@20250514: vertex" in checked.stdout
    assert run([*RUN, "--rm", "--entrypoint", "id", image, "-u"]).stdout.strip() == "10001"
    assert "/healthz" in " ".join(healthcheck(image)), "the image keeps its HEALTHCHECK (built in docker format)"


def test_up_with_mock_providers_serves_every_demo_model_and_its_healthcheck_passes(image, containers):
    name = containers(*CONFIG_MOUNTS, image, "up", "/etc/extproc/config.yaml", "--mock-providers")
    wait_until(lambda: get("http://127.0.0.1:9092/readyz")[0] == 200, "the gateway ready")

    assert_every_demo_model_answers()
    assert run([*PODMAN, "exec", name, *healthcheck(image)], check=False).returncode == 0, "the HEALTHCHECK command passes"


#: Stand-ins for the compose file's services whose images no registry here serves.
REDIS_STAND_IN = "localhost/extproc-redis:bookworm"
#: An OTLP/HTTP endpoint that keeps what it is sent (Jaeger's role in the compose file: Envoy exports its spans there).
OTLP_CATCHER = """
import http.server, os
class Catch(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with open(os.path.join("/spans", f"{self.path.strip('/').replace('/', '_')}-{len(os.listdir('/spans'))}"), "wb") as out:
            out.write(body)
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 4318), Catch).serve_forever()
"""


@pytest.fixture(scope="session")
def redis_image(image) -> str:
    """Debian's redis-server on the same base (no registry here serves the compose file's `redis` image)."""
    if run([*PODMAN, "image", "exists", REDIS_STAND_IN], check=False).returncode != 0:
        recipe = f"FROM {BASE}\nRUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*\n"
        built = subprocess.run([*PODMAN, "build", "--isolation", "chroot", "--network", "host", "-t", REDIS_STAND_IN, "-f", "-", str(ROOT / "tests" / "image")], input=recipe, capture_output=True, text=True, timeout=900)
        assert built.returncode == 0, built.stderr[-3000:]
    return REDIS_STAND_IN


def test_the_compose_topology_as_docker_compose_declares_it(image, redis_image, containers, tmp_path):
    """Every service of docker-compose.yaml, by its name on one network, with its command, environment, volumes and ports."""
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    network = f"extproc-compose-{uuid.uuid4().hex[:8]}"
    run([*PODMAN, "network", "create", network])
    volumes = {name: containers.volume() for name in compose.get("volumes", {})}
    spans = tmp_path / "spans"
    spans.mkdir()
    spans.chmod(0o777)
    try:
        last = ("extproc", "envoy")  # what they depend on first, as compose's depends_on has it
        for name in [name for name in compose["services"] if name not in last] + list(last):
            service = compose["services"][name]
            options = [*RUN_ANYWHERE, "-d", "--network", network, "--name", name, "--no-healthcheck"]
            for key, value in (service.get("environment") or {}).items():
                options += ["-e", f"{key}={expand(str(value), os.environ)}"]  # compose's ${VAR:-default}, as compose expands it
            for mount in service.get("volumes") or []:
                source, _, target = mount.partition(":")
                options += ["-v", f"{volumes.get(source) or (ROOT / source).resolve()}:{target}"]
            for port in service.get("ports") or []:
                options += ["-p", f"127.0.0.1:{port}"]
            if name == "redis":  # Debian's redis-server listens on loopback and guards it unless told otherwise
                run([*options, redis_image, *service["command"], "--bind", "0.0.0.0", "--protected-mode", "no"])
            elif name == "jaeger":
                run([*options, "-v", f"{spans}:/spans", "--entrypoint", "python", image, "-c", OTLP_CATCHER])
            else:
                entrypoint = ["--entrypoint", service["entrypoint"][0]] if service.get("entrypoint") else []
                run([*options, *entrypoint, image, *service.get("command", [])])
            if name == "extproc":
                wait_until(lambda: get("http://127.0.0.1:9092/readyz") == (200, b"ready\n"), "the sidecar ready, with nothing to note (Redis reached, every credential held)")
        wait_until(lambda: get("http://127.0.0.1:9902/stats/prometheus")[0] == 200, "Envoy serving")
        wait_until(lambda: _answers("openai/gpt-4"), "Envoy routing with the sidecar's routes")

        assert_every_demo_model_answers()
        metrics = get("http://127.0.0.1:9092/metrics")[1].decode()
        assert "extproc_shared_state_up 1.0" in metrics, "the sidecar shares its cooldowns through the redis service"
        wait_until(lambda: any(path.name.startswith("v1_traces") for path in spans.iterdir()), "Envoy's spans at the jaeger service", timeout=15)
    finally:
        for name in compose["services"]:
            run([*PODMAN, "rm", "-f", "-t", "1", name], check=False)
        run([*PODMAN, "network", "rm", "-f", network], check=False)


def _answers(model: str) -> bool:
    try:
        return post("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]})[0] == 200
    except OSError:
        return False
