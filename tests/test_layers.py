"""The import contract (pyproject.toml, [tool.importlinter]) is part of the suite: an import that breaks
the layers fails `make test`, not only `make lint`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_keep_the_layers() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "import-linter is a dev dependency: pip install -e '.[dev]'"
    run = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The cycles of a directed graph: its strongly connected components of more than one node
    (Kosaraju: finish order on the graph, then components on the reversed graph)."""
    order: list[str] = []
    seen: set[str] = set()
    for start in sorted(graph):
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(sorted(graph[start])))]
        while stack:
            node, successors = stack[-1]
            following = next((s for s in successors if s not in seen), None)
            if following is None:
                order.append(node)
                stack.pop()
            else:
                seen.add(following)
                stack.append((following, iter(sorted(graph[following]))))
    reverse: dict[str, set[str]] = {node: set() for node in graph}
    for node, successors in graph.items():
        for successor in successors:
            reverse[successor].add(node)
    components, assigned = [], set()
    for node in reversed(order):
        if node in assigned:
            continue
        component, frontier = {node}, [node]
        while frontier:
            for predecessor in reverse[frontier.pop()] - assigned - component:
                component.add(predecessor)
                frontier.append(predecessor)
        assigned |= component
        if len(component) > 1:
            components.append(component)
    return components


def layer_of(module: str) -> str:
    """monitor's sub-package (monitor.base, monitor.service, ...), else the top-level package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "monitor" and len(parts) > 1 else parts[0]


def test_there_are_no_module_circles_and_no_package_cycles() -> None:
    import grimp

    imports = grimp.build_graph("monitor", "retrain", "alerts", "decoder", exclude_type_checking_imports=True)
    modules = {module: set(imports.find_modules_directly_imported_by(module)) for module in imports.modules}
    assert strongly_connected(modules) == []
    packages: dict[str, set[str]] = {}
    for module, imported in modules.items():
        packages.setdefault(layer_of(module), set()).update(
            layer_of(other) for other in imported if layer_of(other) != layer_of(module)
        )
    for imported in list(packages.values()):
        for package in imported:
            packages.setdefault(package, set())
    assert strongly_connected(packages) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(map(sorted, strongly_connected(graph))) == [["a", "b", "c"], ["d", "e"]]
