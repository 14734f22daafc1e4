"""The package's shape: no import cycle, and a worker's guard loads only what it runs."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "runtime_guard"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        names[name] = path
    return names


MODULES = _module_names()


def _owner(dotted: str) -> str | None:
    """The package module a dotted import name lands in (``a.b.c`` may be a name in a.b)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _imports(tree: ast.AST) -> Iterator[str]:
    """Every import of the package's own modules, at any depth, but those that only type
    checkers see (``if TYPE_CHECKING:``)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield full if full in MODULES else node.module
        yield from _imports(node)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = {_owner(dotted) for dotted in _imports(ast.parse(path.read_text()))}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_the_packages_modules() -> None:
    """No module imports another that imports it back, at module level or in a function."""
    assert _cycles(_graph()) == []


def test_the_guard_class_imports_none_of_its_components() -> None:
    """guard.py depends on the core only: components are attached to it from outside."""
    components = {
        "runtime_guard._install",
        "runtime_guard.leaks.detector",
        "runtime_guard.shedding",
        "runtime_guard.tracking.component",
        "runtime_guard.reports.timeline",
    }
    assert not _graph()["runtime_guard.guard"] & components


def test_a_workers_guard_loads_no_diagnosis_rendering_or_integration() -> None:
    """``import runtime_guard.auto`` (every worker) loads no diagnosis, no report rendering,
    no integration and no asyncio: those are imported when first needed."""
    code = (
        "import sys, runtime_guard.auto\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('runtime_guard') "
        "or m in ('asyncio', 'tracemalloc'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"RUNTIME_GUARD_INTERVAL": "60"},
    )
    loaded = set(result.stdout.split())
    assert "runtime_guard.auto" in loaded
    unwanted = {
        name
        for name in loaded
        if name.startswith(
            (
                "runtime_guard.diagnosis.",
                "runtime_guard.integrations",
                "runtime_guard.reports.html",
                "runtime_guard.reports.text",
                "runtime_guard.reports.view",
                "runtime_guard.reports.statuspage",
                "runtime_guard.cli",
            )
        )
        or name in ("asyncio", "tracemalloc")
    }
    assert unwanted == set()


def test_package_init_files_only_re_export() -> None:
    """Every ``__init__.py`` holds imports, ``__all__`` and the lazy-import table only."""
    for name, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), (
                f"{name} defines {node.name}"
            )


def test_no_public_all_lists_a_component() -> None:
    """Components are internal: ``install()`` attaches them, so no public module's
    ``__all__`` offers one (each stays importable from its own module)."""
    public = sorted(
        name for name in MODULES if not any(part.startswith("_") for part in name.split("."))
    )
    # In a child: importing every integration patches its framework for the whole process.
    code = (
        "import importlib, json, sys\n"
        "from runtime_guard._component import Component\n"
        "found = {}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    module = importlib.import_module(name)\n"
        "    listed = [n for n in getattr(module, '__all__', ())\n"
        "              if isinstance(getattr(module, n), type)\n"
        "              and issubclass(getattr(module, n), Component)]\n"
        "    if listed:\n"
        "        found[name] = listed\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, json.dumps(public)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(result.stdout) == {}
