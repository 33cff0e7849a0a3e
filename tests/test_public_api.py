"""musicbench.api is the declared public API: its ``__all__`` is exactly what it exports, the
example package and the plugin guide's code import nothing else, and no code reaches into
another object's private fields."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from musicbench import api

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
GUIDE = ROOT / "docs" / "plugins.md"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_api_all_is_exactly_what_the_module_exports():
    assert len(api.__all__) == len(set(api.__all__)), "a name is listed twice"
    missing = [n for n in api.__all__ if not hasattr(api, n)]
    assert not missing, f"listed in musicbench.api.__all__ but not defined: {missing}"
    exported = {n for n in vars(api) if not n.startswith("_") and n != "annotations"}
    assert exported == set(api.__all__), (
        f"public names of musicbench.api not in __all__: {sorted(exported - set(api.__all__))}")


def _python_sources() -> Iterator[tuple[str, str]]:
    """(where, source) for every .py file of docs/examples and every python block of the
    plugin guide."""
    for path in sorted(EXAMPLES.rglob("*.py")):
        yield str(path.relative_to(ROOT)), path.read_text()
    guide = GUIDE.read_text()
    for m in re.finditer(r"```python\n(.*?)```", guide, re.S):
        yield f"docs/plugins.md line {guide[:m.start()].count(chr(10)) + 1}", m.group(1)


def import_problems(source: str) -> list[str]:
    """What ``source`` imports that a plugin may not: anything from ``musicbench_plugins``,
    any private name, and from ``musicbench`` anything but ``hookimpl`` and the names of
    ``musicbench.api.__all__``."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            pairs = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: the plugin's own modules
                pairs = [("", alias.name) for alias in node.names]
            else:
                pairs = [(node.module or "", alias.name) for alias in node.names]
        else:
            continue
        for module, name in pairs:
            what = f"{module}:{name}" if name else module
            top = module.split(".")[0]
            if any(_private(part) for part in module.split(".") if part) or (
                    name and _private(name)):
                problems.append(f"private name: {what}")
            elif top == "musicbench_plugins":
                problems.append(f"import from the built-ins: {what}")
            elif top == "musicbench":
                if module == "musicbench" and name == "hookimpl":
                    continue
                if module == "musicbench.api" and name in api.__all__:
                    continue
                problems.append(f"not in musicbench.api.__all__: {what}")
    return problems


def test_the_import_check_catches_what_it_should():
    assert import_problems(
        "from musicbench_plugins.attacks.pgd import PGD\n"
        "from musicbench.victim import Victim\n"
        "from musicbench.api import _secret, TrainedModel\n"
        "import musicbench.interfaces\n"
        "from musicbench import hookimpl\n"
        "from .noise import NoiseAttack\n"
    ) == [
        "import from the built-ins: musicbench_plugins.attacks.pgd:PGD",
        "not in musicbench.api.__all__: musicbench.victim:Victim",
        "private name: musicbench.api:_secret",
        "not in musicbench.api.__all__: musicbench.interfaces",
    ]


@pytest.mark.parametrize("where,source", list(_python_sources()), ids=lambda x: str(x)[:40])
def test_example_package_and_guide_import_only_public_names(where, source):
    assert not import_problems(source), f"{where}: {import_problems(source)}"


_MUTATORS = {"pop", "popitem", "append", "extend", "insert", "remove", "clear", "update",
             "setdefault", "add", "discard"}


def private_mutations(source: str) -> list[str]:
    """Assignments, deletions and mutating calls on ``x._field`` where ``x`` is not
    ``self``/``cls``: code changing another object's private state."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in _MUTATORS:
            targets = [node.func.value]
        for target in targets:
            while isinstance(target, ast.Subscript):
                target = target.value
            if (isinstance(target, ast.Attribute) and _private(target.attr)
                    and not (isinstance(target.value, ast.Name)
                             and target.value.id in ("self", "cls"))):
                found.append((node.lineno, ast.unparse(target)))
    return [f"line {line}: {text}" for line, text in sorted(found)]


def test_the_private_mutation_check_catches_what_it_should():
    assert private_mutations(
        "reg._entries.pop('x')\nself._own['k'] = 1\nother._aliases['a'] = 'b'\n"
        "del reg._entries['y']\nself._a._b.clear()\n"
    ) == ["line 1: reg._entries", "line 3: other._aliases", "line 4: reg._entries",
          "line 5: self._a._b"]


def test_no_code_mutates_another_objects_private_fields():
    found = []
    for folder in ("bench", "plugins"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += [f"{path.relative_to(ROOT)} {hit}"
                      for hit in private_mutations(path.read_text())]
    assert not found, "use a public method of the object instead:\n" + "\n".join(found)
