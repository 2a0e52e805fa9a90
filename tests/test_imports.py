"""The package's shape: no import cycle anywhere, and a client that does not load the server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import agentwire

PACKAGE = Path(agentwire.__file__).parent


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, read from the source: every import statement,
    also those under `if TYPE_CHECKING:` and inside functions (a deferred import is still a cycle)."""
    modules: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                for alias in node.names:
                    # `from package import module` names the module; `from module import name`, the module.
                    if f"{base}.{alias.name}" in modules:
                        edges.add(f"{base}.{alias.name}")
                    elif base in modules:
                        edges.add(base)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle as a path that ends where it starts (one per strongly connected group)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in path:
                found.append([*path[path.index(target):], target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return found


def test_agentwire_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert "agentwire.console.runtime" in graph and "agentwire.console.turn" in graph["agentwire.console.runtime"]
    assert cycles(graph) == []


def test_the_transcript_fold_is_a_leaf() -> None:
    graph = import_graph(PACKAGE)
    assert graph["agentwire.console.transcript"] == {"agentwire.types"}
    assert graph["agentwire.types"] == set()
    # The console package itself loads nothing: `Console` comes from runtime.py on first use.
    assert graph["agentwire.console"] == {"agentwire.console.runtime"}  # under TYPE_CHECKING and in __getattr__


def test_the_walk_finds_a_cycle_through_a_type_checking_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import C\n")
    (package / "c.py").write_text("def f():\n    import pkg.a\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


# What the client needs is httpx, orjson and websockets; these belong to the server only.
SERVER_ONLY = ("fastapi", "starlette", "nh3", "prometheus_client", "pydantic", "uvicorn", "redis")


def test_the_client_loads_without_the_server() -> None:
    script = ("import sys, agentwire.client\n"
              "from agentwire.console.transcript import Transcript\n"
              f"print(sorted(m for m in {SERVER_ONLY!r} if m in sys.modules))\n"
              "print(sorted(m for m in sys.modules if m.startswith('agentwire')))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    server_modules, ours = run.stdout.splitlines()
    assert server_modules == "[]"
    # The control: the same probe sees the server's modules once the server is imported.
    loaded = subprocess.run([sys.executable, "-c", script.replace("agentwire.client\n", "agentwire.app\n")],
                            capture_output=True, text=True, check=True, timeout=60)
    assert "fastapi" in loaded.stdout.splitlines()[0]
    assert "agentwire.console.runtime" not in ours and "agentwire.hub" not in ours


def test_the_console_package_gives_console_on_first_use() -> None:
    import agentwire.console
    from agentwire.console.runtime import Console

    assert agentwire.console.Console is Console
    with pytest.raises(AttributeError):
        _ = agentwire.console.Nothing
