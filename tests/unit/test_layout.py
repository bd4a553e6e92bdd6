"""How the package hangs together: what a sidecar loads, no module importing its way back to itself, no function longer than a screen."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "extproc"


def test_the_sidecar_and_the_command_line_load_no_mock_provider():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, extproc.cli, extproc.sidecar; print(sorted(m for m in sys.modules if m.startswith('extproc.mock')))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert loaded == "[]", "the mocks are for `extproc mock` and `up --mock-providers` only"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules `path` imports anywhere: at load, in a function, or for type checking only (an import
    circle held open by `if TYPE_CHECKING` is still a circle to a reader, and to a static checker)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        for item in ast.walk(node):
            if isinstance(item, ast.ImportFrom):
                base = item.module or ""
                if item.level:
                    anchor = package.split(".")[: len(package.split(".")) - (item.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in item.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(item, ast.Import):
                found.update(alias.name for alias in item.names)
    return {name for name in found if name in modules and name != module}


def test_no_module_imports_its_way_back_to_itself():
    paths = list(PACKAGE.rglob("*.py"))
    modules = {_module(path) for path in paths}
    graph = {_module(path): _imports(path, modules) for path in paths}

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name])
        return seen

    circles = sorted(name for name in graph if name in reaches(name))
    assert circles == [], f"modules in an import circle: {circles}"


def test_no_function_is_longer_than_a_screen():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60
    ]
    assert long == [], "split these: " + "; ".join(long)
