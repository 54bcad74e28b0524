"""Dependencies point one way: the node's core never imports the worker, and no project module
imports itself back through others. Read from the source with ``ast`` (every import statement,
including those inside functions), so nothing is imported to check it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dicom_node", "worker", "segmenter")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


MODULES = _modules()


def _target(name: str) -> str:
    """The project module an import of ``name`` executes last: ``a.b.c`` when it is a module,
    else the nearest package or module above it."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str) -> set[str]:
    """Project modules that ``module`` imports anywhere in its source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the module pkg.sub; ``from mod import name`` imports mod.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found |= {t for t in map(_target, names) if t and t != module}
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def _core(module: str) -> bool:
    return module.split(".")[0] == "dicom_node" and not module.startswith("dicom_node.commands")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _core(m)))
def test_node_core_never_imports_worker(module):
    assert not {t for t in GRAPH[module] if t.split(".")[0] == "worker"}, (
        f"{module} imports the worker package; hand the node what it needs (see dicom_node.submit.JobRunner)")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_graph_sees_lazy_imports():
    # worker.celery_app registers the tasks from inside make_celery.
    assert "worker.tasks" in GRAPH["worker.celery_app"]
    assert "worker.celery_app" not in GRAPH["worker.tasks"]
