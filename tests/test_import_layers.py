"""The core's imports go one way (docs/architecture.md, layers): no import circle between the
modules of ``musicbench``, and the contracts plugins subclass (``musicbench.interfaces``,
``musicbench.errors``, ``musicbench.params``) import nothing from the runtime. The graph is read
from the source with ``ast``: every import statement anywhere in a module counts, those inside
functions and under ``TYPE_CHECKING`` included, since each is a dependency all the same."""

from __future__ import annotations

import ast
from pathlib import Path

import musicbench

PACKAGE = "musicbench"
ROOT = Path(musicbench.__file__).parent

CONTRACTS = ("musicbench.interfaces", "musicbench.errors", "musicbench.params")
"""The contracts and what sits beside them: a module is one when its name is one of these or
lies under one."""

RUNTIME = ("musicbench.victim", "musicbench.defense_checks", "musicbench.training",
           "musicbench.runner", "musicbench.planner", "musicbench.session", "musicbench.store",
           "musicbench.executors", "musicbench.ray_executor", "musicbench.shards",
           "musicbench.leaderboard", "musicbench.compare", "musicbench.cli",
           "musicbench.plugins", "musicbench.workspace", "musicbench.api")


def _modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the package under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join((PACKAGE, *parts)).removesuffix(".__init__")
        out[name] = path
    return out


def _imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """The package's modules an import statement anywhere in ``tree`` names (``from a import
    b`` names ``a`` and, when it is a module, ``a.b``)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out & modules


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (itself left out)."""
    modules = _modules(root)
    names = set(modules)
    return {name: _imported(ast.parse(path.read_text(encoding="utf-8")), names) - {name}
            for name, path in modules.items()}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_graph_sees_every_kind_of_import() -> None:
    """Imports inside functions and under TYPE_CHECKING are edges (the reader cannot miss
    them), and a made-up circle is found."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
              "    from musicbench.b import X\ndef f():\n    import musicbench.c\n")
    assert _imported(ast.parse(source), {"musicbench.b", "musicbench.c"}) == {
        "musicbench.b", "musicbench.c"}
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_has_no_import_circle() -> None:
    circles = import_circles(import_graph())
    assert not circles, "import circles in the core:\n" + "\n".join(
        " <-> ".join(circle) for circle in circles)


def test_the_contracts_import_nothing_from_the_runtime() -> None:
    graph = import_graph()
    assert any(_under(m, ("musicbench.interfaces",)) for m in graph)  # the reader found them
    upward = sorted(f"{module} imports {target}" for module, targets in graph.items()
                    if _under(module, CONTRACTS)
                    for target in targets if _under(target, RUNTIME))
    assert not upward, "the contracts import the runtime:\n" + "\n".join(upward)
