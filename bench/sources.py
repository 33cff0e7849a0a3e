"""Keep ``version`` honest: a lock of each built-in plugin's source, checked by a test.

Cell keys hold each plugin's ``version`` (and the harness's :data:`musicbench.RESULTS_VERSION`),
not its source, so a refactor does not invalidate every stored result. The price is that a
behaviour change must come with a version bump. ``plugins/versions.json`` records, per built-in
component, its version and a digest of its code: the module that defines it and every
``musicbench_plugins`` module it imports, transitively, compared as syntax trees without
docstrings (comments, docstrings and formatting are not behaviour). The harness's result-bearing
core modules form one more entry, ``core/harness``.

``tests/test_plugin_versions.py`` fails when a digest changed while the version did not. Then
either bump ``version`` (results change: new cells) or, when the change provably leaves every
result identical, record that explicitly::

    python -m musicbench.sources update --no-behaviour-change attack/pgd

which is the "no behaviour change" marker: it shows in the diff of ``plugins/versions.json``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import musicbench

PLUGIN_PACKAGE = "musicbench_plugins"
CORE_MODULES = (
    "musicbench.victim", "musicbench.runner", "musicbench.metrics", "musicbench.fad",
    "musicbench.windows", "musicbench.audio", "musicbench.interfaces.attack",
    "musicbench.queries", "musicbench.budgets", "musicbench.shards",
)
"""Core modules whose code changes results (scoring, re-scoring, metrics, windows, audio
loading, the query scoring and budgets attacks share; trained weights and dataset content are
keyed by their own hashes); a change needs :data:`musicbench.RESULTS_VERSION` bumped or marked. Their imports are
not followed: the store, the leaderboard and the CLI import-chain into everything but change
no result."""
CORE_ENTRY = "core/harness"


def lock_path() -> Path:
    """``plugins/versions.json`` (next to the built-in plugins)."""
    spec = importlib.util.find_spec(PLUGIN_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"cannot locate {PLUGIN_PACKAGE}")
    return Path(spec.origin).parent / "versions.json"


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(name: str, tree: ast.Module, package: str) -> set[str]:
    """Modules of ``package`` that module ``name`` imports (absolute or relative)."""
    is_pkg = (_module_file(name) or Path()).name == "__init__.py"
    base = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                root = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{root}.{node.module}" if node.module else root
            else:
                mod = node.module or ""
            if mod.split(".")[0] != package:
                continue
            found.add(mod)
            for alias in node.names:  # ``from pkg import submodule``
                if _module_file(f"{mod}.{alias.name}") is not None:
                    found.add(f"{mod}.{alias.name}")
    return found


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return tree


def module_closure(roots: list[str], package: str | None = PLUGIN_PACKAGE
                   ) -> dict[str, ast.Module]:
    """Parsed modules of ``roots`` and every module of ``package`` they import, transitively
    (``package=None``: the roots alone)."""
    seen: dict[str, ast.Module] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        seen[name] = tree
        if package is not None:
            todo += sorted(_imports(name, tree, package) - seen.keys())
    return seen


def digest(roots: list[str], package: str | None = PLUGIN_PACKAGE) -> str:
    """Digest of the code (not docstrings, comments or layout) of ``roots`` and what they
    import from ``package`` (None: the roots alone)."""
    h = hashlib.sha256()
    for name, tree in sorted(module_closure(roots, package).items()):
        h.update(name.encode() + b"\0")
        h.update(ast.dump(_strip_docstrings(tree), include_attributes=False).encode() + b"\0")
    return h.hexdigest()[:16]


def current() -> dict[str, dict[str, str]]:
    """``{"kind/name": {"version", "source"}}`` for every built-in component, plus the core."""
    from musicbench.plugins import PluginSystem

    system = PluginSystem()
    out: dict[str, dict[str, str]] = {
        CORE_ENTRY: {"version": musicbench.RESULTS_VERSION,
                     "source": digest(list(CORE_MODULES), None)},
    }
    for kind, registry in system.registries.items():
        for entry in registry:
            if not entry.provider.startswith(f"{musicbench.__name__} "):
                continue  # third-party plugins keep their own discipline
            cls = entry.load()
            out[f"{kind}/{entry.name}"] = {"version": str(getattr(cls, "version", "1")),
                                          "source": digest([cls.__module__])}
    return dict(sorted(out.items()))


def read_lock(path: Path | None = None) -> dict[str, dict[str, str]]:
    path = path or lock_path()
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def problems(lock: dict[str, dict[str, str]], now: dict[str, dict[str, str]],
             marked: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Entries whose code changed while their version did not (and were not ``marked`` as
    changing no behaviour)."""
    out = []
    for name, entry in now.items():
        old = lock.get(name)
        if old and old["source"] != entry["source"] and old["version"] == entry["version"]:
            if name not in marked:
                out.append(name)
    return out


def stale(lock: dict[str, dict[str, str]], now: dict[str, dict[str, str]]) -> list[str]:
    """Entries that are new, gone or re-versioned: the lock needs ``update``."""
    names = set(lock) | set(now)
    return sorted(n for n in names if lock.get(n, {}).get("version") != now.get(n, {}).get(
        "version") or (n in lock) != (n in now))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicbench.sources",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "update"])
    parser.add_argument("--no-behaviour-change", nargs="*", default=[], metavar="KIND/NAME",
                        help="entries whose code changed without changing any result")
    args = parser.parse_args(argv)
    lock, now = read_lock(), current()
    bad = problems(lock, now, set(args.no_behaviour_change))
    if bad:
        print("code changed but version did not: " + ", ".join(bad) + ". Bump `version` "
              "(results change) or pass --no-behaviour-change " + " ".join(bad), file=sys.stderr)
        return 1
    if args.command == "check":
        old = stale(lock, now)
        if old:
            print("plugins/versions.json is out of date for: " + ", ".join(old) +
                  "; run `python -m musicbench.sources update`", file=sys.stderr)
            return 1
        print(f"{len(now)} entries match {lock_path()}")
        return 0
    lock_path().write_text(json.dumps(now, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {lock_path()} ({len(now)} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
